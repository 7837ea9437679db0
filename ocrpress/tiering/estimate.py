"""How much text a page holds and how small it is printed, before any model sees it.

Two sources, both pure CPU and torch-free so render workers can run them next to rendering:

- **The text layer** (:func:`estimate_text_layer`): characters of every line, and the font size
  of most characters. Exact when the layer covers the page.
- **The image** (:func:`estimate_image`): ink geometry. The page is binarised (adaptive
  threshold, so photos with uneven light work), letter-sized connected components are kept
  (rules, table grids, pictures and solid squares such as QR modules are dropped), and each is
  smeared sideways by about one letter height, which joins letters and words into line pieces
  but not across column gutters. A piece ``w`` wide and ``h`` tall holds about
  ``w / (CHAR_ADVANCE * h)`` characters (spaces included). Counting geometry instead of
  components makes the estimate hold when letters merge (72-dpi scans) or break (thin fonts).

Measured on the shared dev set (42 pages, ``bench/auto_mode.py``): the image estimate's median
absolute error against the ground truth's characters is about 10%, at ~30 ms a page on one
core; its outliers are over-estimates (a crumpled receipt photo with handwriting behind it, a
QR bill), which cost vision tokens but not text.

*Text height* is the ink height of a typical text line (ascender to descender), in page
pixels: the median height of line pieces weighted by their width, so body text wins over a big
title. A font size converts to it by :data:`INK_PER_EM`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

Source = Literal["text-layer", "image"]

#: Characters (spaces included) per text token. No DeepSeek tokenizer is available offline to
#: measure it; ~4 characters per token is the usual figure for English under ~100k-entry BPE
#: vocabularies (DeepSeek-OCR's decoder uses a 129k one). 3.5 leaves room for what tokenizes
#: denser: digits, forms, tables and non-English text.
CHARS_PER_TOKEN = 3.5
#: Average character advance (spaces included) per text-line ink height. Latin body fonts
#: advance ~0.45-0.5 em per character and their ink spans ~0.9-1 em.
CHAR_ADVANCE = 0.5
#: Ink height of a text line per font size (em): ascender to descender of common fonts.
INK_PER_EM = 0.9
#: Working size (longer side, px) of the image estimate: an A4 page at ~95 dpi, where 6-pt
#: print is still ~7 px tall; larger inputs are shrunk (time grows with pixels).
WORK_SIDE = 1100
#: Adaptive-threshold window (px at the working size) and how much darker than the local
#: mean a pixel must be to count as ink.
THRESH_BLOCK = 31
#: Below this line height (working px) letters of neighbouring words and lines run together;
#: such a page is measured again at the scale that makes its lines :data:`FINE_LINE_PX` tall.
MIN_LINE_PX = 7.0
FINE_LINE_PX = 8.0
THRESH_CONTRAST = 18
#: A component filling this much of its box, roughly square and at least half a letter tall,
#: is a solid mark (QR module, check box fill, bullet), not a letter.
SOLID_FILL = 0.9


@dataclass(frozen=True)
class TextEstimate:
    """A page's estimated text: characters, typical text height, and where they came from."""

    chars: int  # characters, spaces included (whitespace runs count once)
    text_height: float  # ink height of a typical text line, in page pixels (0: no text)
    source: Source

    @property
    def text_tokens(self) -> int:
        return math.ceil(self.chars / CHARS_PER_TOKEN)

    def to_json(self) -> dict[str, Any]:
        return {
            "chars": self.chars,
            "text_tokens": self.text_tokens,
            "text_height": round(self.text_height, 1),
            "source": self.source,
        }


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def estimate_image(image: Image.Image) -> TextEstimate:
    """Estimate a page's text from its pixels alone (see the module docstring).

    A large page is measured at :data:`WORK_SIDE`; when its print is then too small to tell
    lines apart (a newspaper), it is measured once more at a finer scale.
    """
    grey = np.asarray(image.convert("L"))
    scale = min(1.0, WORK_SIDE / max(grey.shape))
    chars, line_h = _measure(_shrink(grey, scale))
    if scale < 1 and 0 < line_h < MIN_LINE_PX:
        scale = min(1.0, scale * FINE_LINE_PX / line_h)
        chars, line_h = _measure(_shrink(grey, scale))
    return TextEstimate(round(chars), line_h / scale, "image")


def _shrink(grey: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    if scale >= 1:
        return grey
    h, w = grey.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)


def _measure(grey: np.ndarray) -> tuple[float, float]:
    """(characters, typical line ink height in ``grey``'s pixels; 0 without text)."""
    import cv2

    height, width = grey.shape
    block = min(THRESH_BLOCK, (min(height, width) // 2) * 2 - 1)
    if block < 3:
        return 0.0, 0.0
    ink = cv2.adaptiveThreshold(
        grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block, THRESH_CONTRAST
    )
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    w, h, area = stats[:, 2], stats[:, 3], stats[:, 4]
    # Letter-sized: not a speck, not a rule (thin and long), not a picture or table grid.
    letter = (h >= 3) & (h <= height / 12) & (w <= 40 * h) & (w <= width / 3) & (area >= 4)
    letter[0] = False  # the background
    if not letter.any():
        return 0.0, 0.0
    typical = float(np.median(h[letter]))
    solid = (area >= SOLID_FILL * w * h) & (w >= 0.5 * h) & (h >= 0.5 * typical)
    letter &= ~solid
    if not letter.any():
        return 0.0, 0.0
    keep = np.zeros(n, np.uint8)
    keep[letter] = 255
    reach = max(3, round(0.8 * typical))  # bridges letter and word gaps, not column gutters
    pieces = cv2.dilate(keep[labels], np.ones((1, reach), np.uint8))
    _, _, pstats, _ = cv2.connectedComponentsWithStats(pieces, connectivity=8)
    pw = pstats[1:, 2].astype(float) - (reach - 1)  # undo the smear's growth
    ph = pstats[1:, 3].astype(float)
    ok = pw > 0
    pw, ph = pw[ok], ph[ok]
    if not len(pw):
        return 0.0, 0.0
    line_h = _weighted_median(ph, pw)
    # A piece much taller than a line is lines the smear joined (tight leading): count them.
    lines = np.maximum(1.0, np.round(ph / line_h))
    chars = float(np.sum(lines * np.maximum(1.0, pw / (CHAR_ADVANCE * ph / lines))))
    return chars, line_h


def estimate_text_layer(page: Any, dpi: float) -> TextEstimate:
    """Estimate from a PDF page's text layer (``page``: a ``pymupdf.Page``), in pixels at
    ``dpi``. Invisible text counts: an earlier OCR pass's layer is what the page says."""
    import pymupdf

    chars = 0
    sizes: list[tuple[float, int]] = []
    for block in page.get_text("dict", flags=pymupdf.TEXTFLAGS_TEXT)["blocks"]:
        for line in block.get("lines", ()):
            text = " ".join("".join(s["text"] for s in line["spans"]).split())
            if not text:
                continue
            chars += len(text) + 1  # the line break reads as one more space
            size = max(line["spans"], key=lambda s: len(s["text"].strip()))["size"]
            sizes.append((size * dpi / 72 * INK_PER_EM, len(text)))
    if not sizes:
        return TextEstimate(0, 0.0, "text-layer")
    heights = np.array([s for s, _ in sizes])
    weights = np.array([c for _, c in sizes], dtype=float)
    return TextEstimate(chars - 1, _weighted_median(heights, weights), "text-layer")


#: Share of a PDF page that raster images may cover before the image estimate is also taken:
#: text inside images (a scan, a pasted screenshot) is in no text layer.
IMAGE_COVER = 0.3


def image_cover(page: Any) -> float:
    """Share of ``page``'s area under raster image placements (overlaps counted twice)."""
    area = abs(page.rect) or 1.0
    covered = 0.0
    for info in page.get_image_info():
        r = page.rect & info["bbox"]
        covered += abs(r) if not r.is_empty else 0.0
    return min(1.0, covered / area)


def estimate_page(image: Image.Image, page: Any = None, dpi: float | None = None) -> TextEstimate:
    """The estimate for a rendered page: its text layer when ``page`` (a PDF page rendered at
    ``dpi``) has one that images do not hide much of, else the larger of layer and image.

    A text layer never holds text drawn inside images, but when it exists it is exact, so the
    image estimate is only consulted where images cover :data:`IMAGE_COVER` of the page.
    """
    if page is not None and dpi:
        layer = estimate_text_layer(page, dpi)
        if layer.chars and image_cover(page) < IMAGE_COVER:
            return layer
        pixels = estimate_image(image)
        return layer if layer.chars >= pixels.chars else pixels
    return estimate_image(image)


def estimate_rendered(
    renderer: Any, doc: Any, index: int, image: Image.Image, dpi: float | None
) -> TextEstimate:
    """The estimate of page ``index`` of ``doc`` as rendered (``image`` at ``dpi``), its PDF
    text layer read through ``renderer`` (an :class:`ocrpress.inputs.PageRenderer`): the one
    step the render workers and ``modes --auto`` share, so the dry run shows what runs."""
    page = renderer.pdf_page(doc, index) if doc.kind == "pdf" else None
    return estimate_page(image, page, dpi)
