"""Tiered optical compression (``--mode auto``): estimate a page's text, choose its mode.

:mod:`.estimate` reads a page's text cheaply on the CPU, :mod:`.choose` turns that into the
cheapest DeepSeek-OCR mode that still decodes well, :mod:`.dryrun` is ``ocrpress modes
--auto``. No torch anywhere: render workers and the CLI use all of it without a model.
"""

from .choose import (
    DEFAULT_MAX_COMPRESSION,
    LEGIBLE_PX,
    ModeChoice,
    choose_mode,
    ladder,
    next_mode,
    view_scale,
)
from .estimate import (
    CHARS_PER_TOKEN,
    TextEstimate,
    estimate_image,
    estimate_page,
    estimate_rendered,
    estimate_text_layer,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_COMPRESSION",
    "LEGIBLE_PX",
    "ModeChoice",
    "TextEstimate",
    "choose_mode",
    "estimate_image",
    "estimate_page",
    "estimate_rendered",
    "estimate_text_layer",
    "ladder",
    "next_mode",
    "view_scale",
]
