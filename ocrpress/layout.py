"""Turn OCR line detections into typed blocks in reading order.

The line engines (RapidOCR) return isolated text lines with boxes; readers want paragraphs in
the order a person reads them. The approach is a variant of the classic recursive XY-cut:

1. **Reading order.** A region is cut at a vertical whitespace *gutter* (an x-range that no
   line touches) into columns, read left to right. A region without a gutter is cut into
   horizontal *bands* at every y-range that no line touches; consecutive bands are then
   re-merged while their union still has a gutter. The re-merge is what keeps a two-column
   page column-major: cutting at every gap alone would interleave the columns paragraph by
   paragraph wherever their paragraph gaps happen to line up, while a full-width title (or
   footer) breaks the gutter and so stays its own band, read before (or after) the columns.
2. **Paragraphs.** Consecutive lines of one column are joined while they are close
   vertically (relative to the page's typical line spacing), overlap horizontally and have
   a similar text height.
3. **Types.** Text noticeably taller than the page's median line is a title or sub_title;
   small isolated lines in the top or bottom margin are header/footer; lines starting with
   bullets or enumerators form list blocks.

Everything is deterministic and works in page pixels; no model is involved.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .document import Block

Box = tuple[float, float, float, float]

# Ratios against the page's median line height. Font sizes of body text vs headings in
# typical documents: 10-12 pt body, 14-16 pt section headings (>= 1.2x), 18+ pt titles (1.5x).
TITLE_RATIO = 1.5
SUB_TITLE_RATIO = 1.2
# Text-height change that ends a paragraph on its own. PP-OCRv6 box heights of one font size
# vary by up to ~20% between lines of a paragraph (measured on 9-16 pt renders: ascenders,
# descenders, short one-word last lines), so a tighter limit cut paragraphs into fragments
# that then looked like headings. Headings between 1.2x and 1.3x are still found when they
# stand apart by a paragraph gap, which headings almost always do.
SIZE_JUMP = 1.3
# A gutter between columns is at least this many line heights wide. Real gutters are
# 1.5-3 line heights; word gaps inside a detected line never reach the projection at all.
MIN_GUTTER = 1.0
# Header/footer zones as a fraction of page height: page margins are ~7% of an A4 page,
# running heads and page numbers sit inside them.
MARGIN_ZONE = 0.06

_LIST_MARKER = re.compile(r"^\s*(?:[•●▪◦‣∙·*\-–—]|\(?\d{1,3}[.)]|\(?[a-z]\))\s+\S")


@dataclass(frozen=True)
class Line:
    """One detected text line: axis-aligned ``box`` (x0, y0, x1, y1) in page pixels.

    ``height`` is the text height measured across the line (from its rotated quad); on a
    skewed scan the axis-aligned box of a long line is much taller than its text, which
    would otherwise make every long line look like a heading.
    """

    box: Box
    text: str
    score: float
    height: float | None = None

    @property
    def h(self) -> float:
        return self.height if self.height is not None else self.box[3] - self.box[1]

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @classmethod
    def from_quad(cls, quad: Sequence[Sequence[float]], text: str, score: float) -> Line:
        """Build from a 4-point quad (top-left, top-right, bottom-right, bottom-left)."""
        xs = [float(p[0]) for p in quad]
        ys = [float(p[1]) for p in quad]
        box = (min(xs), min(ys), max(xs), max(ys))
        height: float | None = None
        if len(quad) == 4:
            tl, tr, br, bl = quad
            height = (math.dist(tl, bl) + math.dist(tr, br)) / 2
            if height <= 0:
                height = None
        return cls(box=box, text=text, score=float(score), height=height)


def group_lines(lines: list[Line], page_width: int, page_height: int) -> list[Block]:
    """Group OCR lines into typed blocks (paragraphs, titles, lists...) in reading order."""
    lines = [ln for ln in lines if ln.text.strip()]
    if not lines:
        return []
    h_med = statistics.median(ln.h for ln in lines)
    sections, _ = _order(lines, MIN_GUTTER * h_med)
    gap_limit = _paragraph_gap_limit(sections, h_med)
    groups: list[list[Line]] = []
    for section in sections:
        groups.extend(_paragraphs(section, gap_limit, h_med))
    blocks = [_make_block(g) for g in groups]
    _assign_types(blocks, groups, h_med, page_height)
    return blocks


# --------------------------------------------------------------------------- reading order


def _gutters(lines: Sequence[Line], min_width: float) -> list[tuple[float, float]]:
    """Interior x-ranges at least ``min_width`` wide that no line's box touches."""
    spans = sorted((ln.box[0], ln.box[2]) for ln in lines)
    out: list[tuple[float, float]] = []
    reach = spans[0][1]
    for x0, x1 in spans[1:]:
        if x0 - reach >= min_width:
            out.append((reach, x0))
        reach = max(reach, x1)
    return out


def _bands(lines: Sequence[Line]) -> list[list[Line]]:
    """Split into horizontal bands at every y-range that no line's box touches."""
    ordered = sorted(lines, key=lambda ln: (ln.box[1], ln.box[0]))
    bands: list[list[Line]] = [[ordered[0]]]
    reach = ordered[0].box[3]
    for ln in ordered[1:]:
        if ln.box[1] > reach:
            bands.append([ln])
        else:
            bands[-1].append(ln)
        reach = max(reach, ln.box[3])
    return bands


def _rows(lines: Sequence[Line]) -> list[Line]:
    """Order lines of one gutter-free, gap-free region: by row, then left to right.

    Two boxes belong to one row when their centres are within half a text height; this
    keeps a line that the detector split at a wide word gap in left-to-right order.
    """
    ordered = sorted(lines, key=lambda ln: ln.cy)
    rows: list[list[Line]] = []
    for ln in ordered:
        if rows and abs(ln.cy - rows[-1][0].cy) <= 0.5 * min(ln.h, rows[-1][0].h):
            rows[-1].append(ln)
        else:
            rows.append([ln])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: ln.box[0])]


def _single_row(ordered: list[Line]) -> bool:
    """True when all lines (ordered by :func:`_rows`) share the first line's row."""
    first = ordered[0]
    return all(abs(ln.cy - first.cy) <= 0.5 * min(ln.h, first.h) for ln in ordered)


def _order(lines: list[Line], min_gutter: float) -> tuple[list[list[Line]], bool]:
    """Return (sections, multi_column) for a region.

    A section is a run of lines in reading order inside which a paragraph may continue;
    section boundaries fall where reading jumps (to the next column, or past a column group).
    """
    rows = _rows(lines)
    if _single_row(rows):
        # One visual row cut by wide gaps (a detector split, "Name      Value"): reading it
        # left to right is right, and it is not a column layout, so paragraphs may continue.
        return [rows], False
    gutters = _gutters(lines, min_gutter)
    if gutters:
        # Cut at every gutter: three columns read left, middle, right.
        cuts = [(a + b) / 2 for a, b in gutters]
        columns: list[list[Line]] = [[] for _ in range(len(cuts) + 1)]
        for ln in lines:
            centre = (ln.box[0] + ln.box[2]) / 2
            columns[sum(centre > c for c in cuts)].append(ln)
        sections: list[list[Line]] = []
        for col in columns:
            if col:
                sections.extend(_order(col, min_gutter)[0])
        return sections, True

    bands = _bands(lines)
    if len(bands) == 1:
        return [rows], False

    # Re-merge neighbouring bands while their union keeps a gutter (see module docstring).
    groups: list[list[Line]] = []
    current = bands[0]
    for band in bands[1:]:
        if _gutters(current + band, min_gutter):
            current = current + band
        else:
            groups.append(current)
            current = band
    groups.append(current)

    out: list[list[Line]] = []
    prev_multi = True  # so the first single-column group opens a new section
    for group in groups:
        sub, multi = _order(group, min_gutter)
        if not multi and not prev_multi:
            out[-1].extend(sub[0])  # single-column text continues across bands
        else:
            out.extend(sub)
        prev_multi = multi
    return out, False


# ------------------------------------------------------------------------------ paragraphs


def _vgap(a: Line, b: Line) -> float:
    """Whitespace between two lines of one column, from centres and text heights.

    Using centres and quad heights instead of box edges makes the gap independent of skew:
    on a rotated scan, neighbouring boxes overlap although their text does not.
    """
    return (b.cy - a.cy) - (a.h + b.h) / 2


def _paragraph_gap_limit(sections: list[list[Line]], h_med: float) -> float:
    """Largest gap that still continues a paragraph.

    Paragraph spacing is only meaningful relative to the document's own line spacing:
    take the median gap between consecutive lines (mostly within-paragraph gaps) and allow
    a bit less than half a line on top; double-spaced text then still groups correctly.
    """
    gaps = [
        _vgap(a, b)
        for sec in sections
        for a, b in itertools.pairwise(sec)
        if b.cy > a.cy and _x_overlap(a.box, b.box) > 0
    ]
    # Lower quartile, not median: on a short page most gaps may be paragraph gaps (a heading,
    # a running head, two short paragraphs), and the median would then swallow them.
    typical = max(0.0, sorted(gaps)[len(gaps) // 4]) if gaps else 0.0
    return typical + 0.45 * h_med


def _x_overlap(a: Box, b: Box) -> float:
    return min(a[2], b[2]) - max(a[0], b[0])


def _is_list_item(text: str) -> bool:
    return bool(_LIST_MARKER.match(text))


def _paragraphs(section: list[Line], gap_limit: float, h_med: float) -> list[list[Line]]:
    """Split one section (lines in reading order) into paragraphs."""
    paras: list[list[Line]] = []
    for ln in section:
        if paras and _continues(paras[-1], ln, gap_limit, h_med):
            paras[-1].append(ln)
        else:
            paras.append([ln])
    return paras


def _continues(para: list[Line], ln: Line, gap_limit: float, h_med: float) -> bool:
    prev = para[-1]
    same_row = abs(ln.cy - prev.cy) <= 0.5 * min(ln.h, prev.h)
    if same_row:
        # A line the detector cut at a wide word gap: keep it together if the gap is modest.
        return ln.box[0] - prev.box[2] < 3 * h_med
    if ln.cy < prev.cy or _vgap(prev, ln) > gap_limit:
        return False
    para_box = _union([x.box for x in para])
    if _x_overlap(para_box, ln.box) <= 0:
        return False
    # A change of text size separates a heading from the body that follows it.
    para_h = statistics.median(x.h for x in para)
    if max(ln.h, para_h) / min(ln.h, para_h) >= SIZE_JUMP:
        return False
    # A bullet starts a new block after prose, and another item inside a list.
    return not (_is_list_item(ln.text) and not _is_list_item(para[0].text))


# ----------------------------------------------------------------------------- blocks


def _union(boxes: Sequence[Box]) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _join(texts: list[str]) -> str:
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


def _make_block(lines: list[Line]) -> Block:
    if _is_list_item(lines[0].text):
        # One item per marker; continuation lines (no marker) belong to the item above.
        items: list[list[str]] = []
        for ln in lines:
            if _is_list_item(ln.text) or not items:
                items.append([ln.text])
            else:
                items[-1].append(ln.text)
        text = "\n".join(_join(it) for it in items)
        btype = "list"
    else:
        text = _join([ln.text for ln in lines])
        btype = "text"
    return Block(
        type=btype,
        bbox=_union([ln.box for ln in lines]),
        text=text,
        score=statistics.fmean(ln.score for ln in lines),
    )


def _assign_types(
    blocks: list[Block], groups: list[list[Line]], h_med: float, page_height: int
) -> None:
    """Set title/sub_title/header/footer on blocks (in place); others stay text or list."""
    for i, (block, lines) in enumerate(zip(blocks, groups, strict=True)):
        ratio = statistics.median(ln.h for ln in lines) / h_med
        others = [b for j, b in enumerate(blocks) if j != i]
        if len(lines) <= 2 and ratio < SUB_TITLE_RATIO and others:
            # Running heads and page numbers: small, in the margin, and clearly apart from
            # the body (an image cropped tight to its text must not lose its first line).
            top_rest = min(b.bbox[1] for b in others)
            bottom_rest = max(b.bbox[3] for b in others)
            if block.bbox[3] <= MARGIN_ZONE * page_height and top_rest - block.bbox[3] >= h_med:
                block.type = "header"
                continue
            if (
                block.bbox[1] >= (1 - MARGIN_ZONE) * page_height
                and block.bbox[1] - bottom_rest >= h_med
            ):
                block.type = "footer"
                continue
        if block.type == "list" or len(lines) > 3:
            continue  # large-type running text is not a heading
        if ratio >= TITLE_RATIO:
            near_top = block.bbox[1] < 0.25 * page_height or all(
                b.type in ("header", "title") for b in blocks[:i]
            )
            block.type = "title" if near_top else "sub_title"
        elif ratio >= SUB_TITLE_RATIO:
            block.type = "sub_title"
