"""Inputs: find documents (files, folders, globs, stdin) and render their pages to images.

Everything here runs without torch so that render workers start fast.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pymupdf
from PIL import Image, ImageSequence

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


def _hidden(rel_parts: Iterable[str]) -> bool:
    return any(p.startswith(".") for p in rel_parts)


def _walk(folder: str) -> Iterator[tuple[str, str]]:
    """Yield (path, path relative to folder) for supported files, sorted, hidden ones skipped."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if os.path.isfile(path) and _kind_for(path):
                yield path, os.path.relpath(path, folder)


def _glob_base(pattern: str) -> str:
    """The part of a glob pattern before its first wildcard, as a folder."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return os.path.join(*base) if base else "."


def _stem_rel(rel: str) -> str:
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def discover(
    args: Iterable[str], stdin: BinaryIO | None = None
) -> tuple[list[InputDoc], list[str]]:
    """Expand CLI arguments into documents.

    Returns (documents, problems): problems are one-line messages for arguments that match
    nothing. ``-`` reads stdin: a document's raw bytes when stdin starts with PDF or image
    magic bytes, otherwise newline-separated paths (each expanded like an argument).
    """
    found: list[tuple[str, str, str, str]] = []  # path, display, rel-with-ext, kind
    problems: list[str] = []
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        if arg == "-":
            data = (stdin or sys.stdin.buffer).read()
            kind = sniff(data[:16])
            if kind:
                found.append((_spool_stdin(data), "<stdin>", "stdin" + _ext_for(data), kind))
            else:
                text = data.decode("utf-8", errors="replace")
                lines = [ln.strip() for ln in text.splitlines()]
                pending[0:0] = [ln for ln in lines if ln and ln != "-"]
            continue
        if os.path.isdir(arg):
            entries = list(_walk(arg))
            if not entries:
                problems.append(f"{arg}: folder holds no PDF or image files")
            for path, rel in entries:
                found.append((path, path, rel, _kind_for(path) or "pdf"))
            continue
        if os.path.exists(arg):
            kind = _kind_for(arg) or _kind_by_extension_fallback(arg)
            found.append((arg, arg, os.path.basename(arg), kind))
            continue
        if glob.has_magic(arg):
            base = _glob_base(arg)
            matches = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            matches = [p for p in matches if not _hidden(Path(os.path.relpath(p, base)).parts)]
            matches = [p for p in matches if _kind_for(p)]
            if not matches:
                problems.append(f"{arg}: pattern matches no PDF or image files")
            for path in matches:
                found.append((path, path, os.path.relpath(path, base), _kind_for(path) or "pdf"))
            continue
        problems.append(f"{arg}: no such file or folder")
    return _assign_rels(found), problems


def _kind_by_extension_fallback(path: str) -> str:
    # A named file with unknown content still gets a try: opening it yields the clear error.
    return "image" if os.path.splitext(path)[1].lower() in IMAGE_EXTS else "pdf"


def _assign_rels(found: list[tuple[str, str, str, str]]) -> list[InputDoc]:
    """Give every document its own output name; no two inputs may write the same file.

    Names mirror input paths (relative to the folder or glob base they came from; named files
    by their base name). Inputs that would still share a name keep as much of their folder as
    tells them apart (``x/a.png``, ``y/a.png``), and ``a.pdf`` beside ``a.png`` keeps its
    extension (``a.pdf.md``, ``a.png.md``).
    """
    seen: set[str] = set()
    unique: list[list[str]] = []
    for item in found:
        key = os.path.realpath(item[0])
        if key not in seen:
            seen.add(key)
            unique.append(list(item))
    clashes: dict[str, list[list[str]]] = {}
    for item in unique:
        clashes.setdefault(_stem_rel(item[2]), []).append(item)
    for group in clashes.values():
        folders = {os.path.dirname(os.path.abspath(item[0])) for item in group}
        if len(group) > 1 and len(folders) > 1:
            base = os.path.commonpath(sorted(folders))
            for item in group:
                item[2] = os.path.relpath(os.path.abspath(item[0]), base)
    stems: dict[str, int] = {}
    for item in unique:
        stems[_stem_rel(item[2])] = stems.get(_stem_rel(item[2]), 0) + 1
    docs = []
    for path, display, rel, kind in unique:
        stem = _stem_rel(rel)
        if stems[stem] > 1:
            stem = rel.replace(os.sep, "/")
        docs.append(InputDoc(path=path, display=display, rel=stem.lstrip("/"), kind=kind))
    return docs


def _ext_for(data: bytes) -> str:
    return ".pdf" if data.startswith(b"%PDF-") else ".img"


def _spool_stdin(data: bytes) -> str:
    """Keep stdin bytes in a temp file so render workers can open them by path."""
    fd, path = tempfile.mkstemp(prefix="ocrpress-stdin-", suffix=_ext_for(data))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    atexit.register(_remove_quietly, path)
    return path


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as e:  # pymupdf raises several types for broken files
        raise InputError(f"corrupt PDF ({_short(e)})") from None
    if doc.needs_pass:
        raise InputError("encrypted PDF (password required)")
    if doc.page_count == 0:
        raise InputError("PDF has no pages")
    return doc


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
        return PageImage(source=doc.display, index=index, image=img, dpi=eff_dpi)

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
        self._pdf = None
        self._key = None


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
        rgb = _to_rgb(frame)
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
