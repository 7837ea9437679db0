"""The Ray run's engine stage: :class:`OcrActor`, one engine replica in Ray's actor pool.

Ray hands an actor batches of page rows (from :mod:`ocrpress.cluster_render`); the actor
batches them by the engine's batch keys, backs off after a CUDA out-of-memory error, stores
each result as a shard and finishes the documents whose last pages it converted. It answers
one row per document touched, with this call's device use on the first, for the driver.

An engine that streams (DeepSeek) keeps one decode going across calls, as the pipeline's
:class:`~ocrpress.stream_runner.StreamRunner` does across batches: each call's pages join the
actor's running decode, and where Ray runs two calls of an actor at once
(:func:`actor_compute`), the next call's pages fill the slots the last one's longest pages leave,
instead of the GPU decoding a call's tail with its other slots empty. Other engines run one
call's batches at a time.
"""

from __future__ import annotations

import gc
import inspect
import json
import threading
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

from .backoff import BatchLimit, free_cuda_cache, limited_batch
from .cluster_shards import Job, finish_document, input_doc, store_shard
from .document import PageImage, PageResult
from .engines import Usage, create_engine
from .errors import describe
from .figures import crop_figures
from .stream_runner import StreamRunner, Streams

#: The device-use counters every answer row carries (the driver sums them into the stats).
USAGE_FIELDS = ("device_seconds", "slot_tokens", "slot_capacity", "parked")

#: Calls Ray runs in an actor at once: one whose pages decode, one whose pages join as the
#: first one's pages end.
CALLS_PER_ACTOR = 2

Chunk = list[tuple[dict[str, Any], PageImage]]


def actor_compute(ray: Any, size: int) -> tuple[Any, dict[str, Any]]:
    """Ray Data's pool of ``size`` actors and the actors' Ray options: each actor runs
    :data:`CALLS_PER_ACTOR` calls at once where this Ray can (``enable_true_multi_threading``:
    Ray 2.60 has it), and is sent no more than that: a call queued behind them would wait on
    this actor at the end of the job while another actor idles. Without the option an actor
    runs its calls one by one, each still one decode across its batches."""
    strategy = ray.data.ActorPoolStrategy
    params = inspect.signature(strategy).parameters
    if "enable_true_multi_threading" not in params:
        return strategy(size=size), {}
    kwargs: dict[str, Any] = {"size": size, "enable_true_multi_threading": True}
    if "max_tasks_in_flight_per_actor" in params:
        kwargs["max_tasks_in_flight_per_actor"] = CALLS_PER_ACTOR
    if "max_concurrent_calls_per_actor" in params:
        return strategy(**kwargs, max_concurrent_calls_per_actor=CALLS_PER_ACTOR), {}
    return strategy(**kwargs), {"max_concurrency": CALLS_PER_ACTOR}


class OcrActor:
    """One engine replica; Ray gives it its own GPU (CUDA_VISIBLE_DEVICES) when it asks.
    Calls may run at once (:func:`actor_compute`): the engine is only ever used by one of them,
    or by the stream's device thread."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.opts = Job(**job).convert_options()
        self.engine = create_engine(self.opts.engine)
        self.limit = BatchLimit()  # lowered after a CUDA out-of-memory error in this replica
        self._lock = threading.Lock()  # the engine and the limit, between concurrent calls
        # One decode across calls (the truncation retry is a per-batch step: no stream).
        streams = isinstance(self.engine, Streams) and not self.opts.retry_truncated
        self.runner = StreamRunner(self.engine) if streams else None

    def __del__(self) -> None:
        # Ray Data calls it as the pool shuts down: the decode's thread ends with the actor.
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close(wait=False)

    def __call__(self, batch: Any) -> Any:
        import pandas as pd
        from PIL import Image

        rows = batch.to_dict("records")
        out: list[dict[str, Any]] = []
        pages: Chunk = []
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
        usage = Usage()  # this call's device use
        for chunk, (results, forced, used) in self._run(self._chunks(pages)):
            usage.device_seconds += used.device_seconds
            usage.slot_tokens += used.slot_tokens
            usage.slot_capacity += used.slot_capacity
            usage.parked += used.parked
            with self._lock:
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
            r |= asdict(usage) if i == 0 else asdict(Usage())
        return pd.DataFrame(out, columns=["order", "finished", "error", "pages", *USAGE_FIELDS])

    def _chunks(self, pages: Chunk) -> list[Chunk]:
        """The call's engine batches: equal batch keys together (prompt lengths match: no
        padding), at most the batch size in force."""
        groups: dict[Any, Chunk] = {}
        for item in pages:
            groups.setdefault(self.engine.plan(item[1]).batch_key, []).append(item)
        with self._lock:
            size = self.limit.cap(self.engine.max_batch_size)
        return [g[k : k + size] for g in groups.values() for k in range(0, len(g), size)]

    def _run(self, chunks: list[Chunk]) -> Any:
        """``(chunk, (results, forced batch size, usage))`` for each chunk, in order."""
        if self.runner is not None:
            with self._lock:
                if self.runner.dead:  # a bug killed its thread: later calls get a new one
                    gc.collect()  # the dead stream's memory first
                    free_cuda_cache()
                    self.runner = StreamRunner(self.engine)
                runner = self.runner
            futures: list[Future[Any]] = [runner.submit([p for _, p in c], False) for c in chunks]
            for chunk, fut in zip(chunks, futures, strict=True):
                try:
                    outcome = runner.result(fut)
                except Exception as e:  # the device thread died: the pages fail, not the job
                    failed = [PageResult.failed(p, self.engine.name, describe(e)) for _, p in chunk]
                    outcome = (failed, 0, Usage())
                yield chunk, outcome
            return
        for chunk in chunks:
            with self._lock:
                outcome = limited_batch(
                    self.engine, [p for _, p in chunk], self.opts.retry_truncated
                )
            yield chunk, outcome

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
