"""Block types from size and position: titles, sub-titles, running heads and page numbers."""

from __future__ import annotations

import statistics

from ..document import Block
from .lines import Line

# Ratios against the page's median line height. Font sizes of body text vs headings in
# typical documents: 10-12 pt body, 14-16 pt section headings (>= 1.2x), 18+ pt titles (1.5x).
TITLE_RATIO = 1.5
SUB_TITLE_RATIO = 1.2
# Header/footer zones as a fraction of page height: page margins are ~7% of an A4 page,
# running heads and page numbers sit inside them.
MARGIN_ZONE = 0.06


def assign_types(
    blocks: list[Block], groups: list[list[Line]], h_med: float, page_height: int
) -> None:
    """Set title/sub_title/header/footer on blocks (in place); others keep their type."""
    for i, (block, lines) in enumerate(zip(blocks, groups, strict=True)):
        if block.type not in ("text", "list"):
            continue
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
