"""Text-layer routing (``--ocr auto|always|never``): which PDF pages skip the engine, and what
the text layer gives for them. Documents are generated (tests/layergen.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from docgen import make_pdf, normalize_ws, sample_text
from fake_engines import CountingEcho, EchoEngine
from layergen import (
    figure_pdf,
    mixed_pdf,
    no_tounicode_pdf,
    ocred_scan_pdf,
    photo_image,
    rotated_pdf,
    table_pdf,
    text_image,
    white_text_pdf,
)

from ocrpress.document import PageResult
from ocrpress.engines import EngineOptions
from ocrpress.inputs import discover
from ocrpress.pipeline import RUN_STATS_FILE, Converter, ConvertOptions
from ocrpress.routing import text_like
from ocrpress.textlayer import count_bad
from ocrpress.writers.text import page_text

TESTS = Path(__file__).parent


def _convert(
    paths: list[Path], out: Path | None = None, engine: EchoEngine | None = None, **kw: object
) -> tuple[list[PageResult], EchoEngine, Converter]:
    """Convert in-process with an EchoEngine; returns (pages of all documents, engine, run)."""
    eng = engine or EchoEngine()
    docs, _ = discover([str(p) for p in paths])
    fmts = kw.pop("formats", ["markdown", "json"])
    opts = ConvertOptions(output=str(out) if out else None, formats=fmts, workers=0, **kw)  # type: ignore[arg-type]
    conv = Converter(opts, engine=eng)
    results = conv.run(docs)
    return [p for r in results for p in r.pages], eng, conv


def _ocred(pages: list[PageResult]) -> list[int]:
    return [p.index for p in pages if p.text_source == "ocr"]


# ------------------------------------------------------------------ born-digital pages


def test_born_digital_two_columns_exact_text_in_column_order_no_engine(tmp_path: Path) -> None:
    pdf = tmp_path / "paper.pdf"
    truths = make_pdf(pdf, [sample_text(60, seed=s) for s in range(3)], two_column=True)
    pages, eng, conv = _convert([pdf], tmp_path / "out")
    assert eng.batches == []  # no page reached the engine
    assert [normalize_ws(p.text) for p in pages] == [normalize_ws(t) for t in truths]
    assert {p.text_source for p in pages} == {"text-layer"}
    assert all((p.width, p.height, p.dpi) == (1190, 1684, 144) for p in pages)
    # Boxes are in rendered-page pixels: two columns, each in its half of the page.
    lefts = sorted({round(b.bbox[0]) for b in pages[0].blocks})
    assert lefts[0] < 1190 / 2 < lefts[-1] and all(b.bbox[2] <= 1190 for b in pages[0].blocks)
    doc = json.loads((tmp_path / "out" / "paper.json").read_text())
    assert [p["text_source"] for p in doc["pages"]] == ["text-layer"] * 3
    stats = json.loads((tmp_path / "out" / RUN_STATS_FILE).read_text())
    assert stats["pages_by_text_source"] == {"text-layer": 3}
    assert conv.stats.summary().startswith("1 document, 3 pages (3 from the text layer)")


def test_cli_counting_engine_sees_only_the_scanned_page(tmp_path: Path) -> None:
    """Through the CLI with a render worker: digital pages never reach the engine process."""
    src = tmp_path / "in"
    src.mkdir()
    make_pdf(src / "digital.pdf", [sample_text(30, seed=s) for s in range(4)], two_column=True)
    mixed_pdf(src / "mixed.pdf")
    count = tmp_path / "count.txt"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OCRPRESS_COUNT_FILE": str(count)}
    cmd = [sys.executable, "-m", "ocrpress", "convert", str(src), "-o", str(tmp_path / "out")]
    cmd += ["-f", "json", "--engine", "fake_engines:CountingEcho", "--workers", "1"]
    r = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert count.read_text().splitlines() == ["mixed.pdf 1"]
    mixed = json.loads((tmp_path / "out" / "mixed.json").read_text())
    assert [p["text_source"] for p in mixed["pages"]] == ["text-layer", "ocr", "text-layer"]
    assert b"7 pages (6 from the text layer, 1 OCR)" in r.stderr


def test_rotated_page_reads_upright_in_rendered_pixels(tmp_path: Path) -> None:
    pdf = tmp_path / "landscape.pdf"
    lines = rotated_pdf(pdf)
    (page,), eng, _ = _convert([pdf])
    assert eng.batches == [] and page.text_source == "text-layer"
    assert (page.width, page.height) == (1684, 1190)  # /Rotate 90: rendered landscape
    assert normalize_ws(page.text) == normalize_ws(" ".join(lines))
    assert all(0 <= b.bbox[0] < b.bbox[2] <= 1684 and 0 <= b.bbox[1] < 200 for b in page.blocks)


def test_rotated_page_images_are_checked_where_they_show(tmp_path: Path) -> None:
    text, photo = tmp_path / "text.pdf", tmp_path / "photo.pdf"
    rotated_pdf(text, text_image(sample_text(5, seed=4)))
    rotated_pdf(photo, photo_image())
    pages, eng, _ = _convert([text, photo])
    assert _ocred(pages) == [0] and eng.batches == [1]  # the image of text, not the photo
    assert pages[1].text_source == "text-layer"
    (figure,) = [b for b in pages[1].blocks if b.type == "figure"]
    assert figure.bbox[2] <= 1684 and figure.bbox[3] <= 1190  # in the landscape render


def test_table_becomes_an_html_table_block_in_reading_order(tmp_path: Path) -> None:
    pdf = tmp_path / "table.pdf"
    before, rows, after = table_pdf(pdf)
    (page,), eng, _ = _convert([pdf])
    assert eng.batches == []
    assert [b.type for b in page.blocks] == ["text", "table", "text"]
    table = page.blocks[1].text
    assert table.startswith("<table><tr><td>Item</td><td>Quantity</td><td>Price</td></tr>")
    assert all(f"<td>{cell}</td>" in table for row in rows for cell in row)
    assert normalize_ws(page.blocks[0].text) == normalize_ws(" ".join(before))
    assert normalize_ws(page.blocks[2].text) == normalize_ws(" ".join(after))
    assert "river map\t2\t3.50" in page_text(page)  # the text writer's rows


def test_white_on_white_text_is_dropped_white_on_dark_kept(tmp_path: Path) -> None:
    pdf = tmp_path / "white.pdf"
    body, hidden, banner = white_text_pdf(pdf)
    (page,), _, _ = _convert([pdf])
    assert page.text_source == "text-layer"
    assert hidden not in page.text and banner in page.text
    assert normalize_ws(" ".join(body)) in normalize_ws(page.text)


# ------------------------------------------------------------------ pages that need OCR


def test_image_of_text_sends_the_page_to_the_engine(tmp_path: Path) -> None:
    pdf = tmp_path / "screenshot.pdf"
    figure_pdf(pdf, text_image(sample_text(5, seed=3)))
    (page,), eng, _ = _convert([pdf])
    assert eng.batches == [1] and page.text_source == "ocr"
    assert page.notes[0] == "read by OCR: an image on the page holds text that the text layer lacks"


def test_photo_without_text_keeps_the_text_layer_and_becomes_a_figure(tmp_path: Path) -> None:
    pdf = tmp_path / "photo.pdf"
    lines = figure_pdf(pdf, photo_image())
    (page,), eng, _ = _convert([pdf], tmp_path / "out")
    assert eng.batches == [] and page.text_source == "text-layer"
    assert [b.type for b in page.blocks] == ["text", "figure", "text"]
    assert normalize_ws(page.text) == normalize_ws(" ".join(lines))
    crop = tmp_path / "out" / "photo_images" / "page-0001-figure-1.png"
    assert crop.is_file() and page.blocks[1].image == "photo_images/page-0001-figure-1.png"
    assert "![](photo_images/page-0001-figure-1.png)" in (tmp_path / "out" / "photo.md").read_text()


def test_scanned_page_inside_a_digital_pdf(tmp_path: Path) -> None:
    pdf = tmp_path / "mixed.pdf"
    digital, _ = mixed_pdf(pdf)
    pages, eng, _ = _convert([pdf])
    assert eng.batches == [1] and _ocred(pages) == [1]
    assert [normalize_ws(pages[i].text) for i in (0, 2)] == [normalize_ws(t) for t in digital]
    assert pages[1].notes == []  # no text layer at all: nothing to explain


def test_font_without_tounicode_goes_to_ocr(tmp_path: Path) -> None:
    pdf = tmp_path / "garbage.pdf"
    no_tounicode_pdf(pdf)
    (page,), eng, _ = _convert([pdf])
    assert eng.batches == [1] and page.text_source == "ocr"
    assert "does not decode" in page.notes[0]


@pytest.mark.slow
def test_font_without_tounicode_is_read_right_by_rapid(tmp_path: Path) -> None:
    """End to end: the garbage layer is not used and the CPU engine reads the page."""
    from docgen import cer

    from ocrpress.engines.rapid import RapidEngine

    pdf = tmp_path / "garbage.pdf"
    truth = no_tounicode_pdf(pdf)
    docs, _ = discover([str(pdf)])
    opts = ConvertOptions(workers=0)
    (doc,) = Converter(opts, engine=RapidEngine(EngineOptions(engine="rapid"))).run(docs)
    assert doc.pages[0].text_source == "ocr" and cer(truth, doc.pages[0].text) < 0.05


def test_invisible_text_of_an_earlier_ocr_pass(tmp_path: Path) -> None:
    full, half = tmp_path / "ocred.pdf", tmp_path / "half.pdf"
    truth = ocred_scan_pdf(full)
    ocred_scan_pdf(half, cover=0.5)
    pages, eng, _ = _convert([full, half])
    # Covering the whole scan, it is used (and said to be); no figure for the page's scan.
    assert pages[0].text_source == "text-layer" and normalize_ws(pages[0].text) == normalize_ws(
        truth
    )
    assert pages[0].notes == ["text from the PDF's invisible text layer (an earlier OCR pass)"]
    assert all(b.type != "figure" for b in pages[0].blocks)
    # Missing half the scan's lines, it fails the coverage check: the page is OCR'd.
    assert pages[1].text_source == "ocr" and eng.batches == [1]


# ------------------------------------------------------------------ modes, resume, devices


def test_ocr_never_and_always(tmp_path: Path) -> None:
    pdf = tmp_path / "mixed.pdf"
    mixed_pdf(pdf)
    never, eng, _ = _convert([pdf], ocr="never")
    assert eng.batches == []
    assert [p.status for p in never] == ["ok", "empty", "ok"]
    assert never[1].notes == ["no text layer; --ocr never leaves the page unread"]
    always, eng, _ = _convert([pdf], ocr="always")
    assert sum(eng.batches) == 3 and _ocred(always) == [0, 1, 2]
    with pytest.raises(ValueError, match="ocr must be one of"):
        Converter(ConvertOptions(ocr="sometimes"), engine=EchoEngine())


def test_resume_fingerprint_includes_ocr(tmp_path: Path) -> None:
    pdf = tmp_path / "mixed.pdf"
    mixed_pdf(pdf)
    out = tmp_path / "out"
    _convert([pdf], out)
    _, eng, conv = _convert([pdf], out)
    assert conv.stats.skipped_documents == 1 and eng.batches == []
    _, eng, conv = _convert([pdf], out, ocr="always")
    assert conv.stats.skipped_documents == 0 and sum(eng.batches) == 3
    assert json.loads((out / "mixed.json").read_text())["pages"][0]["text_source"] == "ocr"


def test_devices_text_layer_pages_never_reach_a_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCRPRESS_FAKE_GPUS", "2")
    pdf = tmp_path / "mixed.pdf"
    mixed_pdf(pdf)
    docs, _ = discover([str(pdf)])
    opts = ConvertOptions(
        output=str(tmp_path / "out"),
        formats=["json"],
        workers=0,
        devices="all",
        engine=EngineOptions(engine="scale_engines:DeviceEchoEngine"),
    )
    conv = Converter(opts)
    (doc,) = conv.run(docs)
    assert doc.ok and _ocred(doc.pages) == [1] and "cvd=" in doc.pages[1].text
    assert conv.device_pool is not None and sum(conv.device_pool.pages_per_device.values()) == 1


# ------------------------------------------------------------------ the check's parts


def test_text_like_finds_rows_of_letters_not_blobs() -> None:
    text = np.asarray(text_image(sample_text(4, seed=9), size=(600, 200)).convert("L")) < 128
    assert text_like(text)
    photo = np.asarray(photo_image((600, 400)).convert("L"))
    assert not text_like(photo < np.median(photo) - 60)
    assert not text_like(np.zeros((100, 100), bool))


def test_count_bad_characters() -> None:
    assert count_bad("Plain text, with accents: é ü — and tabs\t.") == 0
    assert count_bad("\ufffd\ufffd ok \x01 \ue000 (cid:12)") == 5


def test_page_result_round_trips_text_source() -> None:
    res = PageResult("a.pdf", 0, 10, 10, 72, "pymupdf", text_source="text-layer")
    assert PageResult.from_dict(res.to_dict()).text_source == "text-layer"
    legacy = {k: v for k, v in res.to_dict().items() if k != "text_source"}
    assert PageResult.from_dict(legacy).text_source == "ocr"  # journals of older runs


def test_image_inputs_with_ocr_never_are_empty(tmp_path: Path) -> None:
    png = tmp_path / "scan.png"
    text_image(["A line of text"]).save(png)
    (page,), eng, _ = _convert([png], ocr="never")
    assert eng.batches == [] and page.status == "empty" and "no text layer" in page.notes[0]
    (page,), eng, _ = _convert([png])
    assert eng.batches == [1] and page.text_source == "ocr"


def test_pymupdf_prints_nothing_on_stdout(tmp_path: Path) -> None:
    """The table finder's advert for pymupdf_layout would corrupt ``-o -`` output."""
    pdf = tmp_path / "table.pdf"
    table_pdf(pdf)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    r = subprocess.run(
        [sys.executable, "-m", "ocrpress", "convert", str(pdf), "-f", "json", "-q"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.decode().splitlines()
    assert json.loads(line)["blocks"][1]["type"] == "table"


@pytest.mark.ray
@pytest.mark.slow
def test_ray_reads_text_layers_in_the_render_stage(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from ocrpress.cluster import RayConverter

    src = tmp_path / "in"
    src.mkdir()
    make_pdf(src / "digital.pdf", [sample_text(30, seed=s) for s in range(3)], two_column=True)
    mixed_pdf(src / "mixed.pdf")
    figure_pdf(src / "photo.pdf", photo_image())
    count = tmp_path / "count.txt"
    docs, _ = discover([str(src)])

    def opts(out: Path) -> ConvertOptions:
        engine = EngineOptions(engine="fake_engines:CountingEcho")
        return ConvertOptions(output=str(out), formats=["markdown", "json"], engine=engine)

    os.environ["OCRPRESS_COUNT_FILE"] = str(count)
    try:
        Converter(opts(tmp_path / "single"), engine=CountingEcho()).run(docs)
        count.unlink()
        env = {"PYTHONPATH": str(TESTS), "OCRPRESS_COUNT_FILE": str(count)}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env})  # fmt: skip
        try:
            results = RayConverter(opts(tmp_path / "ray")).run(docs)
        finally:
            ray.shutdown()
    finally:
        del os.environ["OCRPRESS_COUNT_FILE"]
    assert all(r.ok for r in results)
    # Only the scan met the engine (a set: Ray may run a task again after a worker fault).
    assert set(count.read_text().splitlines()) == {"mixed.pdf 1"}

    def files(out: Path) -> dict[str, bytes]:
        skip = (".ocrpress", RUN_STATS_FILE)
        return {
            str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.is_file() and not any(s in p.parts for s in skip)
        }

    assert files(tmp_path / "ray") == files(tmp_path / "single")
    assert "photo_images/page-0001-figure-1.png" in files(tmp_path / "ray")


def test_ocr_never_loads_no_model(
    tmp_path: Path, tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ocr never plans from the model's config and never builds the engine."""
    from ocrpress.engines import deepseek

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(deepseek.DeepSeekEngine, "__init__", refuse)
    pdf = tmp_path / "mixed.pdf"
    mixed_pdf(pdf)
    docs, _ = discover([str(pdf)])
    engine = EngineOptions(engine="deepseek", model=str(tiny_v2_model), device="cpu")
    conv = Converter(ConvertOptions(output=str(tmp_path / "out"), ocr="never", engine=engine))
    (doc,) = conv.run(docs)
    assert [p.status for p in doc.pages] == ["ok", "empty", "ok"]
    assert conv.stats.engine == "deepseek"


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_coverage_check_over_several_images(tmp_path: Path, seed: int) -> None:
    """Photos never force OCR; a few lines of text in an image always do (several draws)."""
    import pymupdf

    from ocrpress.routing import text_layer_result

    photo, text = tmp_path / "photo.pdf", tmp_path / "text.pdf"
    figure_pdf(photo, photo_image(seed=seed))
    figure_pdf(text, text_image(sample_text(3, seed), size=(700, 160)))
    with pymupdf.open(str(photo)) as doc:
        assert text_layer_result(doc[0], "photo.pdf", 0, 144)[0] is not None
    with pymupdf.open(str(text)) as doc:
        assert text_layer_result(doc[0], "text.pdf", 0, 144)[0] is None


def test_enclosed_letters_become_the_sign() -> None:
    """LaTeX's \\copyright is a "c" under U+20DD in the text layer; readers want "©"."""
    from ocrpress.textlayer import _compose

    assert _compose("c\u20dd2009 ACM") == "\u00a92009 ACM"
    assert _compose("plain text") == "plain text"


def test_readable_drops_characters_no_text_holds() -> None:
    """Stray unmapped glyphs on a page that passed the check leave the text, not the check."""
    from ocrpress.textlayer import count_bad, readable

    assert readable("lived with you \ufffd") == "lived with you"
    assert readable("a \ufffd\ufffd b (cid:12)c") == "a b c"
    assert readable("\ufffd") == ""
    assert readable("plain text") == "plain text"
    assert count_bad("a \ufffd b") == 1  # still counted against the page
