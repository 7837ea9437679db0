"""Choose a page's cheapest resolution mode from its text estimate (``--mode auto``).

DeepSeek-OCR's paper measures decoding precision against the compression ratio (text tokens
per vision token): ~97% up to 10x, ~60% near 20x. So a mode is good enough for a page when

1. **compression**: estimated text tokens (with :data:`ESTIMATE_MARGIN` headroom for image
   estimates) / the mode's vision tokens <= ``max_compression`` (``R``, default
   :data:`DEFAULT_MAX_COMPRESSION`), and
2. **legibility**: the page's typical text height, scaled into the mode's view, is at least
   :data:`LEGIBLE_PX` pixels. Small print is what makes a newspaper need tiles even when its
   compression would fit a large untiled view.

The chooser walks the family's modes from cheapest to dearest (:func:`ladder`) and takes the
first good one; gundam, whose tile count follows from the page shape, is the last resort and
is taken even when it fails too (nothing dearer exists). Everything here is pure arithmetic
on :mod:`ocrpress.modes`, so the engines can call it per page and the CLI's dry run
(``ocrpress modes --auto``) shows exactly what they would do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..modes import DEFAULT_MAX_COMPRESSION, get_mode, modes_for, plan_tokens
from .estimate import TextEstimate

#: Smallest ink height of a text line (ascender to descender) the encoders read reliably, in
#: view pixels. The paper reads books and reports well at 100 vision tokens (v1 small, a
#: 640-px view), where 10-pt body text on an A4 page is ~7 px tall; the same page in tiny
#: (512 px) is ~5.5 px, and there it only works for larger print (slides). 6 px sits between.
LEGIBLE_PX = 6.0
#: Headroom on the estimate, by source, before it is held against ``R``. A text layer is
#: exact; the image estimate's errors on the dev set spread to about -30% (median |error|
#: ~9%), and a low estimate is what overloads a mode, so it is held 25% high (covering
#: underestimates down to -20%). Escalation catches the rest.
ESTIMATE_MARGIN = {"text-layer": 1.0, "image": 1.25}


@dataclass(frozen=True)
class ModeChoice:
    """The mode chosen for one page and why (what the page's ``mode_estimate`` records)."""

    family: str
    mode: str
    vision_tokens: int
    tiles: tuple[int, int] | None
    est_chars: int
    est_text_tokens: int
    ratio: float  # estimated text tokens per vision token in the chosen mode
    text_height_view_px: float  # typical text-line ink height in the chosen mode's view
    source: str  # "text-layer" or "image"
    max_compression: float
    fits: bool  # False: even gundam fails a criterion (an escalation candidate from the start)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "vision_tokens": self.vision_tokens,
            "tiles": list(self.tiles) if self.tiles else None,
            "est_chars": self.est_chars,
            "est_text_tokens": self.est_text_tokens,
            "ratio": round(self.ratio, 2),
            "text_height_view_px": round(self.text_height_view_px, 1),
            "source": self.source,
            "max_compression": self.max_compression,
            "fits": self.fits,
        }


def ladder(family: str) -> tuple[str, ...]:
    """The family's modes from cheapest to dearest: untiled by view size, then gundam."""
    modes = modes_for(family)
    untiled = sorted((m for m in modes.values() if not m.tiled), key=lambda m: m.base_size)
    return (*(m.name for m in untiled), *(m.name for m in modes.values() if m.tiled))


def next_mode(family: str, mode: str) -> str | None:
    """The next dearer mode of ``family`` to escalate ``mode`` to; None after gundam."""
    steps = ladder(family)
    get_mode(family, mode)  # ValueError naming the family's modes
    i = steps.index(mode)
    return steps[i + 1] if i + 1 < len(steps) else None


def view_scale(
    family: str, mode: str, width: int, height: int, min_tiles: int = 2, max_tiles: int = 6
) -> float:
    """How much a ``width x height`` page shrinks (or grows) into ``mode``'s sharpest view.

    Untiled views fit the page's longer side (tiny/small stretch to a square, which squeezes
    the other side less, so the longer side is the worse case). Gundam's tiles cover the page
    resized to ``cols x rows`` tiles; the more squeezed axis limits legibility.
    """
    plan = plan_tokens(family, mode, width, height, min_tiles, max_tiles)
    if plan.tiles and plan.tile_size:
        cols, rows = plan.tiles
        return min(cols * plan.tile_size / width, rows * plan.tile_size / height)
    return plan.base_size / max(width, height)


def choose_mode(
    family: str,
    width: int,
    height: int,
    estimate: TextEstimate,
    max_compression: float = DEFAULT_MAX_COMPRESSION,
    min_tiles: int = 2,
    max_tiles: int = 6,
) -> ModeChoice:
    """The cheapest mode of ``family`` whose compression and legibility hold for the page."""
    if max_compression <= 0:
        raise ValueError(f"max compression must be positive, got {max_compression}")
    tokens = estimate.text_tokens
    margin = ESTIMATE_MARGIN.get(estimate.source, 1.0)
    choice: ModeChoice | None = None
    for mode in ladder(family):
        plan = plan_tokens(family, mode, width, height, min_tiles, max_tiles)
        view_px = estimate.text_height * view_scale(
            family, mode, width, height, min_tiles, max_tiles
        )
        ratio = tokens / plan.vision_tokens
        fits = ratio * margin <= max_compression and (tokens == 0 or view_px >= LEGIBLE_PX)
        choice = ModeChoice(
            family=family, mode=mode, vision_tokens=plan.vision_tokens, tiles=plan.tiles,
            est_chars=estimate.chars, est_text_tokens=tokens, ratio=ratio,
            text_height_view_px=view_px, source=estimate.source,
            max_compression=max_compression, fits=fits,
        )  # fmt: skip
        if fits:
            break
    assert choice is not None  # every family has modes
    return choice
