"""Heading levels decided once per document, from text sizes over all its pages.

A page alone cannot tell a section heading from a chapter title: ten identical pages came
out with ``#`` on nine and ``##`` on the tenth because each page judged sizes against its
own body text. Over the whole document the body text size is known, so every heading of one
size gets one level. Only blocks whose size the layout step measured (line engines and text
layers) take part; a VLM's headings are the model's call.
"""

from __future__ import annotations

from .document import PageResult
from .layout.types import SUB_TITLE_RATIO, TITLE_RATIO

HEADINGS = ("title", "sub_title")


def harmonise(pages: list[PageResult]) -> None:
    """Set title/sub_title on the document's measured heading blocks (in place)."""
    body: list[tuple[float, int]] = []
    for page in pages:
        for b in page.blocks:
            if b.size and b.format == "plain" and b.type in ("text", "list"):
                body.append((_points(b.size, page.dpi), len(b.text)))
    if not body:
        return
    body_size = _weighted_median(body)
    for page in pages:
        for b in page.blocks:
            if b.type in HEADINGS and b.size and b.format == "plain":
                ratio = _points(b.size, page.dpi) / body_size
                if ratio >= TITLE_RATIO:
                    b.type = "title"
                elif ratio >= SUB_TITLE_RATIO:
                    b.type = "sub_title"


def _points(size: float, dpi: float | None) -> float:
    return size * 72 / dpi if dpi else size


def _weighted_median(values: list[tuple[float, int]]) -> float:
    """The size that half of the body's characters are set in or below."""
    ordered = sorted(values)
    half = sum(w for _, w in ordered) / 2
    seen = 0
    for size, weight in ordered:
        seen += weight
        if seen >= half:
            return size
    return ordered[-1][0]
