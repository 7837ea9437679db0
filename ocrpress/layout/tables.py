"""Rows of cells: a table block when the cells form a grid, else one line per row."""

from __future__ import annotations

import html

from ..document import Block
from .lines import Line, union
from .order import gutters

# A grid needs this many rows, and this share of them with cells in two or more columns.
MIN_TABLE_ROWS = 3
MIN_FILLED_ROWS = 0.6


def rows_block(rows: list[list[Line]], h_med: float) -> Block:
    """A ``table`` block (HTML, like the VLM engines give) or a ``text`` block, row per line."""
    lines = [ln for row in rows for ln in row]
    score = sum(ln.score for ln in lines) / len(lines)
    box = union([ln.box for ln in lines])
    cuts = [(a + b) / 2 for a, b in gutters(lines, h_med)]
    if len(rows) >= MIN_TABLE_ROWS and cuts:
        grid = [_cells(row, cuts) for row in rows]
        filled = sum(1 for cells in grid if sum(1 for c in cells if c) >= 2)
        if filled >= MIN_FILLED_ROWS * len(rows):
            return Block(type="table", bbox=box, text=_html(grid), score=score)
    text = "\n".join(" ".join(ln.text for ln in row) for row in rows)
    return Block(type="text", bbox=box, text=text, score=score)


def _cells(row: list[Line], cuts: list[float]) -> list[str]:
    cells: list[list[str]] = [[] for _ in range(len(cuts) + 1)]
    for ln in row:
        cells[sum(ln.cx > c for c in cuts)].append(ln.text)
    return [" ".join(c) for c in cells]


def _html(grid: list[list[str]]) -> str:
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c, quote=False)}</td>" for c in cells) + "</tr>"
        for cells in grid
    )
    return f"<table>{body}</table>"
