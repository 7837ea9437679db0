"""Crop figure blocks out of the rendered page, so Markdown can link them."""

from __future__ import annotations

import io
import os
import posixpath

from .document import PageImage, PageResult
from .writers import atomic_write

FIGURE_TYPES = {"figure", "image"}


def figure_folder(rel: str) -> str:
    """Folder of a document's crops, relative to -o DIR: ``<rel>_images``."""
    return rel + "_images"


def crop_figures(result: PageResult, page: PageImage, out_dir: str, rel: str) -> int:
    """Save each figure block of ``result`` as PNG and set ``block.image``; returns the count.

    Must run while the page image is still in memory (right after the engine), which is why
    the pipeline calls it and not the Markdown writer.
    """
    n = 0
    for k, block in enumerate(b for b in result.blocks if b.type in FIGURE_TYPES):
        x0, y0, x1, y1 = (round(v) for v in block.bbox)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(page.width, x1), min(page.height, y1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        name = f"page-{result.index + 1:04d}-figure-{k + 1}.png"
        buf = io.BytesIO()
        page.image.crop((x0, y0, x1, y1)).save(buf, format="PNG")
        atomic_write(os.path.join(out_dir, figure_folder(rel), name), buf.getvalue())
        # Markdown lives at <out>/<rel>.md, so link relative to its folder.
        block.image = posixpath.join(posixpath.basename(figure_folder(rel)), name)
        n += 1
    return n
