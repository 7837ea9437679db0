"""The streaming pipeline: render workers -> batcher -> engine -> results -> writers.

Pages are rendered in worker processes while the engine works on the previous batch; at most
``window`` pages are in flight (rendering, waiting in a bucket, or in the engine), so memory is
bounded by the window, not by document size. Finished pages go to a per-document journal so a
killed run resumes from its last finished page; a document's outputs appear, atomically, when
its last page is done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from . import inputs, journal
from .backoff import BatchLimit, measured_batch
from .devices import DevicePool, Planner, make_planner, resolve_devices
from .document import DocumentResult, PageImage, PageResult
from .engines import Engine, EngineOptions, Usage, create_engine
from .figures import crop_figures
from .inputs import InputDoc, InputError
from .journal import document_error, fingerprint, output_paths, write_document
from .render import InlineFuture, default_workers, main_is_importable, make_pool, render_task
from .stats import RunStats
from .writers import atomic_write, render_page_stream

log = logging.getLogger("ocrpress")

RUN_STATS_FILE = "_ocrpress_run.json"


@dataclass
class ConvertOptions:
    """Options of one conversion run (the CLI's flags, minus the engine's)."""

    output: str | None = None  # folder; "-" streams to stdout; None keeps results in memory
    formats: list[str] = field(default_factory=lambda: ["markdown"])
    dpi: int = inputs.DEFAULT_DPI
    pages: str | None = None
    workers: int | None = None
    window: int | None = None  # pages in flight; None: from batch size and workers
    overwrite: bool = False
    keep_raw: bool = False
    retry_truncated: bool = False
    progress: bool = False
    keep_results: bool = True  # keep page results in the returned DocumentResults
    devices: str | None = None  # "all" or "0,2": one engine replica per GPU (ocrpress.devices)
    engine: EngineOptions = field(default_factory=EngineOptions)


class EngineLoadError(RuntimeError):
    """Raised when the engine cannot start; the whole run stops (exit code 3)."""


# ------------------------------------------------------------------ per-document state


@dataclass
class _DocState:
    doc: InputDoc
    order: int
    fingerprint: dict[str, Any] = field(default_factory=dict)
    wanted: list[int] = field(default_factory=list)
    results: dict[int, PageResult] = field(default_factory=dict)
    error: str | None = None
    skipped: bool = False
    resumed_pages: int = 0
    journal: IO[str] | None = None
    finished: bool = False

    @property
    def complete(self) -> bool:
        return self.error is not None or self.skipped or len(self.results) == len(self.wanted)


class Converter:
    """Runs one conversion; see :func:`convert` for the simple entry point."""

    def __init__(
        self,
        opts: ConvertOptions,
        engine: Engine | None = None,
        stdout: IO[str] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.opts = opts
        self._engine = engine
        self.stdout = stdout or sys.stdout
        self.on_error = on_error or (lambda msg: log.error("%s", msg))
        self.stats = RunStats()
        self.page_ranges = inputs.parse_page_ranges(opts.pages)
        self.to_dir = opts.output not in (None, "-")
        self.limit = BatchLimit()  # lowered after a CUDA out-of-memory error, may grow back
        self._max_batch = 1
        self._planner: Planner | None = None
        self.device_pool: DevicePool | None = None

    # -------------------------------------------------------------- engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            try:
                self._engine = create_engine(self.opts.engine)
            except Exception as e:
                raise EngineLoadError(str(e)) from e
        return self._engine

    @property
    def planner(self) -> Planner:
        """What plans batches here: the engine, or (with devices) a model-free planner."""
        return self._planner if self._planner is not None else self.engine

    def _fingerprint(self, doc: InputDoc) -> dict[str, Any]:
        return fingerprint(doc, self.planner, self.opts)

    # -------------------------------------------------------------- main loop

    def run(self, docs: list[InputDoc]) -> list[DocumentResult]:
        """Convert ``docs``; returns one DocumentResult per document, in input order."""
        self.stats.start()
        workers = self.opts.workers if self.opts.workers is not None else default_workers()
        if workers and not main_is_importable():
            # Worker processes re-import __main__; from `python -` or `-c` there is no file
            # to import, so render in this process instead of failing.
            workers = 0
        devices = self._start_devices()
        pool = make_pool(workers) if workers > 0 else None
        try:
            if devices is None:
                planner: Planner = self.engine  # load the model while the pool spins up
                max_batch = max(1, self.engine.max_batch_size)
                runner: _Runner = _InlineRunner(self)
            else:
                planner = self.planner
                # The replicas' own pages per call (for DeepSeek, 4x --batch-size decode slots).
                max_batch = devices.max_batch_size()
                runner = devices
            self.stats.engine_replicas = runner.capacity
            self.stats.engine_ready = time.perf_counter()
            window = self.opts.window or (
                max(2 * max_batch, max_batch + 2 * max(workers, 1))
                + (runner.capacity - 1) * max_batch  # one more batch per extra replica
            )
            self.stats.engine, self.stats.model, self.stats.mode = (
                planner.name,
                planner.model,
                planner.mode,
            )
            states = self._stream(docs, pool, planner, runner, max_batch, window)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if devices is not None:
                devices.close()
        self.stats.stop()
        if self.to_dir:
            assert self.opts.output is not None
            atomic_write(
                os.path.join(self.opts.output, RUN_STATS_FILE),
                json.dumps(self.stats.to_dict(), indent=2) + "\n",
            )
        return [self._document_result(s) for s in states]

    def _start_devices(self) -> DevicePool | None:
        """With ``devices``: plan without the model and start one worker per device."""
        if not self.opts.devices:
            return None
        if self._engine is not None:
            raise ValueError("devices need an engine name, not an engine instance")
        try:
            ids = resolve_devices(self.opts.devices)
            self._planner, resolved = make_planner(self.opts.engine)
        except EngineLoadError:
            raise
        except Exception as e:
            raise EngineLoadError(str(e)) from e
        log.info("devices: %s (one engine replica each)", ",".join(ids))
        self.device_pool = DevicePool(ids, resolved)
        return self.device_pool

    def _stream(
        self,
        docs: list[InputDoc],
        pool: ProcessPoolExecutor | None,
        engine: Planner,
        runner: _Runner,
        max_batch: int,
        window: int,
    ) -> list[_DocState]:
        states = [_DocState(doc=d, order=i) for i, d in enumerate(docs)]
        progress = _progress_bar(self.opts.progress)
        self._progress = progress
        self._emit_next = 0
        self._states = states
        tasks = self._page_tasks(states)
        rendering: deque[tuple[_DocState, int, Future[Any] | InlineFuture]] = deque()
        buckets: dict[Any, list[tuple[_DocState, PageImage]]] = {}
        # Batches in the engine(s): future -> its pages (kept here for figure crops).
        running: dict[Any, list[tuple[_DocState, PageImage]]] = {}
        buffered = 0
        exhausted = False
        try:
            while True:
                # Results of finished batches first: they free window room and devices.
                for fut in [f for f in running if f.done()]:
                    self._collect(runner, fut, running.pop(fut))
                in_engine = sum(len(b) for b in running.values())
                # Keep the render window full so the engine never waits for pages.
                while not exhausted and len(rendering) + buffered + in_engine < window:
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                        break
                    st, idx = task
                    if pool is None:
                        fut: Any = InlineFuture(render_task(st.doc, idx, self.opts.dpi))
                    else:
                        fut = pool.submit(render_task, st.doc, idx, self.opts.dpi)
                    rendering.append((st, idx, fut))
                # Rendered pages (in order) go into buckets of equal batch key.
                while rendering and rendering[0][2].done():
                    st, idx, fut = rendering.popleft()
                    page = fut.result()
                    if isinstance(page, str):
                        self._record(
                            st,
                            PageResult.unrendered(
                                st.doc.display, idx, engine.name, engine.model, page
                            ),
                            None,
                        )
                        continue
                    page.doc_key = str(st.order)
                    buckets.setdefault(engine.plan(page).batch_key, []).append((st, page))
                    buffered += 1
                    page = fut = None  # the bucket holds the only reference now
                limit = self._limit(max_batch)
                key = None
                if len(running) < runner.capacity:
                    key = next((k for k, v in buckets.items() if len(v) >= limit), None)
                    full = buffered + in_engine >= window
                    if key is None and buckets and not rendering and (exhausted or full):
                        # Nothing more can arrive (end of input, or the window is all buffered
                        # in buckets of different keys): a partial batch must go.
                        key = max(buckets, key=lambda k: len(buckets[k]))
                if key is not None:
                    batch = _take(buckets, key, limit)
                    buffered -= len(batch)
                    fut = runner.submit([p for _, p in batch], self.opts.retry_truncated)
                    running[fut] = batch
                    del batch, fut  # a finished batch's images must not outlive it
                    continue
                if rendering or running:
                    # Wait for the oldest page in flight or any batch, whichever comes first.
                    waits = list(running)
                    if rendering and isinstance(rendering[0][2], Future):
                        waits.append(rendering[0][2])
                    if waits:
                        wait(waits, return_when=FIRST_COMPLETED)
                    continue
                if exhausted:
                    break
        finally:
            progress.close()
            for st in states:
                if st.journal is not None:
                    st.journal.close()
        self._emit_ready()
        return states

    def _limit(self, max_batch: int) -> int:
        self._max_batch = max_batch
        return self.limit.cap(max_batch)

    @property
    def batch_limit(self) -> int:
        """Pages per batch an out-of-memory error imposed now; 0 for none."""
        return self.limit.ceiling

    # -------------------------------------------------------------- documents

    def _page_tasks(self, states: list[_DocState]) -> Iterator[tuple[_DocState, int]]:
        """Open documents lazily, in order, and yield the pages still to do."""
        for st in states:
            self._prepare(st)
            if st.complete:
                self._finish(st)
                continue
            for idx in st.wanted:
                if idx not in st.results:
                    yield st, idx

    def _prepare(self, st: _DocState) -> None:
        doc = st.doc
        try:
            count = inputs.count_pages(doc)
        except InputError as e:
            st.error = str(e)
            return
        except OSError as e:
            st.error = f"cannot read ({e.strerror or e})"
            return
        st.wanted = inputs.select_pages(self.page_ranges, count)
        if not st.wanted:
            st.error = f"--pages {self.opts.pages} selects none of its {count} pages"
            return
        if not self.to_dir:
            self._progress_total(len(st.wanted))
            return
        assert self.opts.output is not None
        st.fingerprint = self._fingerprint(doc)
        journal_path, done_path = journal.state_paths(self.opts.output, doc.rel)
        outputs = output_paths(self.opts.output, doc.rel, self.opts.formats)
        if not self.opts.overwrite and journal.done_matches(done_path, st.fingerprint, outputs):
            st.skipped = True
            self.stats.skipped_documents += 1
            self.stats.skipped_pages += len(st.wanted)
            return
        self._progress_total(len(st.wanted))
        if not self.opts.overwrite:
            for res in journal.read_journal(journal_path, st.fingerprint):
                if res.index in st.wanted and res.status != "error":
                    st.results[res.index] = res
            st.resumed_pages = len(st.results)
            self.stats.resumed_pages += st.resumed_pages
            self._progress.update(st.resumed_pages)
        os.makedirs(os.path.dirname(journal_path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(done_path)
        # Rewrite the journal from what we kept: it drops a torn last line and stale pages.
        atomic_write(
            journal_path,
            "".join(
                [json.dumps({"fingerprint": st.fingerprint}) + "\n"]
                + [json.dumps(r.to_dict(keep_raw=True)) + "\n" for r in st.results.values()]
            ),
        )
        st.journal = open(journal_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _finish

    def _progress_total(self, n: int) -> None:
        self._progress.total = (self._progress.total or 0) + n
        self._progress.refresh()

    # -------------------------------------------------------------- engine calls

    def _collect(self, runner: _Runner, fut: Any, batch: list[tuple[_DocState, PageImage]]) -> None:
        results, limit, usage = runner.result(fut)
        self.stats.add_usage(usage)
        if limit:
            self._lower_limit(limit)
        else:
            self.limit.succeeded(self._max_batch)
        for (st, page), res in zip(batch, results, strict=True):
            self._record(st, res, page)

    def _lower_limit(self, n: int) -> None:
        """A CUDA out-of-memory error somewhere: later batches are at most ``n`` pages."""
        self.limit.lower(n)

    # -------------------------------------------------------------- results

    def _record(self, st: _DocState, res: PageResult, page: PageImage | None) -> None:
        if self.to_dir and page is not None:
            assert self.opts.output is not None
            crop_figures(res, page, self.opts.output, st.doc.rel)
        if res.status == "error":
            # A one-page document (an image) failing is the document failing: no "page 1".
            where = "" if len(st.wanted) == 1 else f"page {res.index + 1}: "
            self.on_error(f"{st.doc.display}: {where}{res.error}")
        st.results[res.index] = res
        if st.journal is not None and res.status != "error":
            st.journal.write(json.dumps(res.to_dict(keep_raw=True)) + "\n")
            st.journal.flush()
            os.fsync(st.journal.fileno())
        self._progress.update(1)
        if st.complete:
            self._finish(st)

    def _finish(self, st: _DocState) -> None:
        if st.finished:
            return
        st.finished = True
        if st.journal is not None:
            st.journal.close()
            st.journal = None
        pages = [st.results[i] for i in st.wanted if i in st.results]
        if st.error is None:
            st.error = document_error(pages)
        if st.error is not None:
            if not (pages and all(p.status == "error" for p in pages)):
                self.on_error(f"{st.doc.display}: {st.error}")
            self.stats.failed_documents += 1
        elif not st.skipped:
            self.stats.add_pages(pages, resumed=st.resumed_pages)
            if self.to_dir:
                self._write_outputs(st, pages)
        self._emit_ready()

    def _write_outputs(self, st: _DocState, pages: list[PageResult]) -> None:
        assert self.opts.output is not None
        write_document(self.opts, st.doc, pages, st.fingerprint)

    def _emit_ready(self) -> None:
        """Stream finished documents to stdout in input order (only with ``-o -``)."""
        if self.opts.output != "-":
            return
        fmt = self.opts.formats[0]
        while self._emit_next < len(self._states) and self._states[self._emit_next].finished:
            st = self._states[self._emit_next]
            if st.error is None:
                for i in st.wanted:
                    self.stdout.write(render_page_stream(st.results[i], fmt, self.opts.keep_raw))
                self.stdout.flush()
            self._emit_next += 1

    def _document_result(self, st: _DocState) -> DocumentResult:
        pages = [st.results[i] for i in st.wanted if i in st.results]
        return DocumentResult(
            source=st.doc.display,
            pages=pages if self.opts.keep_results else [],
            error=st.error,
            rel=st.doc.rel,
            skipped=st.skipped,
        )


class _Runner(Protocol):
    """Where batches run: ``capacity`` batches at once; ``submit`` returns a future."""

    capacity: int

    def submit(self, pages: list[PageImage], retry: bool) -> Any: ...

    def result(self, fut: Any) -> tuple[list[PageResult], int, Usage]: ...


class _InlineRunner:
    """The engine in this process: one batch at a time, run synchronously on submit."""

    capacity = 1

    def __init__(self, conv: Converter) -> None:
        self.conv = conv

    def submit(self, pages: list[PageImage], retry: bool) -> InlineFuture:
        # Like a device worker: the lowest limit an OOM forced (0: none) comes with the results.
        lowest = [0]

        def lower(n: int) -> None:
            lowest[0] = min(lowest[0], n) if lowest[0] else n

        results, usage = measured_batch(self.conv.engine, pages, retry, lower)
        return InlineFuture((results, lowest[0], usage))

    def result(self, fut: Any) -> tuple[list[PageResult], int, Usage]:
        return fut.result()


def _take(buckets: dict[Any, list[Any]], key: Any, n: int) -> list[Any]:
    items = buckets[key]
    batch, rest = items[:n], items[n:]
    if rest:
        buckets[key] = rest
    else:
        del buckets[key]
    return batch


def _progress_bar(enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=0,
        unit="page",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )
