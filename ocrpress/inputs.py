"""Inputs: find documents (files, folders, globs, stdin) and render their pages to images.

Everything here runs without torch so that render workers start fast.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import glob
import hashlib
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


def _hidden(rel_parts: Iterable[str]) -> bool:
    return any(p.startswith(".") for p in rel_parts)


class _Walk:
    """Walks folders for discover(): says what it skips, never enters the output folder.

    Symbolic links to folders are not followed (no loops, no file seen twice); links to
    files are. Unreadable folders, dangling links and non-regular files (FIFOs, sockets,
    devices) with a document's name become problem lines instead of being skipped silently.
    """

    def __init__(self, exclude: Iterable[str], problems: list[str], notes: list[str]) -> None:
        self.exclude = {os.path.realpath(e) for e in exclude}
        self.problems = problems
        self.notes = notes

    def files(self, folder: str, depth: int | None = None) -> Iterator[str]:
        """Every file path under ``folder`` (hidden ones skipped, at most ``depth`` folders
        down), sorted."""
        if os.path.realpath(folder) in self.exclude:
            self.notes.append(f"{_printable(folder)}: skipped, it is the output folder")
            return

        def onerror(e: OSError) -> None:
            where = _printable(e.filename or folder)
            self.problems.append(f"{where}: cannot read folder ({e.strerror or e}), skipped")

        top = folder.rstrip(os.sep).count(os.sep)
        for root, dirs, names in os.walk(folder, onerror=onerror):
            if depth is not None and root.rstrip(os.sep).count(os.sep) - top >= depth - 1:
                dirs[:] = []
            keep = []
            for d in sorted(dirs):
                path = os.path.join(root, d)
                if d.startswith("."):
                    continue
                if os.path.realpath(path) in self.exclude:
                    self.notes.append(f"{_printable(path)}: skipped, it is the output folder")
                    continue
                keep.append(d)
            dirs[:] = keep
            for name in sorted(names):
                if not name.startswith("."):
                    yield os.path.join(root, name)

    def documents(self, paths: Iterable[str]) -> Iterator[str]:
        """The paths that are documents; odd files with a document's name are reported."""
        for path in paths:
            problem = _not_regular(path)
            if problem is None:
                if _kind_for(path):
                    yield path
            elif os.path.splitext(path)[1].lower() in PDF_EXTS | IMAGE_EXTS:
                self.problems.append(f"{_printable(path)}: {problem}, skipped")


def _not_regular(path: str) -> str | None:
    """Why ``path`` cannot be read as a document file (None for a regular file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "no such file"
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISFIFO(st.st_mode):
        return "not a regular file (a FIFO: reading it could block forever)"
    if stat.S_ISSOCK(st.st_mode):
        return "not a regular file (a socket)"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "not a regular file (a device)"
    return "not a regular file"


def _glob_match(parts: tuple[str, ...], pats: tuple[str, ...]) -> bool:
    """Match path components against glob components; ``**`` spans any number of them."""
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_glob_match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and _component(pats[0]).match(parts[0]) is not None
        and _glob_match(parts[1:], pats[1:])
    )


_COMPONENTS: dict[str, re.Pattern[str]] = {}


def _component(pat: str) -> re.Pattern[str]:
    if pat not in _COMPONENTS:
        _COMPONENTS[pat] = re.compile(fnmatch.translate(pat))
    return _COMPONENTS[pat]


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
    args: Iterable[str],
    stdin: BinaryIO | None = None,
    *,
    exclude: Iterable[str] = (),
    notes: list[str] | None = None,
) -> tuple[list[InputDoc], list[str]]:
    """Expand CLI arguments into documents.

    Returns (documents, problems): problems are one-line messages for arguments that match
    nothing and for anything skipped that looked like a document (unreadable folders, broken
    links, FIFOs). Folders in ``exclude`` (the output folder) are never entered; informational
    lines about such skips go to ``notes``. ``-`` reads stdin: a document's raw bytes when
    stdin starts with PDF or image magic bytes, otherwise newline-separated paths (each
    expanded like an argument).
    """
    found: list[tuple[str, str, str, str]] = []  # path, display, rel-with-ext, kind
    problems: list[str] = []
    walker = _Walk(exclude, problems, notes if notes is not None else [])
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        if arg == "-":
            data = (stdin or sys.stdin.buffer).read()
            kind = sniff(data[:16])
            if kind:
                found.append((_spool_stdin(data), "<stdin>", "stdin" + _ext_for(data), kind))
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = "\0"  # binary: refused below
            if "\0" in text:
                problems.append("<stdin>: neither a PDF or image nor a list of paths (binary)")
                continue
            lines = [ln.strip() for ln in text.splitlines()]
            pending[0:0] = [ln for ln in lines if ln and ln != "-"]
            continue
        if os.path.isdir(arg):
            before = len(problems)
            entries = list(walker.documents(walker.files(arg)))
            if (
                not entries
                and len(problems) == before
                and os.path.realpath(arg) not in (walker.exclude)
            ):
                problems.append(f"{_printable(arg)}: folder holds no PDF or image files")
            for path in entries:
                found.append((path, path, os.path.relpath(path, arg), _kind_for(path) or "pdf"))
            continue
        if os.path.lexists(arg):
            problem = _not_regular(arg)
            if problem is not None:
                problems.append(f"{_printable(arg)}: {problem}")
                continue
            kind = _kind_for(arg) or _kind_by_extension_fallback(arg)
            found.append((arg, arg, os.path.basename(arg), kind))
            continue
        if glob.has_magic(arg):
            base = _glob_base(arg)
            pats = Path(os.path.relpath(arg, base)).parts if base != "." else Path(arg).parts
            depth = None if "**" in pats else len(pats)
            rels = [os.path.relpath(p, base) for p in walker.files(base, depth)]
            hits = [base + os.sep + r if base != "." else r for r in rels if _glob_hit(r, pats)]
            matches = list(walker.documents(hits))
            if not matches:
                problems.append(f"{_printable(arg)}: pattern matches no PDF or image files")
            for path in matches:
                found.append((path, path, os.path.relpath(path, base), _kind_for(path) or "pdf"))
            continue
        problems.append(f"{_printable(arg)}: no such file or folder")
    return _assign_rels(found), problems


def _glob_hit(rel: str, pats: tuple[str, ...]) -> bool:
    # Globs are matched against a walk of their base (symlinked folders not followed), not
    # expanded with glob.glob: that follows symlink loops and takes exponential time.
    parts = Path(rel).parts
    return not _hidden(parts) and _glob_match(parts, pats)


def _kind_by_extension_fallback(path: str) -> str:
    # A named file with unknown content still gets a try: opening it yields the clear error.
    return "image" if os.path.splitext(path)[1].lower() in IMAGE_EXTS else "pdf"


#: Output names an input may never take: the run statistics and the state folder.
RESERVED_NAMES = frozenset({"_ocrpress_run", ".ocrpress"})
#: Longest file-name component of an output name, in bytes: 255 minus the longest suffix
#: ocrpress adds (``.journal.jsonl``), so every state file fits the usual name limit.
MAX_NAME_BYTES = 255 - len(".journal.jsonl")


def _printable(name: str) -> str:
    """A name as messages and results show it: undecodable bytes become U+FFFD."""
    return os.fsencode(name).decode("utf-8", errors="replace")


def _fit_name(stem: str) -> str:
    """Shorten an over-long last path component: its start, ``~`` and a hash of the whole."""
    head, _, last = stem.rpartition("/")
    raw = os.fsencode(last)
    if len(raw) <= MAX_NAME_BYTES:
        return stem
    digest = hashlib.sha256(raw).hexdigest()[:12]
    short = raw[: MAX_NAME_BYTES - 13].decode("utf-8", errors="ignore")
    return (head + "/" if head else "") + f"{short}~{digest}"


def _assign_rels(found: list[tuple[str, str, str, str]]) -> list[InputDoc]:
    """Give every document its own output name; no two inputs may write the same file.

    Names mirror input paths (relative to the folder or glob base they came from; named files
    by their base name). Inputs that would still share a name keep as much of their folder as
    tells them apart (``x/a.png``, ``y/a.png``), and ``a.pdf`` beside ``a.png`` keeps its
    extension (``a.pdf.md``, ``a.png.md``). Whatever still clashes (``a.pdf.png`` beside
    those two), or would take a reserved name (``_ocrpress_run``), gets ``-2``, ``-3`` … in
    input order; a name over 241 bytes is cut and ends in ``~`` and a hash.
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
    exts: dict[str, set[str]] = {}
    for item in unique:
        exts.setdefault(_stem_rel(item[2]), set()).add(os.path.splitext(item[2])[1])
    docs = []
    taken = set(RESERVED_NAMES)
    for path, display, rel, kind in unique:
        stem = _stem_rel(rel)
        if len(exts[stem]) > 1:
            stem = rel.replace(os.sep, "/")
        stem = _fit_name(stem.lstrip("/"))
        name, n = stem, 1
        while name in taken or name.split("/", 1)[0] in RESERVED_NAMES:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        docs.append(InputDoc(path=path, display=_printable(display), rel=name, kind=kind))
    return docs


def _ext_for(data: bytes) -> str:
    return ".pdf" if data.startswith(b"%PDF-") else ".img"


_SPOOLED: list[int] = []  # open descriptors of unlinked stdin spools (kept for the run)


def _spool_stdin(data: bytes) -> str:
    """Keep stdin bytes in a temp file so render workers can open them by path.

    On Linux the file is unlinked at once and named by ``/proc/PID/fd/N``, which workers
    (same user) can open: nothing is left in the temp folder even after ``kill -9``.
    """
    fd, path = tempfile.mkstemp(prefix="ocrpress-stdin-", suffix=_ext_for(data))
    _write_all(fd, data)
    proc_path = f"/proc/{os.getpid()}/fd/{fd}"
    if os.path.exists(proc_path):
        os.unlink(path)
        _SPOOLED.append(fd)
        return proc_path
    os.close(fd)
    atexit.register(_remove_quietly, path)
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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

    def _render_pdf(self, doc: InputDoc, index: int, dpi: int) -> PageImage:
        st = os.stat(doc.path)
        key = (doc.path, st.st_mtime_ns, st.st_size)  # a rewritten file must be reopened
        if self._key != key:
            self.close()
            self._pdf = _open_pdf(doc.path)
            self._key = key
        assert self._pdf is not None
        pymupdf.TOOLS.mupdf_warnings(reset=True)  # what opening said is not this page's
        try:
            page = self._pdf[index]
            w_in, h_in = page.rect.width / 72, page.rect.height / 72
            eff_dpi = int(dpi)
            if w_in * h_in * dpi * dpi > MAX_PAGE_PIXELS:
                # A poster-sized page at full dpi would be a decompression bomb of our own
                # making; render it smaller and record the dpi actually used.
                eff_dpi = int((MAX_PAGE_PIXELS / (w_in * h_in)) ** 0.5)
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
