"""What a Ray run keeps on shared storage, and the job every stage receives.

The stages of :mod:`ocrpress.cluster` run on any node, so they share state only through the
output folder (``-o DIR`` on storage every node sees): each finished page is an atomic shard
``DIR/.ocrpress/<rel>.pages/<index>.json`` tagged with its document's fingerprint, and the
worker that finds a document's shards complete writes its outputs with the pipeline's own
writers. This module holds those shards, the document finishing, and :class:`Job`, the run's
options as plain dicts that travel to the workers.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

from .document import PageResult
from .engines import EngineOptions
from .inputs import InputDoc
from .journal import STATE_DIR, document_error, write_document
from .pipeline import ConvertOptions
from .writers import atomic_write


def shard_dir(out_dir: str, rel: str) -> str:
    """The folder of a document's page shards."""
    return os.path.join(out_dir, STATE_DIR, rel + ".pages")


@dataclass
class Job:
    """What every stage needs; travels to the workers as a plain dict."""

    opts: dict[str, Any]
    engine: dict[str, Any]

    def convert_options(self) -> ConvertOptions:
        return ConvertOptions(**self.opts, engine=EngineOptions(**self.engine))


def input_doc(row: dict[str, Any]) -> InputDoc:
    """The document a dataset row names."""
    return InputDoc(path=row["path"], display=row["display"], rel=row["rel"], kind=row["kind"])


def load_shards(out_dir: str, rel: str, fp: dict[str, Any]) -> dict[int, PageResult]:
    """Pages finished by earlier batches (or runs) with the same fingerprint."""
    folder = shard_dir(out_dir, rel)
    found: dict[int, PageResult] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if not name.endswith(".json"):
            continue  # temp files of writes in progress
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if data.get("fingerprint") == fp:
            res = PageResult.from_dict(data["result"])
            found[res.index] = res
    return found


def finish_document(
    opts: ConvertOptions, doc: InputDoc, wanted: list[int], fp: dict[str, Any]
) -> tuple[bool, str | None, list[PageResult]]:
    """Write ``doc``'s outputs if all its pages are finished: (finished, error, pages)."""
    assert opts.output is not None
    done = load_shards(opts.output, doc.rel, fp)
    if any(i not in done for i in wanted):
        return False, None, []
    pages = [done[i] for i in wanted]
    error = document_error(pages)
    if error is None:
        write_document(opts, doc, pages, fp)
        if all(p.status != "error" for p in pages):
            # Failed pages keep their shards' company: the next run redoes only those.
            shutil.rmtree(shard_dir(opts.output, doc.rel), ignore_errors=True)
    return True, error, pages


def store_shard(out_dir: str, row: dict[str, Any], res: PageResult) -> None:
    """Save a finished page for its document (atomic: a killed job resumes page by page)."""
    path = os.path.join(shard_dir(out_dir, row["rel"]), f"{res.index}.json")
    data = {"fingerprint": json.loads(row["fp"]), "result": res.to_dict(keep_raw=True)}
    atomic_write(path, json.dumps(data))
