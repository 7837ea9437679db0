"""Grounded-output parser and block Markdown, on hand-written outputs in DeepSeek-OCR's format."""

from __future__ import annotations

import random
import re

import pytest

from ocrpress.document import Block
from ocrpress.grounding import (
    LABEL_TYPES,
    block_to_markdown,
    blocks_to_markdown,
    normalise_label,
    parse_grounded,
    parse_regions,
    strip_grounding,
)

W, H = 1000, 2000


def g(label: str, boxes: str, content: str = "") -> str:
    """One well-formed grounded block as the model writes it."""
    return f"<|ref|>{label}<|/ref|><|det|>{boxes}<|/det|>\n{content}\n"


def px(v: float, size: int) -> float:
    return v * size / 999


PAGE = (
    g("title", "[[100, 40, 900, 80]]", "# Quarterly Report")
    + g("text", "[[100, 100, 900, 300]]", "First paragraph.\nSecond line of it.")
    + g("sub_title", "[[100, 320, 600, 350]]", "## Results")
    + g(
        "table",
        "[[100, 360, 900, 600]]",
        "<table><tr><td>a < b</td><td><table><tr><td>inner</td></tr></table></td></tr>"
        '<tr><td colspan="2">x<y</td></tr></table>',
    )
    + g("table_caption", "[[100, 610, 900, 630]]", "Table 1: sums.")
    + g("equation", "[[200, 640, 800, 680]]", "E = mc^2")
    + g("image", "[[100, 700, 500, 900]]")
    + g("image_caption", "[[100, 905, 500, 925]]", "Figure 1: a plot.")
    + g("footer", "[[400, 970, 600, 990]]", "Page 3")
)


# --- structure ---------------------------------------------------------------------------------


def test_several_blocks_in_order_with_types_and_text() -> None:
    blocks = parse_grounded(PAGE, W, H)
    assert [b.type for b in blocks] == [
        "title",
        "text",
        "sub_title",
        "table",
        "caption",
        "formula",
        "figure",
        "caption",
        "footer",
    ]
    assert blocks[0].text == "Quarterly Report"  # heading marker stripped
    assert blocks[1].text == "First paragraph.\nSecond line of it."
    assert blocks[2].text == "Results"
    assert blocks[5].text == "E = mc^2"
    assert blocks[6].text == ""
    assert blocks[8].text == "Page 3"
    assert all(b.score is None and b.image is None for b in blocks)


def test_nested_table_html_kept_verbatim() -> None:
    table = parse_grounded(PAGE, W, H)[3]
    assert table.type == "table"
    assert table.text.startswith("<table><tr><td>a < b</td><td><table>")
    assert "<td>inner</td></tr></table></td>" in table.text
    assert table.text.endswith('<td colspan="2">x<y</td></tr></table>')


def test_scaling_full_box_covers_page() -> None:
    (b,) = parse_grounded(g("text", "[[0,0,999,999]]", "x"), W, H)
    assert b.bbox == (0.0, 0.0, 1000.0, 2000.0)


def test_scaling_is_relative_to_each_axis() -> None:
    (b,) = parse_grounded(g("text", "[[100, 40, 900, 80]]", "x"), 640, 480)
    assert b.bbox == pytest.approx((px(100, 640), px(40, 480), px(900, 640), px(80, 480)))


def test_out_of_range_values_clamped_to_page() -> None:
    (b,) = parse_grounded(g("text", "[[-20, -5, 1500, 999999]]", "x"), W, H)
    assert b.bbox == (0.0, 0.0, 1000.0, 2000.0)


def test_reversed_corners_normalised() -> None:
    (b,) = parse_grounded(g("text", "[[900, 800, 100, 200]]", "x"), W, H)
    assert b.bbox == pytest.approx((px(100, W), px(200, H), px(900, W), px(800, H)))


def test_several_boxes_union_and_all_kept_in_regions() -> None:
    text = g("text", "[[100, 100, 400, 200], [500, 50, 900, 150],[120,300,300,350]]", "two cols")
    (b,) = parse_grounded(text, W, H)
    assert b.bbox == pytest.approx((px(100, W), px(50, H), px(900, W), px(350, H)))
    (r,) = parse_regions(text)
    assert r.label == "text"
    assert r.boxes == [(100, 100, 400, 200), (500, 50, 900, 150), (120, 300, 300, 350)]


def test_float_and_spaced_coordinates() -> None:
    (r,) = parse_regions(g("text", "[ [ 10.5 ,20, 30 , 40.25 ] ]", "x"))
    assert r.boxes == [(10.5, 20.0, 30.0, 40.25)]


# --- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "expected"), sorted(LABEL_TYPES.items()))
def test_documented_labels_map(label: str, expected: str) -> None:
    (b,) = parse_grounded(g(label, "[[1,2,3,4]]", "c"), W, H)
    assert b.type == expected


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Title", "title"),
        (" sub_title ", "sub_title"),
        ("Figure", "figure"),
        ("side_note", "side_note"),
        ("Side Note!", "side_note"),
        ("page-number", "page_number"),
        ("", "text"),
        ("!!!", "text"),
        (None, "text"),
    ],
)
def test_label_normalisation(label: str | None, expected: str) -> None:
    assert normalise_label(label) == expected


def test_unknown_label_kept_as_block_type() -> None:
    (b,) = parse_grounded(g("Page Number", "[[1,2,3,4]]", "7"), W, H)
    assert (b.type, b.text) == ("page_number", "7")


def test_runaway_label_is_capped() -> None:
    (b,) = parse_grounded(g("x" * 500, "[[1,2,3,4]]", "c"), W, H)
    assert len(b.type) <= 40


# --- untagged text -----------------------------------------------------------------------------


def test_free_ocr_output_is_one_full_page_text_block() -> None:
    blocks = parse_grounded("Plain OCR text.\n\nAnother paragraph.", W, H)
    assert len(blocks) == 1
    assert blocks[0].type == "text"
    assert blocks[0].bbox == (0.0, 0.0, 1000.0, 2000.0)
    assert blocks[0].text == "Plain OCR text.\n\nAnother paragraph."


def test_preamble_before_first_tag_becomes_text_block() -> None:
    blocks = parse_grounded("stray words\n" + g("title", "[[1,2,3,4]]", "T"), W, H)
    assert [(b.type, b.text) for b in blocks] == [("text", "stray words"), ("title", "T")]
    assert blocks[0].bbox == (0.0, 0.0, 1000.0, 2000.0)


@pytest.mark.parametrize("text", ["", "   \n\t ", "<|ref|>", "<|det|>", "<|/det|>", "<|"])
def test_empty_inputs_give_no_blocks(text: str) -> None:
    assert parse_grounded(text, W, H) == []


def test_block_with_box_but_no_content_is_kept() -> None:
    (b,) = parse_grounded(g("text", "[[1,2,3,4]]", "   "), W, H)
    assert (b.type, b.text) == ("text", "")


def test_stray_special_tokens_removed() -> None:
    text = "<|grounding|>" + g("text", "[[1,2,3,4]]", "Hello") + "<｜end▁of▁sentence｜>"
    (b,) = parse_grounded(text, W, H)
    assert b.text == "Hello"


# --- malformed and cut-off output --------------------------------------------------------------


def test_cut_off_ref_at_end_drops_only_the_partial_block() -> None:
    blocks = parse_grounded(g("title", "[[1,2,3,4]]", "# T") + "<|ref|>tex", W, H)
    assert [(b.type, b.text) for b in blocks] == [("title", "T")]


@pytest.mark.parametrize("tail", ["<", "<|", "<|re", "<|ref|", "<|/re", "<|de", "<|/det|"])
def test_cut_off_tag_itself_is_not_content(tail: str) -> None:
    blocks = parse_grounded(g("text", "[[1,2,3,4]]", "body") + tail, W, H)
    assert blocks[-1].text in ("body", "body\n<")  # a lone "<" may be real text
    assert "<|" not in blocks[-1].text


def test_cut_off_coordinates_at_end() -> None:
    text = g("text", "[[1,2,3,4]]", "body") + "<|ref|>table<|/ref|><|det|>[[12,3"
    blocks = parse_grounded(text, W, H)
    assert [(b.type, b.text) for b in blocks] == [("text", "body")]


def test_cut_off_second_box_keeps_the_first() -> None:
    (r,) = parse_regions("<|ref|>text<|/ref|><|det|>[[1,2,3,4],[5,6")
    assert (r.label, r.boxes, r.content) == ("text", [(1, 2, 3, 4)], "")


def test_cut_off_content_mid_table_kept() -> None:
    text = g("table", "[[1,2,3,4]]", "") + "<table><tr><td>12</td><td>3"
    (b,) = parse_grounded(text, W, H)
    assert (b.type, b.text) == ("table", "<table><tr><td>12</td><td>3")


def test_missing_ref_close_takes_first_word_as_label() -> None:
    blocks = parse_grounded("<|ref|>title<|det|>[[0,0,999,999]]<|/det|>\n# Head", W, H)
    assert [(b.type, b.text, b.bbox) for b in blocks] == [
        ("title", "Head", (0.0, 0.0, 1000.0, 2000.0))
    ]


def test_missing_ref_close_before_next_ref() -> None:
    blocks = parse_grounded("<|ref|>text some words" + g("title", "[[1,2,3,4]]", "T"), W, H)
    assert [(b.type, b.text) for b in blocks] == [("text", "some words"), ("title", "T")]


def test_missing_det_close_reads_boxes_up_to_last_bracket() -> None:
    text = "<|ref|>text<|/ref|><|det|>[[10,20,30,40]]2023 annual results" + g("title", "[[1]]")
    regions = parse_regions(text)
    assert (regions[0].boxes, regions[0].content) == ([(10, 20, 30, 40)], "2023 annual results")


@pytest.mark.parametrize(
    "coords",
    ["[[a,b,c,d]]", "[[1,2,3]]", "[[1,2,3,4,5]]", "[[]]", "", "[[1,2,x,4]]", "nonsense"],
)
def test_bad_coordinates_fall_back_to_full_page(coords: str) -> None:
    (b,) = parse_grounded(g("text", coords, "content"), W, H)
    assert (b.type, b.text, b.bbox) == ("text", "content", (0.0, 0.0, 1000.0, 2000.0))


def test_bad_boxes_skipped_good_ones_kept() -> None:
    (r,) = parse_regions(g("text", "[[1,2,3],[10,20,30,40],[a,b,c,d]]", "x"))
    assert r.boxes == [(10, 20, 30, 40)]


def test_bare_coordinates_without_brackets() -> None:
    (r,) = parse_regions(g("text", "10, 20, 30, 40", "x"))
    assert r.boxes == [(10, 20, 30, 40)]


def test_bad_coordinates_and_no_content_drop_the_block() -> None:
    assert parse_grounded(g("image", "[[x,y]]"), W, H) == []


def test_det_without_ref_is_a_text_block() -> None:
    text = g("title", "[[1,2,3,4]]", "T") + "<|det|>[[0,0,999,999]]<|/det|>orphan"
    blocks = parse_grounded(text, W, H)
    assert [(b.type, b.text) for b in blocks] == [("title", "T"), ("text", "orphan")]
    assert blocks[1].bbox == (0.0, 0.0, 1000.0, 2000.0)


def test_det_at_start_without_ref() -> None:
    (r,) = parse_regions("<|det|>[[1,2,3,4]]<|/det|>hello")
    assert (r.label, r.boxes, r.content) == (None, [(1, 2, 3, 4)], "hello")


def test_stray_closing_tags_ignored() -> None:
    text = "<|/ref|>" + g("text", "[[1,2,3,4]]", "a<|/ref|>b<|/det|>c")
    (b,) = parse_grounded(text, W, H)
    assert b.text == "abc"


def test_degenerate_page_size_does_not_raise() -> None:
    (b,) = parse_grounded(g("text", "[[1,2,3,4]]", "x"), 0, -5)
    assert b.bbox == (0.0, 0.0, 0.0, 0.0)


# --- strip_grounding ---------------------------------------------------------------------------


def test_strip_grounding_keeps_markdown_only() -> None:
    out = strip_grounding(PAGE)
    assert "<|" not in out and "[[" not in out
    assert out.startswith(
        "# Quarterly Report\n\nFirst paragraph.\nSecond line of it.\n\n## Results"
    )
    assert out.endswith("Figure 1: a plot.\n\nPage 3")


def test_strip_grounding_passes_plain_text_through() -> None:
    assert strip_grounding("  just text\n") == "just text"


# --- Markdown ----------------------------------------------------------------------------------


def blk(type_: str, text: str = "", image: str | None = None) -> Block:
    return Block(type=type_, bbox=(0, 0, 1, 1), text=text, image=image)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (blk("title", "Quarterly\nReport"), "# Quarterly Report"),
        (blk("sub_title", "Results"), "## Results"),
        (blk("text", "Line one.\nLine two."), "Line one.\nLine two."),
        (blk("table", "<table><tr><td>1</td></tr></table>"), "<table><tr><td>1</td></tr></table>"),
        (blk("formula", "E = mc^2"), "$$\nE = mc^2\n$$"),
        (blk("formula", "$$E = mc^2$$"), "$$E = mc^2$$"),
        (blk("formula", "\\[ E = mc^2 \\]"), "\\[ E = mc^2 \\]"),
        (blk("list", "- a\n- b"), "- a\n- b"),
        (blk("caption", "Figure 1: a plot."), "*Figure 1: a plot.*"),
        (blk("caption", "*already*"), "*already*"),
        (blk("caption", "para one\n\npara two"), "*para one*\n\n*para two*"),
        (blk("figure", image="doc_images/p1_0.png"), "![](doc_images/p1_0.png)"),
        (blk("figure", image="my doc_images/a (1).png"), "![](<my doc_images/a (1).png>)"),
        (blk("figure"), "<!-- figure -->"),
        (blk("figure", "chart label", image="i.png"), "![](i.png)\n\nchart label"),
        (blk("header", "Running head"), ""),
        (blk("footer", "Page 3"), ""),
        (blk("text", "   "), ""),
        (blk("page_number", "7"), "7"),
    ],
)
def test_block_markdown_by_type(block: Block, expected: str) -> None:
    assert block_to_markdown(block) == expected


def test_blocks_to_markdown_page() -> None:
    md = blocks_to_markdown(parse_grounded(PAGE, W, H))
    assert md == (
        "# Quarterly Report\n\n"
        "First paragraph.\nSecond line of it.\n\n"
        "## Results\n\n" + parse_grounded(PAGE, W, H)[3].text + "\n\n*Table 1: sums.*\n\n"
        "$$\nE = mc^2\n$$\n\n"
        "<!-- figure -->\n\n"
        "*Figure 1: a plot.*"
    )  # footer omitted
    assert "Page 3" not in md


def test_blocks_to_markdown_empty() -> None:
    assert blocks_to_markdown([]) == ""
    assert blocks_to_markdown([blk("header", "h"), blk("text", "")]) == ""


# --- fuzz --------------------------------------------------------------------------------------

_SOUP = [
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|",
    "|>",
    "<",
    "[[",
    "]]",
    "[",
    "]",
    ",",
    "-",
    ".",
    " ",
    "\n",
    "#",
    "$$",
    "<table>",
    "</td>",
    "text",
    "title",
    "image",
    "Weird Label",
    "0",
    "999",
    "12",
    "-40",
    "100000",
    "3.5",
    "abc",
    "é",
    "<｜end▁of▁sentence｜>",
    "<|grounding|>",
]
_TAG_RE = re.compile(r"<\|/?(ref|det)\|>")


def _check(blocks: list[Block], w: int, h: int) -> None:
    for b in blocks:
        assert isinstance(b, Block)
        assert re.fullmatch(r"[a-z0-9_]+", b.type)
        x0, y0, x1, y1 = b.bbox
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
        assert not _TAG_RE.search(b.text)
        assert b.text == b.text.strip()


def test_fuzz_random_tag_soup_never_raises() -> None:
    rng = random.Random(20240611)
    for _ in range(3000):
        text = "".join(rng.choice(_SOUP) for _ in range(rng.randint(0, 60)))
        w, h = rng.randint(1, 5000), rng.randint(1, 5000)
        blocks = parse_grounded(text, w, h)
        _check(blocks, w, h)
        blocks_to_markdown(blocks)
        assert not _TAG_RE.search(strip_grounding(text))


def test_fuzz_truncated_valid_output_never_raises() -> None:
    # Every prefix of a real page: what a token limit can leave behind.
    full = parse_grounded(PAGE, W, H)
    for cut in range(len(PAGE) + 1):
        blocks = parse_grounded(PAGE[:cut], W, H)
        _check(blocks, W, H)
        # Every block but the one being written when the cut came survives unchanged.
        n = max(len(blocks) - 1, 0)
        assert blocks[:n] == full[:n]


def test_fuzz_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 200)))
        _check(parse_grounded(text, 100, 100), 100, 100)
