"""Text lines as OCR engines and text layers give them, and the geometry shared by layout steps."""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Line:
    """One detected text line: axis-aligned ``box`` (x0, y0, x1, y1) in page pixels.

    ``height`` is the text height measured across the line (from its rotated quad); on a
    skewed scan the axis-aligned box of a long line is much taller than its text, which
    would otherwise make every long line look like a heading. ``angle`` is the slope of the
    line's baseline in degrees (positive: falling to the right), 0 for text-layer lines.
    """

    box: Box
    text: str
    score: float
    height: float | None = None
    angle: float = 0.0
    # Word x-ranges and texts (x0, x1, text) when the engine reports them; lets a line the
    # detector ran across a narrow column gutter be cut back into its two columns.
    words: tuple[tuple[float, float, str], ...] = ()

    @property
    def h(self) -> float:
        return self.height if self.height is not None else self.box[3] - self.box[1]

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def w(self) -> float:
        return self.box[2] - self.box[0]

    @classmethod
    def from_quad(
        cls,
        quad: Sequence[Sequence[float]],
        text: str,
        score: float,
        words: Sequence[tuple[float, float, str]] = (),
    ) -> Line:
        """Build from a 4-point quad (top-left, top-right, bottom-right, bottom-left)."""
        xs = [float(p[0]) for p in quad]
        ys = [float(p[1]) for p in quad]
        box = (min(xs), min(ys), max(xs), max(ys))
        height: float | None = None
        angle = 0.0
        if len(quad) == 4:
            tl, tr, br, bl = quad
            height = (math.dist(tl, bl) + math.dist(tr, br)) / 2
            if height <= 0:
                height = None
            dx = (tr[0] - tl[0] + br[0] - bl[0]) / 2
            dy = (tr[1] - tl[1] + br[1] - bl[1]) / 2
            if dx > 0:
                angle = math.degrees(math.atan2(dy, dx))
        return cls(
            box=box,
            text=text,
            score=float(score),
            height=height,
            angle=angle,
            words=tuple(words),
        )


def union(boxes: Sequence[Box]) -> Box:
    """Smallest box holding all ``boxes``."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def x_overlap(a: Box, b: Box) -> float:
    return min(a[2], b[2]) - max(a[0], b[0])


def page_skew(lines: Sequence[Line]) -> float:
    """The page's skew in degrees: the median slope of its long lines (0 when negligible).

    Only lines several text heights long carry a usable slope; the median ignores the odd
    curved or mis-detected line. Below 0.3 degrees rows line up well enough as they are.
    """
    slopes = [ln.angle for ln in lines if ln.w >= 5 * ln.h and abs(ln.angle) < 20]
    if len(slopes) < 3:
        return 0.0
    skew = statistics.median(slopes)
    return skew if abs(skew) >= 0.3 else 0.0


def deskewed(lines: Sequence[Line], degrees: float, centre: tuple[float, float]) -> list[Line]:
    """Lines with their boxes turned by ``-degrees`` around ``centre``: rows become level.

    Only the ordering geometry changes (centre, and a box sized from the line's length and
    text height); callers map results back to the original lines for output boxes.
    """
    if not degrees:
        return list(lines)
    a = math.radians(-degrees)
    c, s = math.cos(a), math.sin(a)
    sin_t, cos_t = abs(math.sin(-a)), abs(math.cos(-a))
    ox, oy = centre
    out: list[Line] = []
    for ln in lines:
        x, y = ln.cx - ox, ln.cy - oy
        nx, ny = ox + x * c - y * s, oy + x * s + y * c
        # Width of the rotated line from its axis-aligned box: W = L cos t + H sin t.
        length = max(ln.h, (ln.w - ln.h * sin_t) / cos_t) if cos_t > 0 else ln.w
        box = (nx - length / 2, ny - ln.h / 2, nx + length / 2, ny + ln.h / 2)
        out.append(replace(ln, box=box, angle=ln.angle - degrees))
    return out


def same_row(a: Line, b: Line) -> bool:
    """Two lines on one visual row: centres within half the smaller text height."""
    return abs(a.cy - b.cy) <= 0.5 * min(a.h, b.h)


def group_rows(lines: Sequence[Line]) -> list[list[Line]]:
    """Visual rows top to bottom, each left to right.

    A line joins the row whose mean centre it is closest to (within half a text height), so
    a row with a slightly taller or lower cell is not split in two.
    """
    rows: list[list[Line]] = []
    centres: list[float] = []
    for ln in sorted(lines, key=lambda ln: ln.cy):
        if rows and abs(ln.cy - centres[-1]) <= 0.5 * min(
            ln.h, statistics.median(x.h for x in rows[-1])
        ):
            rows[-1].append(ln)
            centres[-1] = statistics.fmean(x.cy for x in rows[-1])
        else:
            rows.append([ln])
            centres.append(ln.cy)
    return [sorted(r, key=lambda ln: ln.box[0]) for r in rows]


# A word gap this many text heights wide may be a column gutter (justified word spaces
# stay under ~0.4); it is cut only where the neighbouring lines confirm the gutter.
SPLIT_GAP = 0.5
# Lines above and below (within this many text heights) that must leave the gap empty.
SPLIT_WINDOW = 4.0


def split_across_gutters(lines: Sequence[Line]) -> list[Line]:
    """Cut lines that the detector ran across a column gutter back into one line per column.

    A word gap is a gutter when at least two neighbouring lines (within a few text heights
    above or below) end left of it or start right of it and none of them crosses it: inside
    running text the lines around a wide word space run straight through it.
    """
    by_y = sorted(lines, key=lambda o: o.cy)
    centres = [o.cy for o in by_y]
    out: list[Line] = []
    for ln in lines:
        if len(ln.words) < 2:
            out.append(ln)
            continue
        reach = SPLIT_WINDOW * ln.h
        lo = bisect.bisect_left(centres, ln.cy - reach)
        hi = bisect.bisect_right(centres, ln.cy + reach)
        out.extend(_split_line(ln, [o for o in by_y[lo:hi] if o is not ln]))
    return out


def _split_line(ln: Line, near: Sequence[Line]) -> list[Line]:
    pieces: list[list[tuple[float, float, str]]] = [[ln.words[0]]]
    for prev, word in itertools.pairwise(ln.words):
        left, right = prev[1], word[0]
        if right - left >= SPLIT_GAP * ln.h and _confirmed_gutter(left, right, near):
            pieces.append([word])
        else:
            pieces[-1].append(word)
    if len(pieces) == 1:
        return [ln]
    out = []
    for piece in pieces:
        x0, x1 = piece[0][0], piece[-1][1]
        text = " ".join(w[2] for w in piece)
        out.append(replace(ln, box=(x0, ln.box[1], x1, ln.box[3]), text=text, words=tuple(piece)))
    return out


def _confirmed_gutter(left: float, right: float, near: Sequence[Line]) -> bool:
    mid = (left + right) / 2
    # Detector boxes are padded by a few pixels: a neighbour must reach well across the gap
    # to count as running through it.
    if any(o.box[0] < mid - 0.3 * o.h and o.box[2] > mid + 0.3 * o.h for o in near):
        return False
    ends_left = sum(1 for o in near if left - 2 * o.h <= o.box[2] <= mid)
    starts_right = sum(1 for o in near if mid <= o.box[0] <= right + 2 * o.h)
    return ends_left + starts_right >= 2
