"""Resume state of an output folder: per-document journals, done markers and fingerprints.

A document's finished pages are appended (fsync'ed) to ``DIR/.ocrpress/REL.journal.jsonl``;
when all its outputs are written atomically, a done marker holding the fingerprint replaces
the journal. A later run skips a document whose marker matches, and resumes one whose journal
header matches, from its last finished page.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

from . import inputs
from .document import SCHEMA_VERSION, DocumentResult, PageResult
from .inputs import InputDoc
from .writers import FORMATS, PICTURE_FORMATS, atomic_write, render_document
from .writers.layout_png import write_layout_pictures

if TYPE_CHECKING:
    from .devices import Planner
    from .engines import EngineOptions
    from .options import ConvertOptions

STATE_DIR = ".ocrpress"


def state_paths(out_dir: str, rel: str) -> tuple[str, str]:
    base = os.path.join(out_dir, STATE_DIR, rel)
    return base + ".journal.jsonl", base + ".done.json"


def output_paths(out_dir: str, rel: str, formats: list[str]) -> list[str]:
    """Final output files of a document (``layout``: its pictures' folder)."""
    return [os.path.join(out_dir, rel + FORMATS[f]) for f in formats]


def fingerprint(doc: InputDoc, planner: Planner, opts: ConvertOptions) -> dict[str, Any]:
    """What decides a document's outputs; a done marker with an equal one means "current"."""
    # An engine handed in ready-made carries its own options; they decide its outputs.
    eng_opts: EngineOptions = getattr(planner, "opts", None) or opts.engine
    return {
        "schema": SCHEMA_VERSION,
        "input_sha256": inputs.file_digest(doc.path),
        "engine": planner.name,
        "model": planner.model,
        "mode": planner.mode,
        "options": eng_opts.fingerprint() | {"engine": planner.name, "mode": planner.mode},
        "formats": sorted(opts.formats),
        "dpi": opts.dpi,
        "pages": opts.pages,
        "keep_raw": opts.keep_raw,
        "ocr": opts.ocr,
    }


def is_current(opts: ConvertOptions, doc: InputDoc, fp: dict[str, Any]) -> bool:
    """True when ``doc``'s outputs under ``opts.output`` are complete and match ``fp``."""
    assert opts.output is not None
    _journal, done_path = state_paths(opts.output, doc.rel)
    return done_matches(done_path, fp, output_paths(opts.output, doc.rel, opts.formats))


def document_error(pages: list[PageResult]) -> str | None:
    """A document whose every page failed is one document error (None otherwise)."""
    if pages and all(p.status == "error" for p in pages):
        reasons = {p.error for p in pages}
        return pages[0].error if len(reasons) == 1 else "no page could be converted"
    return None


def write_document(
    opts: ConvertOptions, doc: InputDoc, pages: list[PageResult], fp: dict[str, Any]
) -> list[str]:
    """Write a finished document's outputs atomically; mark it done if no page failed."""
    assert opts.output is not None
    result = DocumentResult(source=doc.display, pages=pages, rel=doc.rel)
    outputs = output_paths(opts.output, doc.rel, opts.formats)
    for fmt, path in zip(opts.formats, outputs, strict=True):
        if fmt in PICTURE_FORMATS:
            write_layout_pictures(doc, pages, path)  # a folder: page pictures written one by one
        else:
            atomic_write(path, render_document(result, fmt, opts.keep_raw))
    journal_path, done_path = state_paths(opts.output, doc.rel)
    if result.ok:
        # Only a clean document is "done": failed pages are retried by the next run.
        atomic_write(done_path, json.dumps({"fingerprint": fp, "outputs": outputs}))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal_path)
    return outputs


def done_matches(done_path: str, fingerprint: dict[str, Any], outputs: list[str]) -> bool:
    try:
        with open(done_path, encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return False
    if not isinstance(done, dict):  # a marker holding `[]` or a number: not ours, redo
        return False
    return done.get("fingerprint") == fingerprint and all(os.path.exists(p) for p in outputs)


def read_journal(path: str, fingerprint: dict[str, Any]) -> list[PageResult]:
    """Finished pages of an interrupted run with the same fingerprint (a torn line ends it)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - bytes: a line of invalid UTF-8 must end it, not raise
    except OSError:
        return []
    out: list[PageResult] = []
    with f:
        try:
            header = json.loads(f.readline().decode("utf-8"))
        except (OSError, ValueError):
            return []
        if not isinstance(header, dict) or header.get("fingerprint") != fingerprint:
            return []
        for line in f:
            if not line.endswith(b"\n"):
                break  # the write a kill interrupted
            try:
                out.append(PageResult.from_dict(json.loads(line.decode("utf-8"))))
            except (ValueError, KeyError, TypeError, AttributeError):
                break
    return out
