"""The Ray run's engine stage: :class:`OcrActor`, one engine replica in Ray's actor pool.

Ray hands an actor batches of page rows (from :mod:`ocrpress.cluster_render`); the actor
batches them by the engine's batch keys, backs off after a CUDA out-of-memory error, stores
each result as a shard and finishes the documents whose last pages it converted. It answers
one row per document touched, with this call's device use on the first, for the driver.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from .backoff import BatchLimit, limited_batch
from .cluster_shards import Job, finish_document, input_doc, store_shard
from .document import PageImage, PageResult
from .engines import Usage, create_engine
from .figures import crop_figures

#: The device-use counters every answer row carries (the driver sums them into the stats).
USAGE_FIELDS = ("device_seconds", "slot_tokens", "slot_capacity")


class OcrActor:
    """One engine replica; Ray gives it its own GPU (CUDA_VISIBLE_DEVICES) when it asks."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.opts = Job(**job).convert_options()
        self.engine = create_engine(self.opts.engine)
        self.limit = BatchLimit()  # lowered after a CUDA out-of-memory error in this replica
        self.usage = Usage()  # device use since the last batch of rows went back

    def __call__(self, batch: Any) -> Any:
        import pandas as pd
        from PIL import Image

        rows = batch.to_dict("records")
        out: list[dict[str, Any]] = []
        pages: list[tuple[dict[str, Any], PageImage]] = []
        for row in rows:
            if row["index"] < 0:
                out.append(self._finish(row, row["error"] or None))
                continue
            if row["error"]:
                self._store(row, _failed(row, row["error"], self.engine))
                continue
            w, h = (int(v) for v in row["size"].split("x"))
            image = Image.frombytes("RGB", (w, h), row["image"])
            dpi = json.loads(row["dpi"])
            page = PageImage(row["display"], row["index"], image, dpi, doc_key=str(row["order"]))
            page.notes = json.loads(row["notes"])
            pages.append((row, page))
        # Equal batch keys run together (prompt lengths match: no padding).
        groups: dict[Any, list[tuple[dict[str, Any], PageImage]]] = {}
        for item in pages:
            groups.setdefault(self.engine.plan(item[1]).batch_key, []).append(item)
        for group in groups.values():
            k = 0
            while k < len(group):
                chunk = group[k : k + self.limit.cap(self.engine.max_batch_size)]
                k += len(chunk)
                results, forced, usage = limited_batch(
                    self.engine, [p for _, p in chunk], self.opts.retry_truncated
                )
                self.usage.device_seconds += usage.device_seconds
                self.usage.slot_tokens += usage.slot_tokens
                self.usage.slot_capacity += usage.slot_capacity
                if forced:
                    self.limit.lower(forced)
                else:
                    self.limit.succeeded(self.engine.max_batch_size)
                for (row, page), res in zip(chunk, results, strict=True):
                    res.notes[:0] = page.notes  # why a page with a text layer was OCR'd
                    crop_figures(res, page, self.opts.output or "", row["rel"])
                    self._store(row, res)
        touched = {r["order"]: r for r in rows if r["index"] >= 0}
        for row in touched.values():
            out.append(self._finish(row, None))
        for i, r in enumerate(out):  # this call's device use rides on its first row
            r |= asdict(self.usage) if i == 0 else asdict(Usage())
        if out:
            self.usage = Usage()
        return pd.DataFrame(out, columns=["order", "finished", "error", "pages", *USAGE_FIELDS])

    def _store(self, row: dict[str, Any], res: PageResult) -> None:
        assert self.opts.output is not None
        store_shard(self.opts.output, row, res)

    def _finish(self, row: dict[str, Any], error: str | None) -> dict[str, Any]:
        """The document's row: finished or not, its error, its pages (JSON) when finished."""
        pages: list[PageResult] = []
        finished = True
        if error is None:
            try:
                wanted = json.loads(row["wanted"])
                fp = json.loads(row["fp"])
                finished, error, pages = finish_document(self.opts, input_doc(row), wanted, fp)
            except Exception as e:  # a write failure is this document's error, not the job's
                error = f"cannot write outputs ({type(e).__name__}: {e})"
        return {
            "order": row["order"],
            "finished": finished,
            "error": error or "",
            "pages": json.dumps([p.to_dict(keep_raw=True) for p in pages]),
        }


def _failed(row: dict[str, Any], reason: str, engine: Any) -> PageResult:
    return PageResult.unrendered(row["display"], row["index"], engine.name, engine.model, reason)
