"""Writers (Markdown, JSON, text), figure crops and atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ocrpress.document import SCHEMA_VERSION, Block, DocumentResult, PageImage, PageResult
from ocrpress.figures import crop_figures
from ocrpress.writers import (
    atomic_write,
    parse_formats,
    render_document,
    render_page_stream,
)


def _page(index: int, blocks: list[Block], status: str = "ok") -> PageResult:
    return PageResult(
        source="doc.pdf",
        index=index,
        width=1000,
        height=1400,
        dpi=144,
        engine="deepseek",
        model="m",
        mode="base",
        vision_tokens=257,
        text_tokens=120,
        status=status,  # type: ignore[arg-type]
        blocks=blocks,
        error="boom" if status == "error" else None,
    )


DOC = DocumentResult(
    source="doc.pdf",
    pages=[
        _page(
            0,
            [
                Block("title", (10, 10, 500, 60), "Quarterly report"),
                Block("text", (10, 80, 900, 300), "Sales grew & costs fell."),
                Block("table", (10, 320, 900, 600), "<table><tr><td>a</td><td>1</td></tr></table>"),
                Block("formula", (10, 620, 900, 700), "E = mc^2"),
                Block("footer", (10, 1350, 900, 1390), "page 1"),
            ],
        ),
        _page(1, [Block("text", (10, 10, 900, 200), "Second page.")], status="truncated"),
        _page(2, [], status="error"),
    ],
)


def test_markdown() -> None:
    md = render_document(DOC, "markdown")
    assert md.startswith("# Quarterly report\n\nSales grew & costs fell.")
    assert "<table><tr><td>a</td><td>1</td></tr></table>" in md
    assert "$$\nE = mc^2\n$$" in md
    assert "page 1" not in md.split("<!-- page 2 -->")[0]  # footer left out
    assert "<!-- page 2 -->\n\nSecond page." in md
    assert "truncated at the token limit" in md
    assert "<!-- page 3: error: boom -->" in md


def test_text_flattens_tables_and_splits_pages() -> None:
    txt = render_document(DOC, "text")
    pages = txt.split("\f")
    assert len(pages) == 3
    assert "a\t1" in pages[0] and "<td>" not in txt
    assert "Quarterly report" in pages[0] and "Second page." in pages[1]


def test_json_round_trip() -> None:
    data = json.loads(render_document(DOC, "json"))
    assert data["schema"] == SCHEMA_VERSION and len(data["pages"]) == 3
    p0 = data["pages"][0]
    assert p0["blocks"][0] == {
        "type": "title",
        "bbox": [10, 10, 500, 60],
        "text": "Quarterly report",
    }
    assert p0["compression"] == round(120 / 257, 3)
    back = PageResult.from_dict(p0)
    assert back.blocks[2].text.startswith("<table>") and back.index == 0
    assert "raw" not in p0


def test_page_streams() -> None:
    line = render_page_stream(DOC.pages[0], "json")
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["page"] == 1
    assert render_page_stream(DOC.pages[1], "text").endswith("\f\n")


def test_parse_formats() -> None:
    assert parse_formats("md,json,txt,markdown") == ["markdown", "json", "text"]
    with pytest.raises(ValueError, match="unknown format"):
        parse_formats("markdown,docx")


def test_figures_are_cropped_and_linked(tmp_path: Path) -> None:
    img = Image.new("RGB", (1000, 1400), "white")
    img.paste((255, 0, 0), (100, 200, 300, 400))
    page = PageImage(source="doc.pdf", index=4, image=img, dpi=144)
    res = _page(4, [Block("figure", (100, 200, 300, 400), ""), Block("figure", (5, 5, 5, 5), "")])
    assert crop_figures(res, page, str(tmp_path), "sub/doc") == 1
    crop = tmp_path / "sub" / "doc_images" / "page-0005-figure-1.png"
    assert Image.open(crop).size == (200, 200)
    assert Image.open(crop).getpixel((100, 100)) == (255, 0, 0)
    assert res.blocks[0].image == "doc_images/page-0005-figure-1.png"
    md = render_document(DocumentResult("doc.pdf", [res]), "markdown")
    assert "![](doc_images/page-0005-figure-1.png)" in md


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.md"
    atomic_write(str(target), "old")

    class Boom(str):
        def encode(self, *a: object, **k: object) -> bytes:  # type: ignore[override]
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(str(target), Boom("new"))
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.md"]
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
