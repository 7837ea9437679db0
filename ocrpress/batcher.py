"""The batcher: rendered pages -> buckets of equal batch key -> engine batches -> results.

It keeps the render window full so the engine never waits for pages, never holds more than
``window`` pages in flight (rendering, buffered in a bucket, or in the engine), sends a full
batch as soon as one bucket has it and a partial one only when nothing more can arrive, and
hands every result to the :class:`~ocrpress.ledger.Ledger`. Where batches run is a
:class:`~ocrpress.runners.Runner`: the engine in this process, or a pool of device workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from .backoff import BatchLimit
from .devices import Planner
from .document import PageImage, PageResult
from .engines.page_inputs import discard_prepared
from .errors import describe
from .escalation import Escalator
from .ledger import DocState, Ledger
from .render import RenderQueue
from .routing import TextLayerPage
from .runners import Runner
from .stats import RunStats

Batch = list[tuple[DocState, PageImage]]


class Batcher:
    """One run's main loop; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        renders: RenderQueue,
        planner: Planner,
        runner: Runner,
        limit: BatchLimit,
        stats: RunStats,
        retry_truncated: bool = False,
        escalator: Escalator | None = None,
    ) -> None:
        self.ledger = ledger
        self.renders = renders
        self.planner = planner
        self.runner = runner
        self.limit = limit  # lowered after a CUDA out-of-memory error, may grow back
        self.stats = stats
        self.retry_truncated = retry_truncated
        self.escalator = escalator  # --mode auto: pages whose mode was too small go again
        self.buckets: dict[Any, Batch] = {}
        self.buffered = 0  # pages waiting in buckets

    def run(
        self,
        max_batch: int,
        window: int,
        first_batch: int | None = None,
        tasks: Iterator[tuple[DocState, int]] | None = None,
    ) -> None:
        """Convert every page the ledger wants, ``max_batch`` pages a batch at most.

        With ``first_batch``, batches start that small and double up to ``max_batch``: the
        engine starts on the first pages rendered instead of idling until a full batch is
        (316 prepared gundam pages for 79 decode slots), and each batch runs while the
        next, twice its size, is rendered. ``tasks``: the ledger's page tasks, when some were
        already sent to the render queue (pages rendered while the model loaded).
        """
        renders, runner = self.renders, self.runner
        ramp = min(first_batch or max_batch, max_batch)
        tasks = self.ledger.page_tasks() if tasks is None else tasks
        # Batches in the engine(s): future -> its pages (kept here for figure crops).
        running: dict[Any, Batch] = {}
        exhausted = False
        while True:
            # Results of finished batches first: they free window room and devices.
            for fut in [f for f in running if f.done()]:
                self._collect(fut, running.pop(fut), max_batch)
            in_engine = sum(len(b) for b in running.values())
            # Keep the render window full so the engine never waits for pages.
            while (
                not exhausted
                and renders.accepting
                and len(renders) + self.buffered + in_engine < window
            ):
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    break
                st, idx = task
                renders.submit((st, idx), st.doc, idx)
            self._bucket_rendered()
            limit = min(self.limit.cap(max_batch), ramp)
            key = None
            if len(running) < runner.capacity:
                key = next((k for k, v in self.buckets.items() if len(v) >= limit), None)
                full = self.buffered + in_engine >= window
                if key is None and self.buckets and not len(renders) and (exhausted or full):
                    # Nothing more can arrive (end of input, or the window is all buffered
                    # in buckets of different keys): a partial batch must go.
                    key = max(self.buckets, key=lambda k: len(self.buckets[k]))
            if key is not None:
                batch = self._take(key, limit)
                fut = runner.submit([p for _, p in batch], self.retry_truncated)
                running[fut] = batch
                ramp = min(max_batch, 2 * ramp)
                del batch, fut  # a finished batch's images must not outlive it
                continue
            if len(renders) or running:
                # Wait for the oldest page in flight or any batch, whichever comes first.
                waits = list(running)
                if renders.head() is not None:
                    waits.append(renders.head())
                if waits:
                    wait(waits, return_when=FIRST_COMPLETED)
                continue
            if exhausted:
                break

    def _bucket_rendered(self) -> None:
        """Rendered pages (in order) go into buckets of equal batch key, or straight to the
        ledger when they need no engine (text-layer pages) or cannot go to one (errors)."""
        planner = self.planner
        for (st, idx), page in self.renders.ready():
            if st.finished:  # the document failed while this page was in flight
                discard_prepared(page)
                continue
            if not isinstance(page, (str, TextLayerPage)):
                try:
                    key = planner.plan(page).batch_key
                except Exception as e:  # isolation rule: this page's error only
                    page = f"cannot plan the page ({describe(e)})"
            if isinstance(page, str):
                res = PageResult.unrendered(st.doc.display, idx, planner.name, planner.model, page)
                self.ledger.record(st, res, None)
                continue
            if isinstance(page, TextLayerPage):
                # Read from its text layer: no batch slot, no engine, no GPU.
                self.ledger.record(st, page.result, page.image)
                continue
            page.doc_key = str(st.order)
            self._bucket(st, page, key)
            page = None  # the bucket holds the only reference now

    def _bucket(self, st: DocState, page: PageImage, key: Any) -> None:
        self.buckets.setdefault(key, []).append((st, page))
        self.buffered += 1

    def _take(self, key: Any, n: int) -> Batch:
        items = self.buckets[key]
        batch, rest = items[:n], items[n:]
        if rest:
            self.buckets[key] = rest
        else:
            del self.buckets[key]
        self.buffered -= len(batch)
        return batch

    def _collect(self, fut: Any, batch: Batch, max_batch: int) -> None:
        results, lowered, usage = self.runner.result(fut)
        self.stats.add_usage(usage)
        if lowered:
            self.limit.lower(lowered)  # a CUDA out-of-memory error somewhere
        else:
            self.limit.succeeded(max_batch)
        for (st, page), res in zip(batch, results, strict=True):
            if st.finished:
                continue  # failed meanwhile: not read again in another mode either
            if self.escalator is not None:
                kept = self.escalator.review(page, res)
                if kept is None:  # read it again in the costlier mode its estimate now has
                    self._bucket(st, page, self.planner.plan(page).batch_key)
                    continue
                res = kept
            self.ledger.record(st, res, page)
