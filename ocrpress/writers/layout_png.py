"""Layout pictures (``-f layout``): each page with its blocks' boxes, types and reading order.

They show what ocrpress understood of a page, for any engine. Page images are gone by the
time a document is written, so each page is rendered again from its input, at the dpi its
result records, and only when the format was asked for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re

from PIL import Image, ImageDraw, ImageFont

from ..document import PageResult
from ..inputs import DEFAULT_DPI, InputDoc, InputError, PageRenderer
from . import atomic_write

log = logging.getLogger("ocrpress")

#: The format name and the suffix of its folder: ``<rel>_layout/page-0001.png``.
LAYOUT_FORMAT = "layout"
LAYOUT_SUFFIX = "_layout"

# One colour per block type, far apart in hue so neighbouring blocks of different types
# read apart; types not listed (engine-specific labels) share magenta.
TYPE_COLORS: dict[str, tuple[int, int, int]] = {
    "title": (214, 39, 40),
    "sub_title": (255, 127, 14),
    "text": (31, 119, 180),
    "list": (23, 190, 207),
    "table": (44, 160, 44),
    "figure": (148, 103, 189),
    "image": (148, 103, 189),
    "caption": (140, 86, 75),
    "formula": (188, 189, 34),
    "header": (127, 127, 127),
    "footer": (127, 127, 127),
}
OTHER_COLOR = (227, 119, 194)

_PAGE_NAME = re.compile(r"page-\d{4,}\.png\Z")


def picture_name(index: int) -> str:
    """File name of page ``index`` (0-based) inside the layout folder."""
    return f"page-{index + 1:04d}.png"


def color_of(block_type: str) -> tuple[int, int, int]:
    return TYPE_COLORS.get(block_type, OTHER_COLOR)


def draw_layout(image: Image.Image, page: PageResult) -> Image.Image:
    """``image`` (the rendered page) with ``page``'s blocks drawn on it, in reading order."""
    size = (page.width, page.height)
    base = image.convert("RGB")
    if base.size != size:
        # Boxes are in the pixels the engine saw; match them whatever the re-render gave.
        base = base.resize(size, Image.Resampling.BILINEAR)
    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    # Lines and labels scale with the page, so a 300-dpi scan is as readable as a 96-dpi one.
    line = max(2, round(min(size) / 400))
    font = ImageFont.load_default(size=max(12, round(min(size) / 60)))
    tags: list[tuple[tuple[float, float, float, float], str, tuple[int, int, int]]] = []
    for n, block in enumerate(page.blocks, start=1):
        x0, y0, x1, y1 = block.bbox
        # Clamp into the page so a full-page box still shows its outline.
        x0, x1 = sorted((min(max(x0, 0), size[0] - 1), min(max(x1, 0), size[0] - 1)))
        y0, y1 = sorted((min(max(y0, 0), size[1] - 1), min(max(y1, 0), size[1] - 1)))
        rgb = color_of(block.type)
        draw.rectangle((x0, y0, x1, y1), fill=(*rgb, 28), outline=(*rgb, 255), width=line)
        tags.append(((x0, y0, x1, y1), f"{n} {block.type}", rgb))
    # Tags go on last, so a later box's outline never hides an earlier block's number.
    pad = line
    for (x0, y0, _x1, _y1), label, rgb in tags:
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        tx, ty = min(x0, max(0, size[0] - w)), min(y0, max(0, size[1] - h))
        draw.rectangle((tx, ty, tx + w, ty + h), fill=(*rgb, 230))
        draw.text((tx + pad - left, ty + pad - top), label, font=font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")


def write_layout_pictures(doc: InputDoc, pages: list[PageResult], folder: str) -> list[str]:
    """Write one picture per converted page of ``doc`` into ``folder``; returns their paths.

    Failed pages (no size) get none; pictures of pages no longer converted are removed, so the
    folder matches the other outputs. A page that cannot be rendered again (the input changed
    since) is logged and left out: the text outputs are still right.
    """
    os.makedirs(folder, exist_ok=True)
    written: list[str] = []
    renderer = PageRenderer()
    try:
        for page in pages:
            if page.status == "error" or not page.width or not page.height:
                continue
            try:
                # Images ignore the dpi; PDFs are drawn at the one their boxes were made at.
                dpi = round(page.dpi) if page.dpi else DEFAULT_DPI
                rendered = renderer.render(doc, page.index, dpi)
            except InputError as e:
                log.warning("%s: page %d: no layout picture: %s", doc.display, page.index + 1, e)
                continue
            buf = io.BytesIO()
            # Level 3: a scan's noise takes a third of the default's time and no more bytes.
            draw_layout(rendered.image, page).save(buf, format="PNG", compress_level=3)
            path = os.path.join(folder, picture_name(page.index))
            atomic_write(path, buf.getvalue())
            written.append(path)
    finally:
        renderer.close()
    keep = {os.path.basename(p) for p in written}
    for name in os.listdir(folder):
        if _PAGE_NAME.match(name) and name not in keep:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
    return written
