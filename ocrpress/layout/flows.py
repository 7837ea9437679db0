"""Whether the two sides of a gutter are separate text flows, and what running text is.

Used by :mod:`.order` to decide where a gutter is a column's edge and where it is only the
gap between a row's cells.
"""

from __future__ import annotations

import bisect
import itertools
import statistics

from .lines import Line, group_rows

# Running text: its lines are at least this many text heights long (about 12 characters)...
PROSE_MIN_LENGTH = 6.0
# ...and most of them fill at least this share of their column's width (paragraph ends and
# headings are the exceptions, hence "most").
PROSE_FILL = 0.6
# Two sides whose lines pair up row by row at least this often are one table-like region.
ROW_PAIRING = 0.5
# Two sides of cell rows are one table when nearly all their rows line up.
TABLE_PAIRING = 0.9
# Boxes on one row this many text heights apart are separate cells (a detector splits
# running text only at gaps well over a word space, ~0.3 text heights).
CELL_GAP = 1.0
# Cells of one row share a baseline: their centres lie within this many text heights.
ALIGN = 0.25
# A side narrower than this share of the other's is labels down its margin, not a block.
MARGIN_SIDE = 0.34
# A block beside another has at least this many rows.
MIN_BLOCK_ROWS = 3
# A column, or a block beside one, has at least this many lines.
MIN_COLUMN_LINES = 4


def span(row: list[Line]) -> float:
    """How far a row reaches, first cell to last."""
    return row[-1].box[2] - row[0].box[0]


def has_cell_gap(row: list[Line], h_med: float) -> bool:
    """A gap on the row wider than a detector leaves inside running text."""
    return any(b.box[0] - a.box[2] >= CELL_GAP * h_med for a, b in itertools.pairwise(row))


def separate_flows(
    left: list[Line], right: list[Line], h_med: float, narrow: bool = False
) -> str | None:
    """How ``left`` and ``right`` (either side of a gutter) are separate, if they are.

    ``"prose"``: separate columns: both running text, running text beside a table, or
    (across a ``narrow`` gutter) running text beside headings, formulas and lists;
    ``"blocks"``: their lines do not share baselines row by row (two blocks side by side,
    two tables whose rows drift apart); None: one region of rows read across the gutter (a
    form's labels, line numbers and notes beside its rows).
    """
    rows_l, rows_r = group_rows(left), group_rows(right)
    if len(rows_l) < 2 or len(rows_r) < 2:
        return None  # a column has several lines; one line beside a block is a row cell
    prose_l, prose_r = is_prose(rows_l), is_prose(rows_r)
    if (prose_l and prose_r) or (
        # A column of running text beside one of headings, formulas and lists (text
        # lines that need not fill their column, unlike the short cells of a table row),
        # across a gutter too narrow to be the gap between a row's cells.
        narrow
        and (prose_l or prose_r)
        and all(is_prose(r, fill=0.0) and mostly_single(r, h_med) for r in (rows_l, rows_r))
    ):
        return "prose"
    if (is_column(rows_l, prose_l) and not mostly_single(rows_r, h_med)) or (
        is_column(rows_r, prose_r) and not mostly_single(rows_l, h_med)
    ):
        return "prose"  # running text beside a table: the text never runs into its cells
    small, big = (left, right) if len(rows_l) <= len(rows_r) else (right, left)
    paired = _paired(small, big)
    if (
        min(len(rows_l), len(rows_r)) >= MIN_COLUMN_LINES
        and not (mostly_single(rows_l, h_med) or mostly_single(rows_r, h_med))
        and paired < TABLE_PAIRING * len(small)
    ):
        # Two tables side by side, each with its own rows of cells: one table's rows
        # would line up across the gutter nearly all the way down.
        return "blocks"
    if paired >= ROW_PAIRING * len(small):
        return None
    w_l, w_r = _width(left), _width(right)
    if (
        min(w_l, w_r) < MARGIN_SIDE * max(w_l, w_r)
        or min(len(rows_l), len(rows_r)) < MIN_BLOCK_ROWS
    ):
        # Labels down the margin of a form's rows (section names, notes) belong to the
        # rows they stand beside; blocks side by side are of a size and a few rows long
        # (two short lines beside two others on a low-resolution scan are noise).
        return None
    return "blocks"


def _width(lines: list[Line]) -> float:
    return max(ln.box[2] for ln in lines) - min(ln.box[0] for ln in lines)


def _paired(small: list[Line], big: list[Line]) -> int:
    """How many of ``small`` share a baseline with a line of ``big``.

    Cells of a row share one (centres within a quarter text height); side-by-side blocks
    rarely do.
    """
    by_y = sorted(big, key=lambda ln: ln.cy)
    centres = [ln.cy for ln in by_y]
    paired = 0
    for a in small:
        lo = bisect.bisect_left(centres, a.cy - ALIGN * a.h)
        hi = bisect.bisect_right(centres, a.cy + ALIGN * a.h)
        paired += any(abs(a.cy - b.cy) <= ALIGN * min(a.h, b.h) for b in by_y[lo:hi])
    return paired


def is_column(rows: list[list[Line]], prose: bool) -> bool:
    """A column of running text: prose with several lines, each a good part of a sentence.

    Narrow notes of a few words a line beside a form's rows (``Boxes checked / on 6a
    and 6b``) are read with the rows they stand beside.
    """
    if not prose or len(rows) < MIN_COLUMN_LINES:
        return False
    h = statistics.median(ln.h for row in rows for ln in row)
    return statistics.median(span(row) for row in rows) >= 2 * PROSE_MIN_LENGTH * h


def mostly_single(rows: list[list[Line]], h_med: float) -> bool:
    """Most rows are one stretch of text, not cells apart (a table's or a form's rows)."""
    return sum(1 for row in rows if not has_cell_gap(row, h_med)) * 2 > len(rows)


def is_prose(rows: list[list[Line]], fill: float = PROSE_FILL) -> bool:
    """Running text: rows several text heights long that mostly fill the column's width."""
    lines = [ln for row in rows for ln in row]
    x0 = min(ln.box[0] for ln in lines)
    x1 = max(ln.box[2] for ln in lines)
    width = max(1.0, x1 - x0)
    h = statistics.median(ln.h for ln in lines)
    # A row of cells far apart (a form's ``7  Wages ...  7``) is not a line of text however
    # far it reaches.
    spans = [span(row) for row in rows if not has_cell_gap(row, h)]
    long_rows = sum(1 for s in spans if s >= PROSE_MIN_LENGTH * h and s >= fill * width)
    return long_rows * 2 > len(rows)
