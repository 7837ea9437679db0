"""Turn OCR line detections (or text-layer lines) into typed blocks in reading order.

Line engines (RapidOCR) return isolated text lines with boxes; readers want paragraphs,
rows and tables in the order a person reads them. The steps, one module each:

1. :mod:`.lines` levels a skewed page (rows of a receipt photographed at 2 degrees must
   still be rows) and groups lines into visual rows.
2. :mod:`.order` finds the reading order: a recursive XY-cut that cuts columns only where
   there are real columns (:mod:`.flows` says which gutters separate text flows), so a
   receipt's ``label   amount`` rows and a form's rows stay rows.
3. :mod:`.paragraphs` joins running text into paragraphs and list items;
   :mod:`.tables` turns rows of cells into a table block or one line per row.
4. :mod:`.types` names titles, sub-titles, running heads and page numbers.

Everything is deterministic and works in page pixels; no model is involved.
"""

from __future__ import annotations

import statistics

from ..document import Block
from .lines import (
    Box,
    Line,
    deskewed,
    group_rows,
    page_skew,
    split_across_gutters,
    union,
)
from .order import reading_order
from .paragraphs import paragraph_block, paragraph_gap_limit, paragraphs
from .tables import rows_block
from .types import assign_types

__all__ = ["Box", "Line", "group_lines", "plain_blocks"]


def group_lines(lines: list[Line], page_width: int, page_height: int) -> list[Block]:
    """Group OCR lines into typed blocks (paragraphs, titles, lists, tables) in reading order."""
    lines = [ln for ln in lines if ln.text.strip()]
    if not lines:
        return []
    lines = split_across_gutters(lines)
    h_med = statistics.median(ln.h for ln in lines)
    level = deskewed(lines, page_skew(lines), (page_width / 2, page_height / 2))
    original = {id(lv): ln for lv, ln in zip(level, lines, strict=True)}
    sections = reading_order(level, h_med)
    flows = [sec.lines for sec in sections if sec.kind == "flow"]
    gap_limit = paragraph_gap_limit(flows, h_med)
    blocks: list[Block] = []
    groups: list[list[Line]] = []
    for sec in sections:
        parts = [sec.lines] if sec.kind == "rows" else paragraphs(sec.lines, gap_limit, h_med)
        for part in parts:
            block = rows_block(sec.rows, h_med) if sec.kind == "rows" else paragraph_block(part)
            orig = [original[id(ln)] for ln in part]
            block.bbox = union([ln.box for ln in orig])  # page pixels, not the levelled frame
            block.format = "plain"
            block.size = statistics.median(ln.h for ln in orig)
            blocks.append(block)
            groups.append(orig)
    assign_types(blocks, groups, h_med, page_height)
    return blocks


def plain_blocks(lines: list[Line]) -> list[Block]:
    """One text block per visual row, top to bottom: the fallback when layout fails."""
    return [
        Block(
            type="text",
            bbox=union([ln.box for ln in row]),
            text=" ".join(ln.text for ln in row),
            score=statistics.fmean(ln.score for ln in row),
            format="plain",
        )
        for row in group_rows([ln for ln in lines if ln.text.strip()])
    ]
