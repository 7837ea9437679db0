"""Resolution modes of the DeepSeek-OCR family and their vision-token arithmetic.

Pure Python (no torch): the CLI's ``modes`` command and the batcher use it without loading a
model.

Family ``v1`` (DeepSeek-OCR) has the five published modes: tiny 512 px (64 tokens), small 640
(100), base 1024 (256), large 1280 (400) and gundam (1024-px global view plus 640-px tiles,
256 + 100 per tile). Its prompt also carries one newline token per row of image features and
one view separator, so its *sequence positions* differ from its vision tokens
(``(q + 1) * q + 1`` for a ``q x q`` feature grid).

Family ``v2`` (DeepSeek-OCR-2) has learned query tables for 768-px (144 queries) and 1024-px
(256 queries) views only, so only three modes exist:

=======  ===================================  ======================================
mode     views                                vision tokens (incl. 1 view separator)
=======  ===================================  ======================================
small    768 global, untiled                  144 + 1
base     1024 global, untiled                 256 + 1
gundam   1024 global + 768 tiles              256 + 144 * tiles + 1
=======  ===================================  ======================================

v2 has no newline tokens, so its sequence positions equal its vision tokens. In gundam mode
a page is tiled only when its longer side exceeds the tile size (v1: 640, v2: 768); the grid
``(cols, rows)`` has the aspect ratio closest to the page's among all grids of
``min_tiles..max_tiles`` tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

FAMILIES = ("v1", "v2")
DEFAULT_MODE = {"v1": "gundam", "v2": "gundam"}
MAX_TILES_LIMIT = 9  # v1 was trained with up to 9 tiles; more only costs tokens
#: ``--mode auto``'s default R: most text tokens per vision token a mode may carry (the paper:
#: ~97% precision up to 10x, ~60% near 20x; see :mod:`ocrpress.tiering.choose`).
DEFAULT_MAX_COMPRESSION = 10.0

# Both encoders: 16-px patches, then a 4x downsampling neck -> one feature per 64 px.
_PIXELS_PER_FEATURE = 16 * 4


@dataclass(frozen=True)
class ModeSpec:
    """A resolution mode: global view size and, for tiled modes, the tile size."""

    name: str
    family: str
    base_size: int
    tile_size: int | None  # None: untiled

    @property
    def tiled(self) -> bool:
        return self.tile_size is not None


@dataclass(frozen=True)
class TokenPlan:
    """Vision-token cost of one page in one mode.

    ``vision_tokens`` is the published cost (v2: the number of ``<image>`` placeholders the
    processor inserts, separator included). ``positions`` is the number of prompt positions
    the image occupies (v1 adds newline and separator tokens); pages with equal ``positions``
    have equal prompt lengths.
    """

    mode: str
    vision_tokens: int
    tiles: tuple[int, int] | None  # (columns, rows); None when the page is not tiled
    base_size: int
    tile_size: int | None
    positions: int

    @property
    def num_tiles(self) -> int:
        return self.tiles[0] * self.tiles[1] if self.tiles else 0


_MODES: dict[str, dict[str, ModeSpec]] = {
    "v1": {
        "tiny": ModeSpec("tiny", "v1", 512, None),
        "small": ModeSpec("small", "v1", 640, None),
        "base": ModeSpec("base", "v1", 1024, None),
        "large": ModeSpec("large", "v1", 1280, None),
        "gundam": ModeSpec("gundam", "v1", 1024, 640),
    },
    "v2": {
        "small": ModeSpec("small", "v2", 768, None),
        "base": ModeSpec("base", "v2", 1024, None),
        "gundam": ModeSpec("gundam", "v2", 1024, 768),
    },
}

_FAMILY_NAMES = {"v1": "DeepSeek-OCR", "v2": "DeepSeek-OCR-2"}
#: Every mode name of any family, in size order (what ``--mode`` may say at all).
MODE_NAMES = ("tiny", "small", "base", "large", "gundam")

# Why a v1 mode has no v2 counterpart (v2 only has 768- and 1024-px query tables).
_V2_MISSING = {
    "tiny": "'tiny' needs a 512-px view it does not have",
    "large": "'large' needs a 1280-px view it does not have",
}


def _check_family(family: str) -> None:
    if family not in _MODES:
        raise ValueError(f"unknown model family {family!r} (expected one of {', '.join(FAMILIES)})")


def modes_for(family: str) -> dict[str, ModeSpec]:
    """All modes of ``family`` ("v1" or "v2"), by name."""
    _check_family(family)
    return dict(_MODES[family])


def get_mode(family: str, name: str) -> ModeSpec:
    """The mode ``name`` of ``family``; ValueError naming the allowed modes if it has none."""
    modes = modes_for(family)
    if name in modes:
        return modes[name]
    msg = f"{_FAMILY_NAMES[family]} supports modes {', '.join(modes)}"
    reason = _V2_MISSING.get(name) if family == "v2" else None
    msg += f"; {reason}" if reason else f"; unknown mode {name!r}"
    raise ValueError(msg)


@lru_cache(maxsize=32)
def _grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    # Same enumeration order as the reference processors (columns outer, rows inner, then a
    # stable sort by tile count): the order decides ties.
    grids = [
        (c, r)
        for c in range(1, max_tiles + 1)
        for r in range(1, max_tiles + 1)
        if min_tiles <= c * r <= max_tiles
    ]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def check_tile_range(min_tiles: int, max_tiles: int) -> None:
    """ValueError unless ``1 <= min_tiles <= max_tiles <= 9``."""
    if not 1 <= min_tiles <= max_tiles <= MAX_TILES_LIMIT:
        raise ValueError(
            f"tile range {min_tiles}..{max_tiles} is invalid: need "
            f"1 <= min tiles <= max tiles <= {MAX_TILES_LIMIT}"
        )


def tile_grid(
    width: int, height: int, tile_size: int, min_tiles: int = 2, max_tiles: int = 6
) -> tuple[int, int] | None:
    """Tile grid ``(columns, rows)`` for a ``width x height`` page, or None if it is not tiled.

    Mirrors ``get_optimal_tiled_canvas`` of the transformers DeepSeek-OCR-2 image processor
    (and v1's ``find_closest_aspect_ratio``): closest aspect ratio wins; on an exact tie the
    later (larger) grid wins while the page area exceeds half the grid's area.
    """
    check_tile_range(min_tiles, max_tiles)
    if width <= 0 or height <= 0:
        raise ValueError(f"page size must be positive, got {width}x{height}")
    if max(width, height) <= tile_size:
        return None
    aspect = width / height
    area = width * height
    best_diff = math.inf
    best = (1, 1)
    for cols, rows in _grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def _features(size: int) -> int:
    """Side of the feature grid a ``size``-px square view produces."""
    return math.ceil(size / _PIXELS_PER_FEATURE)


def plan_tokens(
    family: str,
    mode: str,
    width: int,
    height: int,
    min_tiles: int = 2,
    max_tiles: int = 6,
) -> TokenPlan:
    """Vision tokens, tile grid and prompt positions for a ``width x height`` page."""
    spec = get_mode(family, mode)
    tiles = (
        tile_grid(width, height, spec.tile_size, min_tiles, max_tiles)
        if spec.tile_size is not None
        else None
    )
    q = _features(spec.base_size)
    cols, rows = tiles or (0, 0)
    if family == "v2":
        t = _features(spec.tile_size) if spec.tile_size else 0
        tokens = q * q + t * t * cols * rows + 1  # + view separator
        positions = tokens
    else:
        t = _features(spec.tile_size) if spec.tile_size else 0
        tokens = q * q + t * t * cols * rows
        # Global view: one newline per feature row, then the view separator; tiles form one
        # (t*cols) x (t*rows) map, also with one newline per row.
        positions = (q + 1) * q + 1
        if tiles:
            positions += (t * cols + 1) * t * rows
    return TokenPlan(
        mode=spec.name,
        vision_tokens=tokens,
        tiles=tiles,
        base_size=spec.base_size,
        tile_size=spec.tile_size,
        positions=positions,
    )


def max_positions(family: str, mode: str, max_tiles: int = 6) -> int:
    """Most prompt positions any page can take in ``mode`` (for memory budgeting)."""
    spec = get_mode(family, mode)
    q = _features(spec.base_size)
    t = _features(spec.tile_size) if spec.tile_size else 0
    n = max_tiles if spec.tile_size else 0
    if family == "v2":
        return q * q + t * t * n + 1
    # v1: one newline per feature row, so a single column of n tiles has the most
    return (q + 1) * q + 1 + (t + 1) * t * n
