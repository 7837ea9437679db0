"""Discovery: expand CLI arguments (files, folders, globs, stdin) into documents.

It walks folders and globs without following symbolic links to folders (no loops, no
exponential glob), says on stderr what it skips (unreadable folders, broken links, FIFOs,
the output folder), and gives every document an output name no other input and none of
ocrpress's own files can share (the naming rule is in README.md, Outputs).
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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .inputs import IMAGE_EXTS, PDF_EXTS, InputDoc, _kind_for, sniff


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
