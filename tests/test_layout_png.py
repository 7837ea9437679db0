"""-f layout: one picture per page with the blocks ocrpress found, for any engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from docgen import labelled_pdf, make_pdf, render_pdf_page, sample_text
from PIL import Image

from ocrpress import api
from ocrpress.document import Block, PageResult
from ocrpress.writers.layout_png import OTHER_COLOR, color_of, draw_layout

TESTS = Path(__file__).parent
ECHO = "fake_engines:EchoEngine"


def ocrpress(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-m", "ocrpress", *args], capture_output=True, env=env, timeout=300
    )


def _page(blocks: list[Block], w: int = 400, h: int = 300) -> PageResult:
    return PageResult("x.png", 0, w, h, None, "test", blocks=blocks)


def test_draw_layout_outlines_by_type_and_keeps_the_rest() -> None:
    white = Image.new("RGB", (400, 300), "white")
    page = _page(
        [
            Block("title", (20, 20, 380, 60), "Title"),
            Block("table", (20, 150, 380, 280), "<table></table>"),
            Block("weird_label", (200, 80, 300, 120), "?"),
        ]
    )
    out = draw_layout(white, page)
    assert out.size == (400, 300) and out.mode == "RGB"
    # The outline's right edge, clear of the tag at the top-left, has the type's own colour.
    assert out.getpixel((380, 40)) == color_of("title")
    assert out.getpixel((380, 215)) == color_of("table")
    assert out.getpixel((300, 100)) == OTHER_COLOR
    assert color_of("title") != color_of("table")
    # Outside every box the page is untouched; inside, a light tint of the type's colour.
    assert out.getpixel((5, 100)) == (255, 255, 255)
    inside = out.getpixel((300, 220))
    assert inside != (255, 255, 255) and inside[1] > inside[0]  # green-ish: a table
    # The number tag is filled at the box's top-left corner.
    assert out.getpixel((21, 21)) != (255, 255, 255)


def test_draw_layout_matches_page_size_and_clamps_full_page_box() -> None:
    # A re-render at another size is scaled to the pixels the boxes are in.
    small = Image.new("RGB", (200, 150), "white")
    out = draw_layout(small, _page([Block("text", (0, 0, 400, 300), "all")]))
    assert out.size == (400, 300)
    assert out.getpixel((399, 150)) == color_of("text")  # the box's edge on the page's edge


def test_cli_writes_pictures_for_pdf_and_image_and_resume_skips(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    pdf = labelled_pdf(src / "a.pdf", 2)
    Image.new("RGB", (300, 200), (250, 250, 240)).save(src / "b.png")
    out = tmp_path / "out"
    args = (
        "convert",
        str(src),
        "-o",
        str(out),
        "-f",
        "json,layout",
        "--engine",
        ECHO,
        "--ocr",
        "always",
    )
    r = ocrpress(*args)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "a.json").read_text())
    assert sorted(p.name for p in (out / "a_layout").iterdir()) == [
        "page-0001.png",
        "page-0002.png",
    ]
    for page in doc["pages"]:
        path = out / "a_layout" / f"page-{page['page']:04d}.png"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (page["width"], page["height"])
            pic = im.convert("RGB")
        rendered = render_pdf_page(pdf, page["page"] - 1, dpi=page["dpi"])
        assert rendered.size == pic.size
        # The echo engine's one block covers the page: its outline recolours the page's edge.
        edge = (pic.width - 1, pic.height // 2)
        assert rendered.getpixel(edge) == (255, 255, 255)
        assert pic.getpixel(edge) == color_of("text")
        # The page's own ink is still there under the overlay (the label text near 72,72 pt).
        assert pic.crop((100, 100, 700, 200)).convert("L").getextrema()[0] < 100
    with Image.open(out / "b_layout" / "page-0001.png") as im:
        assert im.size == (300, 200)
        assert im.convert("RGB").getpixel((150, 199)) == color_of("text")
    # Everything is written: a second run skips both documents.
    r = ocrpress(*args)
    assert r.returncode == 0, r.stderr
    assert b"2 skipped (done)" in r.stderr
    # A missing picture folder is a missing output: that document is converted again.
    for p in (out / "b_layout").iterdir():
        p.unlink()
    (out / "b_layout").rmdir()
    r = ocrpress(*args)
    assert r.returncode == 0, r.stderr
    assert b"1 skipped (done)" in r.stderr and (out / "b_layout" / "page-0001.png").is_file()
    assert not list(out.rglob("*.tmp"))


def test_fewer_pages_remove_stale_pictures(tmp_path: Path) -> None:
    pdf = labelled_pdf(tmp_path / "a.pdf", 3)
    out = tmp_path / "out"
    base = (
        "convert",
        str(pdf),
        "-o",
        str(out),
        "-f",
        "layout",
        "--engine",
        ECHO,
        "--ocr",
        "always",
    )
    assert ocrpress(*base).returncode == 0
    assert len(list((out / "a_layout").glob("page-*.png"))) == 3
    r = ocrpress(*base, "--pages", "2")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (out / "a_layout").iterdir()] == ["page-0002.png"]
    assert not (out / "a.md").exists()  # layout alone writes only the pictures


@pytest.mark.parametrize("extra", [("-o", "-", "-f", "layout"), ("-f", "markdown,layout")])
def test_layout_to_stdout_is_a_usage_error(tmp_path: Path, extra: tuple[str, ...]) -> None:
    pdf = labelled_pdf(tmp_path / "a.pdf", 1)
    r = ocrpress("convert", str(pdf), "--engine", ECHO, *extra)
    assert r.returncode == 2 and r.stdout == b""
    lines = [line for line in r.stderr.decode().splitlines() if line.strip()]
    errors = [line for line in lines if "layout" in line]
    assert len(errors) == 1 and "stdout" in errors[0] and "-o DIR" in errors[0]


def test_api_without_output_folder_refuses_layout(tmp_path: Path) -> None:
    pdf = labelled_pdf(tmp_path / "a.pdf", 1)
    with pytest.raises(ValueError, match="no output folder"):
        api.convert(str(pdf), None, formats="markdown,layout")


@pytest.mark.slow
def test_rapid_layout_picture_shows_each_line_block(tmp_path: Path) -> None:
    make_pdf(tmp_path / "p.pdf", [["Layout pictures", *sample_text(4, seed=5)]], fontsize=14)
    out = tmp_path / "out"
    r = ocrpress(
        "convert", str(tmp_path / "p.pdf"), "-o", str(out), "-f", "json,layout",
        "--engine", "rapid", "--dpi", "100", "--ocr", "always",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    page = json.loads((out / "p.json").read_text())["pages"][0]
    assert page["blocks"]
    with Image.open(out / "p_layout" / "page-0001.png") as im:
        pic = im.convert("RGB")
    assert pic.size == (page["width"], page["height"])
    for block in page["blocks"]:
        _x0, y0, x1, y1 = (round(v) for v in block["bbox"])
        # The right edge of every box, halfway down, carries its type's colour.
        assert pic.getpixel((min(x1, pic.width - 1), (y0 + y1) // 2)) == color_of(block["type"])


def test_failed_pages_get_no_picture(tmp_path: Path) -> None:
    pdf = labelled_pdf(tmp_path / "a.pdf", 3)
    out = tmp_path / "out"
    r = ocrpress(
        "convert", str(pdf), "-o", str(out), "-f", "json,layout",
        "--engine", "fake_engines:FlakyEngine", "--ocr", "always",
    )  # fmt: skip
    assert r.returncode == 1
    pages = json.loads((out / "a.json").read_text())["pages"]
    ok = {f"page-{p['page']:04d}.png" for p in pages if p["status"] != "error"}
    assert "page-0002.png" not in ok and ok
    assert {p.name for p in (out / "a_layout").iterdir()} == ok
