"""Markdown of plain-text blocks means what the JSON says; heading levels are per document."""

from __future__ import annotations

from ocrpress.document import Block, PageResult
from ocrpress.grounding import blocks_to_markdown
from ocrpress.headings import harmonise
from ocrpress.layout import Line, group_lines


def plain(btype: str, text: str, size: float | None = None) -> Block:
    return Block(type=btype, bbox=(0, 0, 10, 10), text=text, format="plain", size=size)


def test_body_text_that_looks_like_markdown_stays_text() -> None:
    md = blocks_to_markdown(
        [
            plain("text", "# Not a heading"),
            plain("text", "- not a list, 1. nor this <b>bold</b> *stars* a_b [x](y)"),
            plain("text", "1. Also not a list"),
        ]
    )
    lines = md.split("\n\n")
    assert lines[0] == r"\# Not a heading"
    assert lines[1].startswith(r"\- not a list")
    assert r"\<b\>" in lines[1] and r"\*stars\*" in lines[1] and r"a\_b" in lines[1]
    assert lines[2] == r"1\. Also not a list"


def test_vlm_markdown_blocks_are_left_alone() -> None:
    md = blocks_to_markdown([Block(type="text", bbox=(0, 0, 1, 1), text="**bold** - x")])
    assert md == "**bold** - x"


def test_bullets_and_enumerators_become_list_items_nested_by_indent() -> None:
    md = blocks_to_markdown([plain("list", "• first\n  • nested\n3. third\n(a) lettered")])
    assert md.split("\n") == ["- first", "    - nested", "3. third", r"- (a) lettered"]


def test_rows_keep_one_line_each_with_hard_breaks() -> None:
    md = blocks_to_markdown([plain("text", "Total 12.50\nCash 20.00")])
    assert md == "Total 12.50  \nCash 20.00"


def test_list_nesting_comes_from_indent() -> None:
    h = 24
    lines = [
        Line(box=(100, 100, 600, 100 + h), text="• outer one", score=0.9),
        Line(box=(160, 132, 600, 132 + h), text="• inner", score=0.9),
        Line(box=(100, 164, 600, 164 + h), text="• outer two", score=0.9),
    ]
    (block,) = group_lines(lines, 1200, 1600)
    assert block.type == "list"
    assert block.text.split("\n") == ["• outer one", "  • inner", "• outer two"]


def test_short_lines_end_their_paragraph() -> None:
    h, step = 24, 32
    texts = ["Dear Ms Smith,", "thank you for the long letter that filled a whole line of",
             "text, and the next one too, which is also quite long indeed.", "Yours sincerely,",
             "John"]  # fmt: skip
    widths = [300, 1000, 800, 340, 120]
    lines = [
        Line(box=(100, 200 + i * step, 100 + w, 200 + i * step + h), text=t, score=0.9)
        for i, (t, w) in enumerate(zip(texts, widths, strict=True))
    ]
    blocks = group_lines(lines, 1200, 1600)
    assert [b.text for b in blocks] == [texts[0], f"{texts[1]} {texts[2]}", texts[3], texts[4]]


def page_with(blocks: list[Block]) -> PageResult:
    return PageResult(
        source="d.pdf", index=0, width=100, height=100, dpi=144, engine="rapid", blocks=blocks
    )


def test_heading_levels_are_decided_over_the_whole_document() -> None:
    body = "body text " * 30
    pages = [page_with([plain("title", "Chapter", 40), plain("text", body, 24)]) for _ in range(9)]
    pages.append(page_with([plain("sub_title", "Chapter", 40), plain("text", "short", 30)]))
    harmonise(pages)
    assert {p.blocks[0].type for p in pages} == {"title"}
    section = page_with([plain("title", "Section", 31), plain("text", body, 24)])
    harmonise([*pages, section])
    assert section.blocks[0].type == "sub_title"
