"""`ocrpress convert --engine deepseek` end to end on tiny random v1 and v2 checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pymupdf
import pytest
from PIL import Image
from test_cli import ocrpress


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-page PDF and a PNG, small enough for CPU generation."""
    src = tmp_path_factory.mktemp("deepseek-docs")
    pdf = pymupdf.open()
    for i in range(2):
        page = pdf.new_page(width=280, height=300)  # at 144 dpi: 560 x 600 px, untiled
        page.insert_text((20, 40 + 30 * i), f"Page {i + 1} of a tiny report", fontsize=12)
        page.draw_rect(pymupdf.Rect(20, 100, 200 + 20 * i, 220), color=(0, 0, 1), fill=(1, 0, 0))
    pdf.save(src / "report.pdf")
    Image.new("RGB", (500, 400), (30, 120, 200)).save(src / "photo.png")
    return src


def _convert(model: Path, docs: Path, out: Path, *extra: str, env=None):  # type: ignore[no-untyped-def]
    return ocrpress(
        "convert",
        str(docs),
        "-o",
        str(out),
        "-f",
        "markdown,json,text",
        "--engine",
        "deepseek",
        "--ocr",
        "always",  # the generated pages have text layers; the model must read them
        "--model",
        str(model),
        "--max-new-tokens",
        "8",
        "--workers",
        "1",
        *extra,
        env=env,
    )


@pytest.mark.parametrize(
    ("fixture", "mode", "vision_tokens"),
    [("tiny_v2_model", "small", 145), ("tiny_v1_model", "tiny", 64)],
)
def test_convert_end_to_end(
    request: pytest.FixtureRequest,
    docs: Path,
    tmp_path: Path,
    fixture: str,
    mode: str,
    vision_tokens: int,
) -> None:
    model: Path = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    r = _convert(model, docs, out, "--mode", mode, "--keep-raw")
    assert r.returncode == 0, r.stderr.decode()
    for name in ("report", "photo"):
        for ext in (".md", ".json", ".txt"):
            assert (out / (name + ext)).is_file()
    doc = json.loads((out / "report.json").read_text())
    pages = doc["pages"]
    assert [p["page"] for p in pages] == [1, 2]
    for p in pages:
        assert p["engine"] == "deepseek" and p["mode"] == mode
        assert p["vision_tokens"] == vision_tokens
        assert 0 < p["text_tokens"] <= 8
        assert p["compression"] == pytest.approx(p["text_tokens"] / vision_tokens, abs=1e-3)
        assert p["status"] in ("ok", "truncated", "empty")
        assert isinstance(p["raw"], str)
    stats = json.loads((out / "_ocrpress_run.json").read_text())
    assert stats["pages"] == 3 and stats["vision_tokens_per_page"] == vision_tokens
    # three pages in slots of four: at most 3/4 of the decode slots can be used
    assert 0 < stats["decode_slot_utilisation"] <= 0.75
    assert 0 < stats["engine_busy_fraction"] <= 1
    # --workers 1: the render worker prepared every page's model inputs, not the engine
    assert stats["pages_prepared_by_workers"] == 3
    summary = r.stderr.decode()
    assert "vision" in summary and "compression" in summary
    assert "engine busy" in summary and "decode slots" in summary


@pytest.mark.parametrize(
    ("workers", "prepared"),
    [("4", 3), pytest.param("1", 0, marks=pytest.mark.slow)],
)
def test_devices_replicas_stream_the_same_outputs(
    tiny_v2_model: Path, docs: Path, tmp_path: Path, workers: str, prepared: int
) -> None:
    """--devices on two (fake) GPUs: each replica runs DeepSeek's one decode across batches in
    its own process, on inputs the render workers prepared when there are two a replica
    (else on inputs it prepares itself), and the outputs are those of one process."""
    one = _convert(tiny_v2_model, docs, tmp_path / "one", "--mode", "small", "--device", "cpu")
    assert one.returncode == 0, one.stderr.decode()
    two = _convert(
        tiny_v2_model,
        docs,
        tmp_path / "two",
        "--mode",
        "small",
        "--device",
        "cpu",
        "--devices",
        "all",
        "--batch-size",
        "1",
        "--workers",
        workers,
        env={"OCRPRESS_FAKE_GPUS": "2"},
    )
    assert two.returncode == 0, two.stderr.decode()
    for name in ("report.md", "report.txt", "photo.md"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    stats = json.loads((tmp_path / "two" / "_ocrpress_run.json").read_text())
    assert stats["pages"] == 3 and 0 < stats["decode_slot_utilisation"] <= 1
    assert 0 < stats["engine_busy_fraction"] <= 1
    assert stats["pages_prepared_by_workers"] == prepared


def test_retry_truncated_is_recorded(tiny_v2_model: Path, docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _convert(tiny_v2_model, docs, out, "--mode", "small", "--retry-truncated", "--pages", "1")
    assert r.returncode == 0, r.stderr.decode()
    pages = json.loads((out / "report.json").read_text())["pages"]
    truncated = [p for p in pages if p["status"] == "truncated"]
    # A random model never says EOS within 8 tokens: every page hits the limit, is retried
    # with the stronger guard, stays truncated, and is listed in the summary.
    assert truncated, pages
    for p in truncated:
        assert any("retried after truncation" in n for n in p["notes"])
        assert any("repetition guard n=20, window=512" in n for n in p["notes"])
    assert b"truncated: " in r.stderr


def test_missing_model_is_one_line_exit_3(tmp_path: Path, docs: Path) -> None:
    r = _convert(tmp_path / "no-model-here", docs, tmp_path / "out")
    assert r.returncode == 3
    errors = [ln for ln in r.stderr.decode().splitlines() if "error:" in ln]
    assert len(errors) == 1 and "no-model-here" in errors[0]
    assert not (tmp_path / "out" / "report.md").exists()


def test_impossible_mode_is_refused(tiny_v2_model: Path, docs: Path, tmp_path: Path) -> None:
    r = _convert(tiny_v2_model, docs, tmp_path / "out", "--mode", "tiny")
    assert r.returncode == 3
    assert b"tiny" in r.stderr and b"512" in r.stderr
