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
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from . import inputs, journal
from .backoff import BatchLimit, measured_batch
from .devices import DevicePool, Planner, make_planner, resolve_devices
from .document import DocumentResult, PageImage, PageResult
from .engines import Engine, EngineOptions, Usage, create_engine
from .errors import EngineLoadError, OutputError, Terminated, describe
from .figures import crop_figures
from .headings import harmonise as harmonise_headings
from .inputs import InputDoc, InputError
from .isolation import close_quietly, failure, output_guard
from .journal import document_error, fingerprint, output_paths, write_document
from .lock import locked_output
from .render import InlineFuture, RenderQueue, default_workers, main_is_importable
from .routing import OCR_MODES, TextLayerPage
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
    wait: bool = False  # output folder locked by another run: wait for it (else LockedError)
    ocr: str = "auto"  # auto | always | never: PDF pages from their text layer (ocrpress.routing)
    engine: EngineOptions = field(default_factory=EngineOptions)


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
        if opts.ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {', '.join(OCR_MODES)}, not {opts.ocr!r}")
        self.opts = opts
        self._engine = engine
        self.stdout = stdout or sys.stdout
        self.on_error = on_error or (lambda msg: log.error("%s", msg))
        self.stats = RunStats()
        self.page_ranges = inputs.parse_page_ranges(opts.pages)
        self.to_dir = opts.output not in (None, "-")
        self.out_dir = opts.output if self.to_dir else None  # the folder written to, if any
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
        """Convert ``docs``; returns one DocumentResult per document, in input order.

        With an output folder, the run holds its lock (one run per folder, see lock.py).
        """
        if not self.to_dir:
            return self._run(docs)
        assert self.opts.output is not None
        with locked_output(self.opts.output, wait=self.opts.wait):
            return self._run(docs)

    def _run(self, docs: list[InputDoc]) -> list[DocumentResult]:
        self.stats.start()
        workers = self.opts.workers if self.opts.workers is not None else default_workers()
        if workers and not main_is_importable():
            # Worker processes re-import __main__; from `python -` or `-c` there is no file
            # to import, so render in this process instead of failing.
            workers = 0
        never = self.opts.ocr == "never" and self._engine is None  # no page reaches an engine
        devices = None if never else self._start_devices()
        renders = RenderQueue(workers, self.opts.dpi, ocr=self.opts.ocr)
        interrupted = False
        try:
            if never:
                planner, max_batch, runner = self._plan_only(), 1, _InlineRunner(self)
            elif devices is None:
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
            states = self._stream(docs, renders, planner, runner, max_batch, window)
        except (KeyboardInterrupt, Terminated):
            interrupted = True
            raise
        finally:
            # Interrupted: no waiting for workers (they die with this process); a worker
            # still starting must not find the pool's semaphores already gone.
            renders.close(wait=not interrupted)
            if devices is not None:
                devices.close()
        self.stats.stop()
        if self.to_dir:
            assert self.opts.output is not None
            with output_guard(self.out_dir):
                atomic_write(
                    os.path.join(self.opts.output, RUN_STATS_FILE),
                    json.dumps(self.stats.to_dict(), indent=2) + "\n",
                )
        return [self._document_result(s) for s in states]

    def _plan_only(self) -> Planner:
        """Name the run and fingerprint it without loading a model (``--ocr never``)."""
        try:
            self._planner = make_planner(self.opts.engine)[0]
        except Exception as e:
            raise EngineLoadError(str(e)) from e
        return self._planner

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
        renders: RenderQueue,
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
                while (
                    not exhausted
                    and renders.accepting
                    and len(renders) + buffered + in_engine < window
                ):
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                        break
                    st, idx = task
                    renders.submit((st, idx), st.doc, idx)
                # Rendered pages (in order) go into buckets of equal batch key.
                for (st, idx), page in renders.ready():
                    if not isinstance(page, (str, TextLayerPage)):
                        try:
                            key = engine.plan(page).batch_key
                        except Exception as e:  # isolation rule: this page's error only
                            page = f"cannot plan the page ({describe(e)})"
                    if isinstance(page, str):
                        self._record(
                            st,
                            PageResult.unrendered(
                                st.doc.display, idx, engine.name, engine.model, page
                            ),
                            None,
                        )
                        continue
                    if isinstance(page, TextLayerPage):
                        # Read from its text layer: no batch slot, no engine, no GPU.
                        self._record(st, page.result, page.image)
                        continue
                    page.doc_key = str(st.order)
                    buckets.setdefault(key, []).append((st, page))
                    buffered += 1
                    page = None  # the bucket holds the only reference now
                limit = self._limit(max_batch)
                key = None
                if len(running) < runner.capacity:
                    key = next((k for k, v in buckets.items() if len(v) >= limit), None)
                    full = buffered + in_engine >= window
                    if key is None and buckets and not len(renders) and (exhausted or full):
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
        finally:
            progress.close()
            for st in states:
                if st.journal is not None:
                    close_quietly(st.journal)
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
                if st.finished:
                    break  # failed while its pages were in flight
                if idx not in st.results:
                    yield st, idx

    def _prepare(self, st: _DocState) -> None:
        """Open a document and its journal; any failure is this document's error."""
        try:
            self._open(st)
        except OutputError:
            raise
        except Exception as e:
            st.error = failure(e, "cannot read")
            if st.journal is not None:
                close_quietly(st.journal)
                st.journal = None

    def _open(self, st: _DocState) -> None:
        doc = st.doc
        try:
            count = inputs.count_pages(doc)
        except InputError as e:
            st.error = str(e)
            return
        st.wanted = inputs.select_pages(self.page_ranges, count)
        if not st.wanted:
            # Not a failure: a range like 2- over a folder of one-page images selects nothing
            # from them by design.
            log.info(
                "%s: --pages %s selects none of its %d pages", doc.display, self.opts.pages, count
            )
            st.skipped = True
            self.stats.unselected_documents += 1
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
        with output_guard(self.out_dir):
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
        if st.finished:
            return  # the document already failed; pages still in flight are dropped
        try:
            with output_guard(self.out_dir):
                self._keep(st, res, page)
        except OutputError:
            raise
        except Exception as e:
            st.error = failure(e, "cannot write")
            self._finish(st)

    def _keep(self, st: _DocState, res: PageResult, page: PageImage | None) -> None:
        if page is not None and page.notes:
            res.notes[:0] = page.notes  # e.g. why a page with a text layer went to the engine
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
            st.journal.flush()  # survives kill -9; fsync also survives a power cut
            if res.text_source != "text-layer":  # ...which a text-layer page (~10 ms) need not
                os.fsync(st.journal.fileno())
        self._progress.update(1)
        if st.complete:
            self._finish(st)

    def _finish(self, st: _DocState) -> None:
        if st.finished:
            return
        st.finished = True
        if st.journal is not None:
            close_quietly(st.journal)
            st.journal = None
        pages = [st.results[i] for i in st.wanted if i in st.results]
        harmonise_headings(pages)
        if st.error is None:
            st.error = document_error(pages)
        if st.error is not None:
            if not (pages and all(p.status == "error" for p in pages)):
                self.on_error(f"{st.doc.display}: {st.error}")
            self.stats.failed_documents += 1
        elif not st.skipped:
            if self.to_dir and not self._write_outputs(st, pages):
                self.stats.failed_documents += 1
            else:
                self.stats.add_pages(pages, resumed=st.resumed_pages)
        if st.error is not None:
            self.stats.failed.append(st.doc.display)
        self._emit_ready()

    def _write_outputs(self, st: _DocState, pages: list[PageResult]) -> bool:
        """Write a finished document; False (and its one-line error) if that fails."""
        assert self.opts.output is not None
        try:
            with output_guard(self.out_dir):
                write_document(self.opts, st.doc, pages, st.fingerprint)
        except OutputError:
            raise
        except Exception as e:
            st.error = failure(e, "cannot write")
            self.on_error(f"{st.doc.display}: {st.error}")
            return False
        return True

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
