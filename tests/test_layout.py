"""Unit tests for ocrpress.layout on synthetic line detections (no OCR involved)."""

from __future__ import annotations

import math
import re

import pytest

from ocrpress.layout import Line, group_lines

W, H = 1190, 1684  # an A4 page at 144 dpi
LH = 24  # body line box height in pixels (12 pt at 144 dpi)
STEP = 32  # baseline-to-baseline distance of body text


def line(x0: float, y0: float, x1: float, text: str, h: float = LH, score: float = 0.9) -> Line:
    return Line(box=(x0, y0, x1, y0 + h), text=text, score=score)


def column(
    x0: float, x1: float, y0: float, paras: list[list[str]], para_gap: float = 24
) -> tuple[list[Line], float]:
    """Lines of consecutive paragraphs in one column; returns (lines, y after the last)."""
    out: list[Line] = []
    y = y0
    for para in paras:
        for text in para:
            out.append(line(x0, y, x1, text))
            y += STEP
        y += para_gap
    return out, y


def texts(blocks: list) -> list[str]:
    return [b.text for b in blocks]


def test_empty_input_gives_no_blocks() -> None:
    assert group_lines([], W, H) == []
    assert group_lines([line(100, 100, 300, "   ")], W, H) == []


def test_paragraphs_split_on_larger_gaps_and_join_with_spaces() -> None:
    lines, _ = column(
        100, 1000, 200, [["first para line one", "line two", "line three"], ["second para", "end"]]
    )
    blocks = group_lines(lines, W, H)
    assert texts(blocks) == ["first para line one line two line three", "second para end"]
    assert all(b.type == "text" for b in blocks)
    assert blocks[0].bbox == (100, 200, 1000, 200 + 2 * STEP + LH)
    assert blocks[0].score == pytest.approx(0.9)


def test_block_score_is_mean_of_line_scores() -> None:
    lines = [line(100, 200, 900, "a b c", score=0.5), line(100, 200 + STEP, 900, "d e", score=1.0)]
    (block,) = group_lines(lines, W, H)
    assert block.score == pytest.approx(0.75)


def test_uniformly_spaced_lines_form_one_paragraph() -> None:
    # No paragraph gaps at all: spacing is relative to the page's own line spacing.
    lines, _ = column(100, 1000, 200, [["one", "two", "three", "four"]])
    assert texts(group_lines(lines, W, H)) == ["one two three four"]


def test_title_above_two_columns_reads_title_left_then_right() -> None:
    title = line(100, 100, 1000, "Big Title", h=48)
    # Paragraph gaps at identical heights in both columns: cutting the page at every
    # horizontal gap would interleave L1, R1, L2, R2.
    left, _ = column(100, 560, 200, [["L1a", "L1b", "L1c"], ["L2a", "L2b", "L2c"]])
    right, _ = column(630, 1090, 200, [["R1a", "R1b", "R1c"], ["R2a", "R2b", "R2c"]])
    # Detector output order is arbitrary: feed row-major, right column first.
    shuffled = [title, *[ln for pair in zip(right, left, strict=True) for ln in pair]]
    blocks = group_lines(shuffled, W, H)
    assert texts(blocks) == [
        "Big Title",
        "L1a L1b L1c",
        "L2a L2b L2c",
        "R1a R1b R1c",
        "R2a R2b R2c",
    ]
    assert blocks[0].type == "title"
    assert all(b.type == "text" for b in blocks[1:])


def test_longer_left_column_is_finished_before_the_right_one() -> None:
    left, _ = column(100, 560, 200, [["L1a", "L1b"], ["L2a", "L2b"], ["L3a", "L3b"]])
    right, _ = column(630, 1090, 200, [["R1a", "R1b"]])
    blocks = group_lines(right + left, W, H)
    assert texts(blocks) == ["L1a L1b", "L2a L2b", "L3a L3b", "R1a R1b"]


def test_three_columns_then_full_width_paragraph() -> None:
    cols = [
        column(x, x + 300, 200, [[f"c{i} a", f"c{i} b"]])[0] for i, x in enumerate((100, 460, 820))
    ]
    bottom, _ = column(100, 1120, 400, [["after the columns", "still after"]])
    lines = [ln for c in reversed(cols) for ln in c] + bottom
    assert texts(group_lines(lines, W, H)) == [
        "c0 a c0 b",
        "c1 a c1 b",
        "c2 a c2 b",
        "after the columns still after",
    ]


def test_columns_do_not_merge_into_one_paragraph_across_the_gutter() -> None:
    # Same rows, no paragraph gaps: a naive top-to-bottom grouping would read across.
    left, _ = column(100, 560, 200, [["l1", "l2", "l3"]])
    right, _ = column(630, 1090, 200, [["r1", "r2", "r3"]])
    assert texts(group_lines(left + right, W, H)) == ["l1 l2 l3", "r1 r2 r3"]


def test_heading_sizes() -> None:
    lines = [line(100, 100, 700, "Document Title", h=40)]  # 1.67x near the top
    body, y = column(100, 1000, 180, [["body a", "body b", "body c"]])
    lines += body
    lines.append(line(100, y, 600, "Section heading", h=30))  # 1.25x, apart by a para gap
    body2, y = column(100, 1000, y + 30 + 24, [["more a", "more b"]])
    lines.append(line(100, y, 600, "Tight heading", h=34))  # 1.4x, glued to its body
    body3, y = column(100, 1000, y + 34 + 6, [["close a", "close b"]])
    lines += body3
    lines += body2
    lines.append(line(100, y + 600, 700, "Big heading low on the page", h=40))
    lines += column(100, 1000, y + 680, [["tail a", "tail b"]])[0]
    blocks = group_lines(lines, W, H)
    assert [(b.type, b.text) for b in blocks] == [
        ("title", "Document Title"),
        ("text", "body a body b body c"),
        ("sub_title", "Section heading"),
        ("text", "more a more b"),
        ("sub_title", "Tight heading"),
        ("text", "close a close b"),
        ("sub_title", "Big heading low on the page"),  # big, but not at the top
        ("text", "tail a tail b"),
    ]


def test_large_type_running_text_is_not_a_heading() -> None:
    body, _ = column(100, 1000, 300, [["small a", "small b", "small c", "small d", "small e"]])
    big = [line(100, 600 + i * 60, 1000, f"big {i}", h=48) for i in range(5)]
    blocks = group_lines(body + big, W, H)
    assert [b.type for b in blocks] == ["text", "text"]


def test_header_and_footer_in_the_margins() -> None:
    lines = [line(100, 40, 400, "Running head"), line(580, 1620, 610, "7")]
    lines += column(100, 1000, 200, [["body one", "body two"]])[0]
    blocks = group_lines(lines, W, H)
    assert [(b.type, b.text) for b in blocks] == [
        ("header", "Running head"),
        ("text", "body one body two"),
        ("footer", "7"),
    ]


def test_text_cropped_tight_to_the_edge_is_not_a_header() -> None:
    # A small image (a cropped paragraph): its first line sits at the top edge but is body.
    lines, _ = column(5, 600, 5, [["first line", "second line", "third line"]])
    blocks = group_lines(lines, 620, 120)
    assert [(b.type, b.text) for b in blocks] == [("text", "first line second line third line")]


def test_list_items_one_per_line_with_continuations() -> None:
    intro, y = column(100, 1000, 200, [["Things to bring:"]], para_gap=0)
    items = [
        line(100, y, 900, "• a warm coat"),
        line(100, y + STEP, 900, "• a long scarf that does not"),
        line(130, y + 2 * STEP, 900, "fit on one line"),
        line(100, y + 3 * STEP, 900, "- gloves"),
    ]
    blocks = group_lines(intro + items, W, H)
    assert [(b.type, b.text) for b in blocks] == [
        ("text", "Things to bring:"),
        ("list", "• a warm coat\n• a long scarf that does not fit on one line\n- gloves"),
    ]


def test_numbered_list_detected() -> None:
    lines, _ = column(100, 900, 200, [["1. first step", "2. second step", "10) tenth step"]])
    (block,) = group_lines(lines, W, H)
    assert block.type == "list"
    assert block.text.split("\n") == ["1. first step", "2. second step", "10) tenth step"]


def test_line_end_hyphenation_is_undone_only_for_soft_breaks() -> None:
    lines, _ = column(100, 900, 200, [["the docu-", "ment by Jean-", "Paul is well-", "known"]])
    (block,) = group_lines(lines, W, H)
    assert block.text == "the document by Jean- Paul is wellknown"


def test_detector_split_row_is_kept_in_left_to_right_order() -> None:
    lines = [
        line(520, 200, 900, "second half"),
        line(100, 202, 480, "first half"),
        line(100, 200 + STEP, 900, "next line"),
    ]
    assert texts(group_lines(lines, W, H)) == ["first half second half next line"]


def rotated_quad(x: float, y: float, w: float, h: float, deg: float) -> list[tuple[float, float]]:
    """Corners (tl, tr, br, bl) of a w x h box rotated by ``deg`` around its top-left."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    pts = [(0, 0), (w, 0), (w, h), (0, h)]
    return [(x + px * c - py * s, y + px * s + py * c) for px, py in pts]


def test_from_quad_measures_text_height_across_the_skew() -> None:
    ln = Line.from_quad(rotated_quad(100, 100, 900, LH, 2.0), "skewed", 0.8)
    box_h = ln.box[3] - ln.box[1]
    assert box_h > 2 * LH  # the axis-aligned box is inflated by the 2 degree skew...
    assert ln.h == pytest.approx(LH, rel=1e-6)  # ...the text height is not
    assert ln.box[0] == pytest.approx(100 - LH * math.sin(math.radians(2.0)))


def test_skewed_scan_long_lines_are_not_headings_and_stay_in_order() -> None:
    # Long and short lines on a page rotated by 2 degrees: axis-aligned boxes of the long
    # lines are ~2x taller than the short ones and overlap their neighbours.
    widths = [900, 300, 900, 900, 250, 900]
    lines = [
        Line.from_quad(rotated_quad(100, 200 + i * STEP, w, LH, 2.0), f"line {i}", 0.9)
        for i, w in enumerate(widths)
    ]
    blocks = group_lines(list(reversed(lines)), W, H)
    assert all(b.type == "text" for b in blocks)
    assert " ".join(texts(blocks)) == " ".join(f"line {i}" for i in range(len(widths)))


def test_noisy_box_heights_do_not_fragment_a_paragraph() -> None:
    # Real detector boxes of one font size differ by up to ~20% (descenders, a short last
    # line); none of that may split the paragraph or promote a line to a heading.
    heights = [20, 23, 24, 20, 21, 24]
    lines = [line(100, 200 + i * STEP, 1000 if i < 5 else 220, f"w{i}", h=hh)
             for i, hh in enumerate(heights)]  # fmt: skip
    blocks = group_lines(lines, W, H)
    assert [(b.type, b.text) for b in blocks] == [("text", "w0 w1 w2 w3 w4 w5")]


def test_narrow_gutter_crossed_by_title_and_page_number_still_splits_columns() -> None:
    # A 7 px gutter (a LaTeX page at 144 dpi) hidden from the plain projection by a centred
    # title and page number; the right column's baselines sit half a row lower, so the
    # page's horizontal gaps fall between single lines.
    title = line(300, 100, 890, "A Two Column Example", h=40)
    date = line(540, 150, 650, "2025-06-18")
    left, _ = column(100, 590, 200, [[f"left line {i} of running text" for i in range(8)]])
    # The right column is headings, a formula and a list as much as running text.
    right = [
        line(597, 216 + i * STEP, x1, f"right line {i}")
        for i, x1 in enumerate((1090, 1070, 900, 820, 1080, 760, 1060, 880))
    ]
    page_no = line(585, 1600, 605, "1")
    blocks = group_lines([title, date, *right, *left, page_no], W, H)
    flat = " ".join(texts(blocks))
    assert flat.index("A Two Column") < flat.index("left line 0") < flat.index("left line 7")
    assert flat.index("left line 7") < flat.index("right line 0") < flat.index("right line 7")
    assert flat.index("right line 7") < flat.rindex("1")


def test_form_margin_notes_stay_on_the_rows_beside_them() -> None:
    # A form's section name and a note in small type down its left margin, beside numbered
    # rows of cells; the note's line pitch is not the rows', so few baselines match.
    lines = []
    for i, n in enumerate(range(7, 15)):
        y = 300 + i * STEP
        lines += [
            line(230, y, 260, f"{n}"),
            line(290, y, 800, f"Line {n} description of the amount"),
            line(950, y, 980, f"{n}"),
        ]
    margin = [line(60, 303, 190, "Income")] + [
        line(60, 300 + 2 * STEP + 4 + 19 * k, 190, f"note {k} words", h=16) for k in range(5)
    ]
    flat = " ".join(re.sub(r"<[^>]+>", " ", t) for t in texts(group_lines(margin + lines, W, H)))
    flat = " ".join(flat.split())
    rows = [flat.find(f"{n} Line {n} description of the amount {n}") for n in range(7, 15)]
    assert all(p >= 0 for p in rows) and rows == sorted(rows), flat
    assert "Income 7 Line 7" in flat
    assert "note 0 words 9 Line 9" in flat


def test_column_heading_beside_the_other_columns_first_line_starts_its_column() -> None:
    """A left column's heading on the same row as the right column's first line (a paper's
    "Abstract"): that row alone pairs up like cells, but it starts the columns below it."""
    title = line(100, 100, 1090, "A Title Across The Page", h=40)
    # Centred author and affiliation lines, the last one narrow: too many crossing lines for
    # a crossed gutter, and the last one's band pairs with the heading row far below it.
    header = [line(300, 160 + i * STEP, 990, f"Author line {i}") for i in range(4)]
    header.append(line(460, 160 + 4 * STEP, 760, "{a,b,c}@example.edu"))
    head = line(100, 420, 230, "Abstract")
    first_right = line(630, 420, 1090, "and is used for the application logic of")
    left, _ = column(100, 560, 420 + STEP, [[f"left line {i} of running text" for i in range(9)]])
    right, _ = column(
        630, 1090, 420 + STEP, [[f"right line {i} of running text" for i in range(9)]]
    )
    blocks = group_lines([title, *header, first_right, head, *right, *left], W, H)
    text = " | ".join(texts(blocks))
    assert text.index("Abstract") < text.index("left line 0") < text.index("left line 8")
    assert text.index("left line 8") < text.index("and is used for") < text.index("right line 0")
    assert "Abstract and is used" not in text


def test_heading_over_the_right_block_only_is_read_with_it() -> None:
    """An invoice's title above its right-hand block, beside a left-hand address block that
    starts lower: left block, then the title with the block it heads."""
    heading = line(520, 100, 900, "Amazing Services Invoice", h=34)
    # Rows on different pitches: the two blocks do not line up row by row.
    right = [line(520, 140 + i * STEP, 1090, f"summary row {i} value") for i in range(6)]
    left = [line(100, 190 + i * 41, 330, f"address {i}", h=20) for i in range(4)]
    blocks = group_lines([heading, *right, *left], W, H)
    text = " | ".join(texts(blocks))
    assert text.index("address 3") < text.index("Amazing Services Invoice")
    assert text.index("Amazing Services Invoice") < text.index("summary row 0")
