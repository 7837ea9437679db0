"""Writers: turn results into Markdown, JSON or plain text, and write files atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable

from ..document import DocumentResult, PageResult
from .json import document_json, page_jsonl
from .markdown import document_markdown, page_markdown
from .text import document_text, page_text

#: format name -> file suffix (``layout`` is a folder of pictures, see writers.layout_png)
FORMATS: dict[str, str] = {"markdown": ".md", "json": ".json", "text": ".txt", "layout": "_layout"}
FORMAT_ALIASES = {"md": "markdown", "txt": "text", "jsonl": "json"}
#: Formats written as picture folders: they need -o DIR and the input file itself.
PICTURE_FORMATS = frozenset({"layout"})

# mkstemp creates 0600 files; outputs should get the user's usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)

#: Separator between pages (and documents) in text and Markdown streams, as pdftotext does.
PAGE_SEPARATOR = "\f\n"

DocumentRenderer = Callable[[DocumentResult, bool], str]
PageRenderer = Callable[[PageResult, bool], str]

_DOC: dict[str, DocumentRenderer] = {
    "markdown": lambda d, raw: document_markdown(d),
    "json": document_json,
    "text": lambda d, raw: document_text(d),
}
_PAGE: dict[str, PageRenderer] = {
    # A stream mixes documents: each page says where it comes from.
    "markdown": lambda p, raw: (
        f"<!-- {p.source} page {p.index + 1} -->\n\n{page_markdown(p)}\n{PAGE_SEPARATOR}"
    ),
    "json": page_jsonl,
    "text": lambda p, raw: page_text(p) + "\n" + PAGE_SEPARATOR,
}


def parse_formats(spec: str) -> list[str]:
    """``"markdown,json"`` -> ``["markdown", "json"]``; raises ValueError on unknown names."""
    out: list[str] = []
    for name in spec.split(","):
        name = FORMAT_ALIASES.get(name.strip().lower(), name.strip().lower())
        if not name:
            continue
        if name not in FORMATS:
            raise ValueError(f"unknown format {name!r} (choose from {', '.join(FORMATS)})")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no output format given")
    return out


def check_output(formats: list[str], output: str | None) -> None:
    """Raise ValueError when ``formats`` cannot go where ``output`` points (stdout, memory)."""
    pictures = [f for f in formats if f in PICTURE_FORMATS]
    if pictures and output in (None, "-"):
        why = "and cannot go to stdout" if output == "-" else "but no output folder was given"
        raise ValueError(f"-f {pictures[0]} writes pictures into a folder {why}: give -o DIR")


def render_document(doc: DocumentResult, fmt: str, keep_raw: bool = False) -> str:
    """The whole file content of ``doc`` in format ``fmt`` (not for picture formats)."""
    if fmt in PICTURE_FORMATS:
        raise ValueError(f"{fmt} is a folder of pictures, not a file: see writers.layout_png")
    return _DOC[fmt](doc, keep_raw)


def render_page_stream(page: PageResult, fmt: str, keep_raw: bool = False) -> str:
    """One page as streamed to stdout: a JSON line, or text/Markdown ending in a form feed."""
    return _PAGE[fmt](page, keep_raw)


def atomic_write(path: str, data: str | bytes) -> None:
    """Write via a temp file in the same folder and rename, so no partial file is ever seen."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ocrpress-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
