"""Per-page routing: read a PDF page from its text layer when that layer can be trusted.

``--ocr auto`` (the default) checks every PDF page, in the render workers, before any engine
sees it. The text layer is used when both hold:

1. **It decodes.** At most :data:`MAX_BAD_CHARS` of its characters may be U+FFFD, private-use
   or control characters or ``(cid:N)`` names: what a font without a usable ToUnicode map
   turns into. (MuPDF's habit of passing unmapped glyph ids through as characters is turned
   off, so such glyphs show up as U+FFFD instead of plausible garbage.)
2. **It covers the visible text.** Ink that the text layer does not explain can only come
   from raster images (text drawn as vector outlines aside). Each image region is rendered
   at :data:`CHECK_DPI`; ink under text-layer lines is masked out; what is left must not look
   like text (:func:`text_like`: rows of similar-sized, closely spaced marks). A scan with a
   few digital words stamped on it, or a screenshot of a table pasted into a report, fails;
   a photo does not, so it never forces the page to OCR. Such a page goes to the engine
   whole (the page notes say why).

Invisible text (render mode 3, what an earlier OCR pass leaves over a scan) is used only when
it lies on an image and passes the same coverage check; the page notes say where it came
from. Near-white text with no ink under it (white-on-white production marks) is not visible
text and is dropped; white text on a dark band is kept.

``--ocr never`` never runs the engine: a page that fails the check comes out ``empty``, the
reason in its notes. ``--ocr always`` skips all of this.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pymupdf

from . import inputs, textlayer
from .document import Block, PageImage, PageResult
from .figures import FIGURE_TYPES
from .inputs import InputDoc
from .textlayer import Box, TextLayer, TextLine

OCR_MODES = ("auto", "always", "never")
TEXT_LAYER_ENGINE = "pymupdf"

#: Largest share of unusable characters a trusted text layer may hold (a stray symbol-font
#: glyph is normal; a font without ToUnicode makes nearly every character unusable).
MAX_BAD_CHARS = 0.02
#: Resolution of the coverage check's renders: 10 pt text is ~7 px tall, enough to see rows
#: of letters, and an A4 image region costs a few milliseconds.
CHECK_DPI = 72
#: Text rows (see :func:`text_like`) an image must show before its text counts as missing.
MIN_TEXT_ROWS = 2
#: Marks a row needs: a word or two of letters, not a few blobs that line up by chance.
MIN_ROW_MARKS = 4
#: Ink darker than the region's paper (its median) by this many grey levels.
INK_CONTRAST = 60
#: Contrast that the darkest pixel of a letter reaches at least (printed or scanned ink).
CORE_CONTRAST = 100
#: Contrast a near-white line needs under it to count as visible (white on a dark band).
LIGHT_CONTRAST = 40

NO_TEXT_LAYER = "no text layer"
EARLIER_OCR_NOTE = "text from the PDF's invisible text layer (an earlier OCR pass)"


@dataclass
class Verdict:
    """The check's outcome: the lines to use, or why the page needs OCR."""

    usable: bool
    reason: str = ""  # why not, in a few words (goes into the page notes)
    lines: list[TextLine] = field(default_factory=list)
    earlier_ocr: bool = False


def check(page: pymupdf.Page, layer: TextLayer) -> Verdict:
    """Decide whether ``layer`` (read from ``page``) holds the page's visible text."""
    if layer.chars and layer.bad_chars / layer.chars > MAX_BAD_CHARS:
        share = round(100 * layer.bad_chars / layer.chars)
        return Verdict(False, f"the text layer does not decode ({share}% unmapped glyphs)")
    lines = [ln for ln in layer.lines if not ln.invisible or _on_image(ln, layer.images)]
    light = [ln for ln in lines if ln.light]
    if light:
        hidden = _hidden(page, layer, light)
        lines = [ln for ln in lines if id(ln) not in hidden]
    if not lines:
        return Verdict(False, NO_TEXT_LAYER)
    for region in layer.images:
        if _uncovered_text(page, layer, region, lines):
            return Verdict(False, "an image on the page holds text that the text layer lacks")
    earlier = any(ln.invisible for ln in lines)
    return Verdict(True, lines=lines, earlier_ocr=earlier)


def _on_image(ln: TextLine, images: list[Box]) -> bool:
    cx, cy = (ln.box[0] + ln.box[2]) / 2, (ln.box[1] + ln.box[3]) / 2
    return any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in images)


def _render_grey(page: pymupdf.Page, layer: TextLayer, box: Box) -> np.ndarray:
    """Grey pixels of ``box`` (rendered-page pixels) at :data:`CHECK_DPI`."""
    # Back from the render's pixels to points; a clip is in the rotated page's space too.
    s = 72 / layer.dpi
    clip = pymupdf.Rect(box[0] * s, box[1] * s, box[2] * s, box[3] * s)
    pix = page.get_pixmap(dpi=CHECK_DPI, clip=clip, colorspace=pymupdf.csGRAY, alpha=False)
    return np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width)


def _hidden(page: pymupdf.Page, layer: TextLayer, light: list[TextLine]) -> set[int]:
    """Near-white lines with nothing darker around them: drawn but not visible."""
    out: set[int] = set()
    for ln in light:
        grey = _render_grey(page, layer, ln.box)
        if grey.size == 0 or int(grey.max()) - int(grey.min()) < LIGHT_CONTRAST:
            out.add(id(ln))
    return out


def _uncovered_text(
    page: pymupdf.Page, layer: TextLayer, region: Box, lines: list[TextLine]
) -> bool:
    """True when the image at ``region`` shows text rows that no text-layer line covers."""
    grey = _render_grey(page, layer, region)
    if grey.size == 0:
        return False
    paper = int(np.median(grey))
    ink = grey < paper - INK_CONTRAST
    scale = CHECK_DPI / layer.dpi
    h, w = ink.shape
    for ln in lines:
        # Mask each covered line with a margin of a third of its size on every side.
        pad = ln.size / 3
        x0 = int((ln.box[0] - pad - region[0]) * scale)
        y0 = int((ln.box[1] - pad - region[1]) * scale)
        x1 = int((ln.box[2] + pad - region[0]) * scale) + 1
        y1 = int((ln.box[3] + pad - region[1]) * scale) + 1
        if x1 > 0 and y1 > 0 and x0 < w and y0 < h:
            ink[max(0, y0) : y1, max(0, x0) : x1] = False
    return text_like(ink, core=grey < paper - CORE_CONTRAST)


def text_like(ink: np.ndarray, core: np.ndarray | None = None) -> bool:
    """Does a binary ink mask (True = ink) show rows of text?

    Marks (connected components) of letter or word size are grouped into rows: marks of
    similar height whose centres share a row and which follow each other closely. Text makes
    many such rows; a photo's blobs rarely line up :data:`MIN_ROW_MARKS` at a time, and
    never on :data:`MIN_TEXT_ROWS` rows. With ``core`` (a stricter ink mask), a mark counts
    only if it holds some core ink: printed letters are much darker than their paper, while
    sensor noise on a mid-grey patch just below the ink threshold makes speckles that do not.
    """
    import cv2

    if not ink.any():
        return False
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
    strong = np.ones(n, bool) if core is None else np.isin(np.arange(n), labels[core & ink])
    marks = []
    for k, (x, y, w, h, area) in enumerate(stats[1:n], start=1):
        if strong[k] and 3 <= h <= 60 and w <= 25 * h and 4 <= area <= 0.95 * w * h:
            marks.append((float(x), float(y), float(w), float(h)))
    if len(marks) < MIN_ROW_MARKS * MIN_TEXT_ROWS:
        return False
    marks.sort(key=lambda m: (m[1] + m[3] / 2, m[0]))
    rows: list[list[tuple[float, float, float, float]]] = []
    for m in marks:
        cy = m[1] + m[3] / 2
        for row in reversed(rows):  # rows are in cy order: only the last few can match
            last = row[-1]
            if cy - (last[1] + last[3] / 2) > 60:
                rows.append([m])
                break
            same_line = abs(cy - (last[1] + last[3] / 2)) <= 0.5 * max(m[3], last[3])
            similar = max(m[3], last[3]) <= 2.0 * min(m[3], last[3])
            if same_line and similar:
                row.append(m)
                break
        else:
            rows.append([m])
    text_rows = 0
    for row in rows:
        row.sort(key=lambda m: m[0])
        run = best = 1
        for a, b in itertools.pairwise(row):
            gap = b[0] - (a[0] + a[2])
            run = run + 1 if gap <= 2.5 * max(a[3], b[3]) else 1
            best = max(best, run)
        if best >= MIN_ROW_MARKS:
            text_rows += 1
    return text_rows >= MIN_TEXT_ROWS


# ------------------------------------------------------------------------------ results


@dataclass
class TextLayerPage:
    """A page finished from its text layer in a render worker; ``image`` only for figure crops."""

    result: PageResult
    image: PageImage | None = None


def route(
    renderer: inputs.PageRenderer, doc: InputDoc, index: int, dpi: int, mode: str
) -> TextLayerPage | PageImage:
    """Runs in a render worker: the page from its text layer, or rendered for the engine.

    A page that goes to the engine although it has a text layer carries the reason in its
    ``notes``. With ``mode == "never"`` no page goes to the engine: one without a usable text
    layer comes back ``empty``, the reason in its notes. Raises InputError as
    :meth:`PageRenderer.render` does.
    """
    if mode == "always" or (doc.kind != "pdf" and mode == "auto"):
        return renderer.render(doc, index, dpi)
    if doc.kind != "pdf":
        image = renderer.render(doc, index, dpi)
        reason = "an image has no text layer"
        return TextLayerPage(_unread(doc, index, image.width, image.height, image.dpi, reason))
    page = renderer.pdf_page(doc, index)
    eff_dpi = inputs.page_dpi(page, dpi)
    try:
        result, reason = text_layer_result(page, doc.display, index, eff_dpi)
    except Exception as e:  # a text layer MuPDF cannot parse is a reason to OCR, not an error
        result, reason = None, f"the text layer cannot be read ({type(e).__name__}: {e})"
    if result is None and mode == "never":
        width, height = textlayer.page_size(page, eff_dpi)
        return TextLayerPage(_unread(doc, index, width, height, eff_dpi, reason))
    if result is None:
        image = renderer.render(doc, index, dpi)
        if reason != NO_TEXT_LAYER:
            image.notes.append(f"read by OCR: {reason}")
        return image
    if any(b.type in FIGURE_TYPES for b in result.blocks):
        return TextLayerPage(result, renderer.render(doc, index, dpi))  # for the crops
    return TextLayerPage(result)


def _model() -> str:
    return f"PyMuPDF {pymupdf.VersionBind}"


def _unread(
    doc: InputDoc, index: int, width: int, height: int, dpi: float | None, reason: str
) -> PageResult:
    """An ``empty`` page that ``--ocr never`` did not send to the engine, and why."""
    return PageResult(
        source=doc.display, index=index, width=width, height=height, dpi=dpi,
        engine=TEXT_LAYER_ENGINE, model=_model(), status="empty", text_source="text-layer",
        notes=[f"{reason}; --ocr never leaves the page unread"],
    )  # fmt: skip


def text_layer_result(
    page: pymupdf.Page, source: str, index: int, dpi: int
) -> tuple[PageResult | None, str]:
    """(the page read from its text layer, or None when it must go to the engine; why not)."""
    layer = textlayer.read(page, dpi)
    verdict = check(page, layer)
    if not verdict.usable:
        return None, verdict.reason
    extra: list[Block] = textlayer.find_tables(page, layer) + textlayer.figure_blocks(layer)
    blocks = textlayer.to_blocks(layer, verdict.lines, extra)
    return PageResult(
        source=source, index=index, width=layer.width, height=layer.height, dpi=dpi,
        engine=TEXT_LAYER_ENGINE, model=_model(), status="ok" if blocks else "empty",
        text_source="text-layer", blocks=blocks,
        notes=[EARLIER_OCR_NOTE] if verdict.earlier_ocr else [],
    ), ""  # fmt: skip
