"""Running text: lines of one flow section joined into paragraphs and lists."""

from __future__ import annotations

import itertools
import re
import statistics

from ..document import Block
from .lines import Line, same_row, union, x_overlap

# Text-height change that ends a paragraph on its own. PP-OCRv6 box heights of one font size
# vary by up to ~20% between lines of a paragraph (measured on 9-16 pt renders: ascenders,
# descenders, short one-word last lines), so a tighter limit cut paragraphs into fragments
# that then looked like headings. Headings between 1.2x and 1.3x are still found when they
# stand apart by a paragraph gap, which headings almost always do.
SIZE_JUMP = 1.3

# A line shorter than this share of its column ends its paragraph (in columns at least
# SHORT_LINE_MIN_WIDTH text heights wide, where running text fills most of the width).
SHORT_LINE = 0.5
SHORT_LINE_MIN_WIDTH = 12

LIST_MARKER = re.compile(r"^\s*(?:[•●▪◦‣∙·*\-–—]|\(?\d{1,3}[.)]|\(?[a-z]\))\s+\S")


def is_list_item(text: str) -> bool:
    return bool(LIST_MARKER.match(text))


def vgap(a: Line, b: Line) -> float:
    """Whitespace between two lines of one column, from centres and text heights.

    Using centres and quad heights instead of box edges makes the gap independent of skew:
    on a rotated scan, neighbouring boxes overlap although their text does not.
    """
    return (b.cy - a.cy) - (a.h + b.h) / 2


def paragraph_gap_limit(sections: list[list[Line]], h_med: float) -> float:
    """Largest gap that still continues a paragraph.

    Paragraph spacing is only meaningful relative to the document's own line spacing:
    take a typical gap between consecutive lines (mostly within-paragraph gaps) and allow a
    bit less than half a line on top; double-spaced text then still groups correctly.
    """
    gaps = [
        vgap(a, b)
        for sec in sections
        for a, b in itertools.pairwise(sec)
        if b.cy > a.cy and x_overlap(a.box, b.box) > 0
    ]
    # Lower quartile, not median: on a short page most gaps may be paragraph gaps (a heading,
    # a running head, two short paragraphs), and the median would then swallow them.
    typical = max(0.0, sorted(gaps)[len(gaps) // 4]) if gaps else 0.0
    return typical + 0.45 * h_med


def paragraphs(section: list[Line], gap_limit: float, h_med: float) -> list[list[Line]]:
    """Split one flow section (lines in reading order) into paragraphs."""
    width = max(ln.box[2] for ln in section) - min(ln.box[0] for ln in section)
    paras: list[list[Line]] = []
    for ln in section:
        if paras and _continues(paras[-1], ln, gap_limit, h_med, width):
            paras[-1].append(ln)
        else:
            paras.append([ln])
    return paras


def _continues(para: list[Line], ln: Line, gap_limit: float, h_med: float, width: float) -> bool:
    prev = para[-1]
    if same_row(ln, prev):
        # A line the detector cut at a wide word gap: keep it together if the gap is modest.
        return ln.box[0] - prev.box[2] < 3 * h_med
    if ln.cy < prev.cy or vgap(prev, ln) > gap_limit:
        return False
    if width >= SHORT_LINE_MIN_WIDTH * h_med and _row_end(para) - prev_row_start(para) < (
        SHORT_LINE * width
    ):
        # Running text fills its column; a line ending before half of it ends its paragraph:
        # a salutation, a sign-off, an address line or a signature stands alone.
        return False
    if (
        ln.w < SHORT_LINE * width
        and ln.text.rstrip().endswith(",")
        and prev.text.rstrip().endswith((".", "!", "?"))
    ):
        return False  # "Yours sincerely," after the body's last sentence: a sign-off
    if x_overlap(union([x.box for x in para]), ln.box) <= 0:
        return False
    # A change of text size separates a heading from the body that follows it.
    para_h = statistics.median(x.h for x in para)
    if max(ln.h, para_h) / min(ln.h, para_h) >= SIZE_JUMP:
        return False
    # A bullet starts a new block after prose, and another item inside a list.
    return not (is_list_item(ln.text) and not is_list_item(para[0].text))


def _row_end(para: list[Line]) -> float:
    """Right edge of the paragraph's last visual row (a row may hold several boxes)."""
    last = para[-1]
    return max(ln.box[2] for ln in para if same_row(ln, last))


def prev_row_start(para: list[Line]) -> float:
    last = para[-1]
    return min(ln.box[0] for ln in para if same_row(ln, last))


def join_lines(texts: list[str]) -> str:
    """Join lines with spaces, undoing end-of-line hyphenation ("docu-" + "ment").

    Only a hyphen after a letter followed by a lowercase letter is removed: in print that is
    almost always a soft break, while "Jean-" + "Paul" keeps its hyphen (and its case).
    """
    out = ""
    for t in (t.strip() for t in texts):
        if not out:
            out = t
        elif len(out) > 1 and out.endswith("-") and out[-2].isalpha() and t[:1].islower():
            out = out[:-1] + t
        else:
            out = f"{out} {t}"
    return out


def _indent_levels(starts: list[float], h: float) -> dict[int, int]:
    """Nesting level of each list-item start x: distinct indents at least a text height apart."""
    levels: dict[int, int] = {}
    anchors: list[float] = []
    for x in sorted(starts):
        if not anchors or x - anchors[-1] >= h:
            anchors.append(x)
        levels[round(x)] = len(anchors) - 1
    return levels


def paragraph_block(lines: list[Line]) -> Block:
    """A ``text`` block, or a ``list`` block (one item per line of text) after a marker."""
    if is_list_item(lines[0].text):
        # One item per marker; continuation lines (no marker) belong to the item above.
        # Items indented further than the first are nested: two spaces per level.
        h = statistics.median(ln.h for ln in lines)
        starts = [ln.box[0] for ln in lines if is_list_item(ln.text)]
        levels = _indent_levels(starts, h)
        items: list[list[str]] = []
        depth: list[int] = []
        for ln in lines:
            if is_list_item(ln.text) or not items:
                items.append([ln.text])
                depth.append(levels.get(round(ln.box[0]), 0))
            else:
                items[-1].append(ln.text)
        text = "\n".join("  " * d + join_lines(it) for d, it in zip(depth, items, strict=True))
        btype = "list"
    else:
        text = join_lines([ln.text for ln in lines])
        btype = "text"
    return Block(
        type=btype,
        bbox=union([ln.box for ln in lines]),
        text=text,
        score=statistics.fmean(ln.score for ln in lines),
    )
