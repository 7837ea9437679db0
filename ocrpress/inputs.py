"""Inputs: what a document is, how to tell its kind, and how its pages become images.

Finding documents (files, folders, globs, stdin) is ocrpress.discovery. Everything here runs
without torch so that render workers start fast.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass

import pymupdf
from PIL import Image, ImageOps, ImageSequence

from .document import PageImage

# MuPDF prints its own complaints to stderr; we report one clean line per file instead.
pymupdf.TOOLS.mupdf_display_errors(False)
pymupdf.TOOLS.mupdf_display_warnings(False)

PDF_EXTS = {".pdf"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"}
DEFAULT_DPI = 144
#: Rendered pages larger than this are rendered at a lower dpi (Pillow's bomb limit).
MAX_PAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class InputError(Exception):
    """A document cannot be read; the message says why in a few words."""


@dataclass(frozen=True)
class InputDoc:
    """One document to convert."""

    path: str  # file to read (a temp file for stdin bytes)
    display: str  # how messages and results name it
    rel: str  # output path relative to -o DIR, without suffix (POSIX separators)
    kind: str  # "pdf" or "image"


def sniff(head: bytes) -> str | None:
    """Return "pdf", "image" or None from a file's first bytes."""
    if head.startswith(b"%PDF-"):
        return "pdf"
    image_magics = (
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"II*\x00",
        b"MM\x00*",
        b"GIF87a",
        b"GIF89a",
        b"BM",
    )
    if head.startswith(image_magics) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    return None


def _read_head(path: str, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _kind_for(path: str) -> str | None:
    """Kind of a file found while walking a folder: by extension, else by content."""
    ext = os.path.splitext(path)[1].lower()
    if ext in PDF_EXTS:
        return "pdf"
    if ext in IMAGE_EXTS:
        return "image"
    try:
        return sniff(_read_head(path))
    except OSError:
        return None


def file_digest(path: str) -> str:
    """SHA-256 of a file's content (resume keys on content, not on mtime)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- opening and rendering


def _open_pdf(path: str) -> pymupdf.Document:
    if os.path.getsize(path) == 0:
        raise InputError("empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(1024)
    if b"%PDF-" not in head:
        raise InputError("not a PDF or image (unrecognised content)")
    try:
        doc = _mupdf_open(path)
    except Exception as e:  # pymupdf raises several types for broken files
        raise InputError(f"corrupt PDF ({_short(e)})") from None
    if doc.needs_pass:
        raise InputError("encrypted PDF (password required)")
    if doc.page_count == 0:
        raise InputError("PDF has no pages")
    return doc


def _mupdf_open(path: str) -> pymupdf.Document:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        # MuPDF takes UTF-8 names only; a name with undecodable bytes is opened through its
        # descriptor (MuPDF opens the file itself at once, so ours can be closed after).
        fd = os.open(path, os.O_RDONLY)
        try:
            return pymupdf.open(f"/proc/self/fd/{fd}", filetype="pdf")
        finally:
            os.close(fd)
    return pymupdf.open(path, filetype="pdf")


def _open_image(path: str) -> Image.Image:
    if os.path.getsize(path) == 0:
        raise InputError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns before it refuses; we want the refusal as an error, once.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.size  # noqa: B018 - forces the header parse
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"image too large ({_short(e)})") from None
    except Exception:
        raise InputError("not a PDF or image (unrecognised content)") from None
    return img


def count_pages(doc: InputDoc) -> int:
    """Number of pages (PDF pages, image frames for TIFF, 1 otherwise); raises InputError."""
    if doc.kind == "pdf":
        with _open_pdf(doc.path) as pdf:
            return pdf.page_count
    img = _open_image(doc.path)
    try:
        if img.format == "TIFF":
            return getattr(img, "n_frames", 1)
        return 1
    finally:
        img.close()


class PageRenderer:
    """Renders pages of one document; keeps the document open between pages."""

    def __init__(self) -> None:
        self._key: tuple[str, int, int] | None = None
        self._pdf: pymupdf.Document | None = None

    def render(self, doc: InputDoc, index: int, dpi: int = DEFAULT_DPI) -> PageImage:
        """Render page ``index`` (0-based) of ``doc`` as RGB; raises InputError."""
        if doc.kind == "pdf":
            return self._render_pdf(doc, index, dpi)
        return _render_image(doc, index)

    def pdf_page(self, doc: InputDoc, index: int) -> pymupdf.Page:
        """Page ``index`` of the PDF ``doc`` (kept open for the next page); raises InputError."""
        st = os.stat(doc.path)
        key = (doc.path, st.st_mtime_ns, st.st_size)  # a rewritten file must be reopened
        if self._key != key:
            self.close()
            self._pdf = _open_pdf(doc.path)
            self._key = key
        assert self._pdf is not None
        pymupdf.TOOLS.mupdf_warnings(reset=True)  # what opening said is not this page's
        try:
            return self._pdf[index]
        except Exception as e:
            raise InputError(f"cannot render ({_short(e)})") from None

    def _render_pdf(self, doc: InputDoc, index: int, dpi: int) -> PageImage:
        page = self.pdf_page(doc, index)
        try:
            eff_dpi = page_dpi(page, dpi)
            pix = page.get_pixmap(dpi=eff_dpi, alpha=False, colorspace=pymupdf.csRGB)
            img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"cannot render ({_short(e)})") from None
        damage = page_damage(pymupdf.TOOLS.mupdf_warnings(reset=True))
        if damage:
            raise InputError(f"damaged PDF: {damage}")
        return PageImage(source=doc.display, index=index, image=img, dpi=eff_dpi)

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
        self._pdf = None
        self._key = None


#: MuPDF warnings, while a page loads and renders, that mean content was lost. A truncated
#: PDF opens "repaired" and renders blank pages; doc.is_repaired cannot tell (harmless xref
#: damage sets it too, with every page intact), but these words come only with lost content.
DAMAGE_WARNINGS = (
    "cannot load content stream",
    "premature end",
    "object is not a stream",
    "non-page object in page tree ()",
    "cannot find object",
    "object out of range",
    "unexpected eof",
    "syntax error in content stream",
)


def page_damage(warnings_text: str) -> str | None:
    """The first of MuPDF's warnings that says a page lost content (None: page intact)."""
    lines = warnings_text.splitlines()
    for word in DAMAGE_WARNINGS:  # the most telling words first
        for line in lines:
            if word in line.lower():
                return line.strip().removeprefix("format error: ").removesuffix(" ()")
    return None


def page_dpi(page: pymupdf.Page, dpi: int) -> int:
    """The dpi ``page`` is rendered at: ``dpi``, or less for a page too large for it."""
    w_in, h_in = page.rect.width / 72, page.rect.height / 72
    if w_in * h_in * dpi * dpi > MAX_PAGE_PIXELS:
        # A poster-sized page at full dpi would be a decompression bomb of our own making;
        # render it smaller and record the dpi actually used.
        return int((MAX_PAGE_PIXELS / (w_in * h_in)) ** 0.5)
    return int(dpi)


def _render_image(doc: InputDoc, index: int) -> PageImage:
    img = _open_image(doc.path)
    try:
        frame = img
        if index:
            frame = ImageSequence.Iterator(img)[index]
        frame.load()
        dpi_info = frame.info.get("dpi")
        # Cameras and scanners store the page's rotation as an EXIF tag, not in the pixels.
        rgb = _to_rgb(ImageOps.exif_transpose(frame) or frame)
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large ({_short(e)})") from None
    except (OSError, SyntaxError, ValueError, IndexError) as e:
        reason = "truncated image" if "truncated" in str(e) else f"unreadable image ({_short(e)})"
        raise InputError(reason) from None
    finally:
        img.close()
    # An image's own dpi is only a hint (often absent or 72); boxes stay in its pixels.
    dpi = float(dpi_info[0]) if isinstance(dpi_info, tuple) and dpi_info and dpi_info[0] else None
    if dpi is not None and dpi < 10:
        dpi = None  # TIFFs without a resolution tag report 1 dpi: that is "unknown"
    return PageImage(source=doc.display, index=index, image=rgb, dpi=dpi)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white paper, not black.
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]


def parse_page_ranges(spec: str | None) -> list[tuple[int, int | None]] | None:
    """Parse ``1-3,7,10-`` into inclusive 1-based ranges (None end = to the last page)."""
    if spec is None or spec.strip() == "":
        return None
    ranges: list[tuple[int, int | None]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                start = int(a) if a.strip() else 1
                end = int(b) if b.strip() else None
            else:
                start = end = int(part)
        except ValueError:
            raise ValueError(f"bad page range {part!r} (use e.g. 1-3,7,10-)") from None
        if start < 1 or (end is not None and end < start):
            raise ValueError(f"bad page range {part!r} (pages count from 1)")
        ranges.append((start, end))
    return ranges


def select_pages(ranges: list[tuple[int, int | None]] | None, page_count: int) -> list[int]:
    """0-based page indices chosen by ``ranges`` in a document of ``page_count`` pages."""
    if ranges is None:
        return list(range(page_count))
    chosen: set[int] = set()
    for start, end in ranges:
        stop = page_count if end is None else min(end, page_count)
        chosen.update(range(start - 1, stop))
    return sorted(chosen)


def __getattr__(name: str) -> object:
    # discover() moved to ocrpress.discovery; it stays importable from here (lazily, as
    # discovery imports this module).
    if name == "discover":
        from .discovery import discover

        return discover
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
