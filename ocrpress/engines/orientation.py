"""Pages turned 90, 180 or 270 degrees, told apart by how sure the recogniser is.

Measured with PP-OCRv6 on three dev-set pages (a slide, a receipt, an invoice): upright
text reads at a mean line confidence of 0.97-0.99; the same pages turned 180 degrees read
at 0.64-0.72 (confident-looking garbage, line for line), turned 90 degrees at 0.65-0.74 with
nearly every detected box taller than wide. So a page is suspect when its mean confidence is
low or most of its boxes stand upright, and it is read again turned; the turn whose reading
is clearly more confident wins. Upright pages, the usual case, cost nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..layout import Box, Line

#: Below this mean line confidence a page is suspect (and says so in its notes).
LOW_CONFIDENCE = 0.85
#: A turned reading must beat the upright one by this much to be kept.
MARGIN = 0.05
#: Boxes this much taller than wide count as sideways text.
UPRIGHT_BOX = 1.5


def mean_score(lines: Sequence[Line]) -> float:
    """Mean recognition confidence, weighted by text length (short fragments say little)."""
    if not lines:
        return 0.0
    weights = [max(1, len(ln.text)) for ln in lines]
    return sum(w * ln.score for w, ln in zip(weights, lines, strict=True)) / sum(weights)


def suspect(lines: Sequence[Line]) -> tuple[int, ...]:
    """Turns (degrees counter-clockwise, as ``Image.rotate`` takes them) worth a second look."""
    if len(lines) < 3:
        return ()  # too little text to judge; a lone label is read as it stands
    upright = sum(
        1 for ln in lines if ln.box[3] - ln.box[1] > UPRIGHT_BOX * (ln.box[2] - ln.box[0])
    )
    if upright * 2 > len(lines):
        return (90, 270)
    if mean_score(lines) < LOW_CONFIDENCE:
        return (180,)
    return ()


def box_to_page(box: Box, angle: int, width: int, height: int) -> Box:
    """A box on the image turned by ``angle`` (``width`` x ``height``) in page pixels.

    ``Image.rotate(angle, expand=True)`` turns counter-clockwise; this inverts it.
    """
    x0, y0, x1, y1 = box
    pts = [_to_page(x, y, angle, width, height) for x, y in ((x0, y0), (x1, y1))]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs), min(ys), max(xs), max(ys))


def _to_page(u: float, v: float, angle: int, width: int, height: int) -> tuple[float, float]:
    if angle == 90:
        return (height - v, u)
    if angle == 180:
        return (width - u, height - v)
    if angle == 270:
        return (v, width - u)
    return (u, v)


def turn_note(angle: int) -> str:
    return f"page read turned {angle} degrees (its text was not upright)"


def low_confidence_note(score: float) -> str:
    return f"low recognition confidence (mean {score:.2f}): check this page"
