"""Reading order: a recursive XY-cut that cuts columns only where there are real columns.

A region is cut at a vertical whitespace *gutter* into columns read left to right, but only
when the two sides really are separate text flows: either their lines do not line up row by
row (two independent blocks side by side, e.g. an address beside an invoice summary), or
both sides are running text (lines that fill their column, several text heights long). A
gutter between lines that pair up row by row with short cells on at least one side is the
gap inside a *row* (a receipt's ``label   amount``, a form's ``field   value``, a table's
cells): such a region is read row by row. Without a usable gutter a region is cut into
horizontal bands at every y-range no line touches; consecutive bands are re-merged while
their union still has a column gutter, so a two-column page stays column-major and a
full-width title, figure caption or footer stays between the columns' bands where it sits.
A gutter that only a few full-width lines cross (a title and a page number over a narrow
gutter) is found directly: the crossing lines cut the region into stretches that are split
into columns on their own. Rows of cells far apart never count as running text however far
they reach, so a form's rows stay rows; :mod:`.flows` holds the tests.

Each resulting :class:`Section` is either ``flow`` (running text, one line per row, in which
paragraphs are found) or ``rows`` (cells on a row belong together: kept as one line each, or
a table when the cells form a grid).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .flows import (
    CELL_GAP,
    MIN_COLUMN_LINES,
    PROSE_MIN_LENGTH,
    has_cell_gap,
    separate_flows,
    span,
)
from .lines import Line, group_rows, same_row

# A gutter between columns is at least this many text heights wide. Real gutters are
# 1.5-3 line heights; word gaps inside a detected line never reach the projection at all.
MIN_GUTTER = 0.25
# A horizontal gap this many text heights tall across a whole region separates its bands
# more strongly than a gutter between blocks that are not running text.
WIDE_GAP = 1.5
# A gutter hidden by crossing lines: at most this share of the region's lines cross it,
# each side holds at least MIN_COLUMN_LINES lines...
SPANNER_SHARE = 0.1
# ...and the stretches between the crossing lines that have real columns hold at least
# this share of the other lines.
SPANNED_SHARE = 0.6
# Half-height of a line's text core, in text heights, for band cuts (see _bands).
CORE = 0.4


@dataclass
class Section:
    """Lines in reading order inside which a paragraph may continue; ``kind`` flow or rows."""

    kind: str
    rows: list[list[Line]] = field(default_factory=list)

    @property
    def lines(self) -> list[Line]:
        return [ln for row in self.rows for ln in row]


def reading_order(lines: Sequence[Line], h_med: float) -> list[Section]:
    """Sections of ``lines`` in reading order (see the module docstring)."""
    return _order(list(lines), h_med)


def _order(lines: list[Line], h_med: float) -> list[Section]:
    rows = group_rows(lines)
    if len(rows) <= 1:
        return _plain_sections(lines, h_med)
    split = _column_split(lines, h_med)
    if split is None:
        spanned = _spanned_columns(lines, h_med)
        if spanned is not None:
            return [sec for part in spanned for sec in _order(part, h_med)]
    if split is not None:
        parts, prose = split
        if not prose:
            # Blocks side by side that are not running text (an address beside an invoice
            # summary, items beside amounts) are often just the halves of full-width bands:
            # a wide horizontal gap across the whole region is the stronger cut then.
            wide = _bands(lines, WIDE_GAP * h_med)
            if len(wide) > 1:
                return [sec for band in wide for sec in _order(band, h_med)]
        return [sec for part in parts for sec in _order(part, h_med)]
    bands = _bands(lines)
    if len(bands) == 1:
        return _plain_sections(lines, h_med)
    groups: list[list[Line]] = []
    for run in _merge_bands(bands, lambda u: bool(gutters(u, MIN_GUTTER * h_med))):
        if _column_split(run, h_med) is not None:
            groups.append(run)
        else:
            # The run's gutter is not a column gutter as a whole: look again band by band,
            # keeping only merges whose union has real columns.
            run_bands = _bands(run)
            groups.extend(_merge_bands(run_bands, lambda u: _column_split(u, h_med) is not None))
    groups = _attach_leading_rows(groups, h_med)
    # Consecutive groups without columns are one stretch of the page read top to bottom
    # (running text continues across a paragraph gap; a receipt's rows are one list).
    out: list[Section] = []
    plain: list[Line] = []
    for group in groups:
        if _column_split(group, h_med) is None:
            plain.extend(group)
            continue
        if plain:
            out.extend(_plain_sections(plain, h_med))
            plain = []
        out.extend(_order(group, h_med))
    if plain:
        out.extend(_plain_sections(plain, h_med))
    return out


def _spanned_columns(lines: list[Line], h_med: float) -> list[list[Line]] | None:
    """Parts in reading order when a column gutter is crossed only by a few full-width lines.

    A title, a figure caption or a centred page number that runs across a narrow gutter
    hides it from the plain projection; the band cuts then fall between the columns' lines
    (their rows rarely line up), leaving bands of one line each with no gutter at all. Here
    the lines crossing the best gutter are set aside and cut the region into stretches read
    top to bottom: each stretch is split at the gutter if it has real columns, and the
    crossing lines stay between the stretches where they sit. Used only when the stretches
    with real columns hold most of the region's lines.
    """
    found = _crossed_gutter(lines, h_med)
    if found is None:
        return None
    a, b = found
    crossers = [ln for ln in lines if ln.box[0] < b and ln.box[2] > a]
    # A crossing line's row (a running head and its page number) goes with it.
    crossing = {id(ln) for ln in lines if any(same_row(ln, c) for c in crossers)}
    parts: list[list[Line]] = []
    stretch: list[Line] = []
    for ln in sorted(lines, key=lambda ln: ln.cy):
        if id(ln) in crossing:
            if stretch:
                parts.append(stretch)
                stretch = []
            if parts and all(id(x) in crossing for x in parts[-1]):
                parts[-1].append(ln)
            else:
                parts.append([ln])
        else:
            stretch.append(ln)
    if stretch:
        parts.append(stretch)
    columned = sum(
        len(part)
        for part in parts
        if id(part[0]) not in crossing and _column_split(part, h_med) is not None
    )
    return parts if columned >= SPANNED_SHARE * (len(lines) - len(crossing)) else None


def _crossed_gutter(lines: list[Line], h_med: float) -> tuple[float, float] | None:
    """The interior x-range (a column gutter's) that the fewest lines cross, if few do.

    Few: at most one line in ten (and at least one; with none the plain projection finds
    it). Both sides must hold several lines, or it is a page margin or a gap between cells.
    """
    x0 = min(ln.box[0] for ln in lines)
    width = int(max(ln.box[2] for ln in lines) - x0) + 2
    cover = np.zeros(width + 1, dtype=np.int32)
    for ln in lines:
        cover[int(ln.box[0] - x0)] += 1
        cover[math.ceil(ln.box[2] - x0) + 1] -= 1
    count = np.cumsum(cover)[:width]
    line_ends = np.sort([ln.box[2] for ln in lines])
    line_starts = np.sort([ln.box[0] for ln in lines])
    # The fewest crossings first: a looser level would count lines that merely start or
    # end inside the gutter as crossing it.
    for level in range(1, max(1, int(SPANNER_SHARE * len(lines))) + 1):
        low = np.flatnonzero(count <= level)
        if not len(low):
            continue
        breaks = np.flatnonzero(np.diff(low) > 1)
        starts = np.concatenate(([low[0]], low[breaks + 1]))
        ends = np.concatenate((low[breaks], [low[-1]]))
        for start, end in zip(starts, ends, strict=True):
            n_left = int(np.searchsorted(line_ends, x0 + start, side="left"))
            first_right = int(np.searchsorted(line_starts, x0 + end + 1, side="left"))
            if min(n_left, len(lines) - first_right) < MIN_COLUMN_LINES:
                continue
            a, b = float(line_ends[n_left - 1]), float(line_starts[first_right])
            if b - a >= MIN_GUTTER * h_med:
                return a, b
    return None


def _attach_leading_rows(groups: list[list[Line]], h_med: float) -> list[list[Line]]:
    """Move rows from just above a group with columns into it while its columns still hold.

    Columns often start on one row: a heading beside the other column's first line, a label
    beside the first line of a note. That row alone, or with the next, pairs up like a row of
    cells, so the top-down merge above leaves it out of the columns it starts, and it would be
    read across the gutter as one line. A row that sits close above the group (no wide gap)
    and keeps the group's columns when added belongs to them; a full-width row crosses the
    gutter and stays where it is.
    """
    for i in range(1, len(groups)):
        above, group = groups[i - 1], groups[i]
        split = _column_split(group, h_med)
        if split is None or _column_split(above, h_med) is not None:
            continue
        while above:
            row = _bands(above)[-1]
            gap = min(ln.cy - CORE * ln.h for ln in group) - max(ln.cy + CORE * ln.h for ln in row)
            united = _column_split(row + group, h_med)
            if gap > WIDE_GAP * h_med or united is None or len(united[0]) != len(split[0]):
                break
            moved = {id(ln) for ln in row}
            above = [ln for ln in above if id(ln) not in moved]
            group = row + group
        groups[i - 1], groups[i] = above, group
    return [g for g in groups if g]


def _merge_bands(bands: list[list[Line]], joins: Callable[[list[Line]], bool]) -> list[list[Line]]:
    """Runs of consecutive bands, each band joining the run above while ``joins(union)``."""
    runs: list[list[Line]] = []
    current = bands[0]
    for band in bands[1:]:
        if joins(current + band):
            current = current + band
        else:
            runs.append(current)
            current = band
    runs.append(current)
    return runs


def _plain_sections(lines: list[Line], h_med: float) -> list[Section]:
    """A column-free stretch split into runs of running text and runs of cell rows.

    Rows with a wide gap between cells (``label   value``) that follow each other form a
    ``rows`` section; a short row without a gap between two such rows (a receipt's item
    name on a line of its own) stays with them. Everything else is ``flow``.
    """
    rows = group_rows(lines)
    gap = [has_cell_gap(r, h_med) for r in rows]
    # Absorb up to two short gap-less rows that sit between gap rows.
    for i in range(len(rows)):
        if gap[i] or not any(gap[max(0, i - 2) : i]) or not any(gap[i + 1 : i + 3]):
            continue
        if rows[i][-1].box[2] - rows[i][0].box[0] < PROSE_MIN_LENGTH * 2 * h_med:
            gap[i] = True
    out: list[Section] = []
    for row, is_gap in zip(rows, gap, strict=True):
        kind = "rows" if is_gap else "flow"
        if out and out[-1].kind == kind:
            out[-1].rows.append(row)
        else:
            out.append(Section(kind, [row]))
    # A lone gap row between lines of running text as wide as itself is a line the detector
    # cut at a wide word gap; a lone row wider than the text around it (an item with its
    # price beside the description lines) stays a row.
    for i, sec in enumerate(out):
        if sec.kind == "rows" and len(sec.rows) == 1:
            near = [out[j].rows[-1 if j < i else 0] for j in (i - 1, i + 1) if 0 <= j < len(out)]
            if any(span(r) >= 0.8 * span(sec.rows[0]) for r in near):
                sec.kind = "flow"
    merged: list[Section] = []
    for sec in out:
        if merged and merged[-1].kind == sec.kind == "flow":
            merged[-1].rows.extend(sec.rows)
        else:
            merged.append(sec)
    return merged


def gutters(lines: Sequence[Line], min_width: float) -> list[tuple[float, float]]:
    """Interior x-ranges at least ``min_width`` wide that no line's box touches."""
    spans = sorted((ln.box[0], ln.box[2]) for ln in lines)
    out: list[tuple[float, float]] = []
    reach = spans[0][1]
    for x0, x1 in spans[1:]:
        if x0 - reach >= min_width:
            out.append((reach, x0))
        reach = max(reach, x1)
    return out


def _column_split(lines: list[Line], h_med: float) -> tuple[list[list[Line]], bool] | None:
    """(columns left to right, whether every cut is between running text), or None.

    None when the region has no real column: every gutter lies inside rows of cells.
    """
    found = gutters(lines, MIN_GUTTER * h_med)
    cuts = [(a + b) / 2 for a, b in found]
    if not cuts:
        return None
    parts: list[list[Line]] = [[] for _ in range(len(cuts) + 1)]
    for ln in lines:
        parts[sum(ln.cx > c for c in cuts)].append(ln)
    # Keep a cut only where the sides next to it are separate flows; merge across the rest.
    merged: list[list[Line]] = [parts[0]]
    prose = True
    for (a, b), part in zip(found, parts[1:], strict=True):
        verdict = separate_flows(merged[-1], part, h_med, narrow=b - a < CELL_GAP * h_med)
        if verdict is None:
            merged[-1] = merged[-1] + part
        else:
            merged.append(part)
            prose = prose and verdict == "prose"
    return (merged, prose) if len(merged) > 1 else None


def _bands(lines: Sequence[Line], min_gap: float = 0.0) -> list[list[Line]]:
    """Split into horizontal bands at every y-range (taller than ``min_gap``) no line touches.

    Lines count with their text core (centre +- 0.4 text heights), not their detector box:
    detector boxes are padded, and a column's last line touching the heading below it would
    otherwise chain the columns and the full-width heading into one band.
    """

    def core(ln: Line) -> tuple[float, float]:
        return ln.cy - CORE * ln.h, ln.cy + CORE * ln.h

    ordered = sorted(lines, key=lambda ln: (core(ln)[0], ln.box[0]))
    bands: list[list[Line]] = [[ordered[0]]]
    reach = core(ordered[0])[1]
    for ln in ordered[1:]:
        top, bottom = core(ln)
        if top - reach > min_gap:
            bands.append([ln])
        else:
            bands[-1].append(ln)
        reach = max(reach, bottom)
    return bands
