"""Real OCR with the embedded RapidOCR engine on generated pages with known text.

CER thresholds: on this machine (rapidocr 3.10, onnxruntime 1.32, 2 CPU cores) every fixture
below measured CER 0.000 (font sampler: each of 6 font/size paragraphs 0.000; two-column page
0.000; scan with 2 degree skew and noise sigma 12: 0.000; a harsher -4 degree / sigma 30 scan:
0.0015). The limits leave room for a few characters per page of drift across CPUs and
onnxruntime builds (different SIMD kernels change float rounding), but a lost line (~60
characters of a ~1,000 character page, CER ~0.06), a misread font, or one upside-down line
(what the direction classifier did: CER 0.15) fails them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from docgen import (
    FONT_SAMPLES,
    TWO_COLUMN_TITLE,
    cer,
    levenshtein,
    make_font_sampler_pdf,
    make_pdf,
    make_scanned_image,
    make_two_column_pdf,
    normalize_ws,
    render_page,
    render_pdf_page,
    sample_text,
    scanned_truth,
)
from PIL import Image

from ocrpress.document import PageImage
from ocrpress.engines import Engine, EngineError, EngineOptions, PagePlan
from ocrpress.engines.rapid import RapidEngine

PAGE_CER = 0.02  # whole clean page: ~20 wrong characters of ~1,000
PARAGRAPH_CER = 0.03  # one paragraph of ~250-400 characters: ~8-12 wrong characters
SCAN_CER = 0.03  # skewed, blurred, noisy page


@pytest.fixture(scope="module")
def engine() -> Iterator[RapidEngine]:
    eng = RapidEngine(EngineOptions(engine="rapid"))
    yield eng
    eng.close()


def page(image: Image.Image, index: int = 0, dpi: float | None = 144) -> PageImage:
    return PageImage(source="test.pdf", index=index, image=image, dpi=dpi)


# ------------------------------------------------------------------ the metric itself


def test_cer_metric() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert cer("abc def", "abc  def\n") == 0.0  # whitespace is normalised
    assert cer("abcd", "abXd") == pytest.approx(0.25)
    assert cer("abcd", "") == 1.0
    assert cer("", "") == 0.0


def test_sample_text_is_deterministic_and_varied() -> None:
    assert sample_text(5, 3) == sample_text(5, 3)
    assert sample_text(5, 3) != sample_text(5, 4)
    assert len(set(sample_text(20, 1))) == 20


# ---------------------------------------------------------------------------- engine


def test_engine_protocol_and_plan(engine: RapidEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.name == "rapid"
    assert engine.model is not None and "PP-OCRv6" in engine.model
    assert engine.max_batch_size >= 1
    img = Image.new("RGB", (100, 50), "white")
    assert engine.plan(page(img)) == PagePlan(batch_key="rapid")


def test_several_fonts_and_sizes(engine: RapidEngine, tmp_path: Path) -> None:
    pdf = tmp_path / "fonts.pdf"
    specs = make_font_sampler_pdf(pdf)
    assert [(f, s) for f, s, _ in specs] == list(FONT_SAMPLES)  # all fit on the page
    (result,) = engine.run([page(render_pdf_page(pdf))])
    assert result.status == "ok"
    assert result.engine == "rapid" and result.dpi == 144
    assert (result.width, result.height) == (1190, 1684)
    assert cer("\n".join(t for _, _, t in specs), result.text) < PAGE_CER
    # Each font/size on its own: the paragraph must match one block closely.
    for font, size, truth in specs:
        best = min(cer(truth, b.text) for b in result.blocks)
        assert best < PARAGRAPH_CER, (font, size, best)
    for b in result.blocks:
        x0, y0, x1, y1 = b.bbox
        assert 0 <= x0 < x1 <= result.width and 0 <= y0 < y1 <= result.height
        assert b.score is not None and 0.5 < b.score <= 1.0


def test_two_column_reading_order(engine: RapidEngine, tmp_path: Path) -> None:
    pdf = tmp_path / "two.pdf"
    truth = make_two_column_pdf(pdf)
    (result,) = engine.run([page(render_pdf_page(pdf))])
    assert result.blocks[0].type == "title"
    assert cer(TWO_COLUMN_TITLE, result.blocks[0].text) < PARAGRAPH_CER
    assert cer(truth, result.text) < PAGE_CER
    # Explicitly: the whole left column precedes the right one.
    lines = truth.split("\n")
    text = normalize_ws(result.text)
    n_left = len(lines) // 2  # both columns hold two 4-sentence paragraphs of similar length
    last_left, first_right = lines[n_left - 1], lines[n_left]
    assert cer(truth, "\n".join([lines[0], *lines[n_left:], *lines[1:n_left]])) > 0.3
    assert text.index(last_left[-25:]) < text.index(first_right[:25])


def test_scanned_looking_page(engine: RapidEngine) -> None:
    lines = sample_text(12, 4)
    img = make_scanned_image(lines, angle=2.0, noise=12, seed=0)
    (result,) = engine.run([page(img, dpi=None)])
    assert result.status == "ok"
    assert cer(scanned_truth(lines), result.text) < SCAN_CER
    # A 2 degree skew must not turn long lines into headings.
    assert all(b.type == "text" for b in result.blocks)


def test_blank_pages_are_empty_and_failures_stay_on_their_page(
    engine: RapidEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages keep this test cheap; only the strip costs about one A4 page.
    blank = Image.new("RGB", (600, 400), "white")
    strip = Image.new("RGB", (2000, 3), "white")  # took 212 s before aspect padding
    text = render_page(["Hello from page three of the batch."], width_pt=300, height_pt=150)
    real = engine._engine()

    def flaky(
        arr: np.ndarray, **kwargs: object
    ) -> object:  # the second page's OCR blows up, as a broken model input would
        if arr.max() == 0:
            raise RuntimeError("simulated onnxruntime failure")
        return real(arr, **kwargs)

    monkeypatch.setattr(engine, "_ocr", flaky)
    black = Image.new("RGB", (600, 400), "black")
    results = engine.run([page(blank, 0), page(black, 1), page(text, 2), page(strip, 3)])
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.status for r in results] == ["empty", "error", "ok", "empty"]
    assert "simulated onnxruntime failure" in (results[1].error or "")
    assert results[1].engine == "rapid" and results[1].blocks == []
    assert results[0].blocks == [] and results[0].text == ""
    assert cer("Hello from page three of the batch.", results[2].text) < PARAGRAPH_CER


def test_threads_option_reaches_onnxruntime() -> None:
    eng = RapidEngine(EngineOptions(engine="rapid", extra={"threads": 1}))
    ocr = eng._engine()
    assert ocr.cfg.EngineConfig.onnxruntime.intra_op_num_threads == 1
    assert ocr.cfg.Global.use_cls is False
    with pytest.raises(EngineError):
        RapidEngine(EngineOptions(engine="rapid", extra={"threads": "many"}))


def test_rapidocr_prints_nothing() -> None:
    # RapidOCR has its own colored stderr handler; a blank page used to log a WARNING.
    code = textwrap.dedent(
        """
        from PIL import Image
        from ocrpress.document import PageImage
        from ocrpress.engines import EngineOptions
        from ocrpress.engines.rapid import RapidEngine
        eng = RapidEngine(EngineOptions(engine="rapid"))
        img = Image.new("RGB", (400, 300), "white")
        print(eng.run([PageImage("x", 0, img, None)])[0].status)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "empty"
    assert proc.stderr == ""


@pytest.mark.slow
def test_make_pdf_fonts_and_sizes(engine: RapidEngine, tmp_path: Path) -> None:
    """Whole pages of running text: each font once, each size once (the font sampler above
    has every font at several sizes on one page)."""
    paragraphs = [" ".join(sample_text(6, k)) for k in range(3)]
    pages, truths = [], []
    for i, (font, size) in enumerate((("helv", 9), ("tiro", 12), ("cour", 16))):
        pdf = tmp_path / f"{font}{size}.pdf"
        truths.append(make_pdf(pdf, [paragraphs], fontname=font, fontsize=size)[0])
        pages.append(page(render_pdf_page(pdf), index=i))
    for truth, result in zip(truths, engine.run(pages), strict=True):
        assert cer(truth, result.text) < PAGE_CER, result.index


def test_a_lone_short_line_is_not_lost(engine: RapidEngine, tmp_path: Path) -> None:
    import pymupdf

    doc = pymupdf.open()
    doc.new_page().insert_text((72, 100), "hello world", fontsize=12)
    doc.save(tmp_path / "sparse.pdf")
    image = render_pdf_page(tmp_path / "sparse.pdf", dpi=144)
    (res,) = engine.run([PageImage(source="sparse.pdf", index=0, image=image, dpi=144)])
    assert res.status == "ok" and [b.text for b in res.blocks] == ["hello world"]
    x0, y0, x1, y1 = res.blocks[0].bbox
    # Baseline at 100 pt = 200 px; the line starts at 72 pt = 144 px: boxes are page pixels.
    assert 120 < x0 < 160 and 160 < y0 < 200 < y1 < 215 and x1 > 240
