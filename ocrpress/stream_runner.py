"""A runner that keeps one decode going across batches, on a device thread of its own.

With :class:`~ocrpress.runners.InlineRunner` the engine runs a batch in the main thread and
stops between batches: its last rows decode with the other slots empty, and the device waits
while the main thread journals, writes and buckets the next pages. Here the engine's
``stream`` (engines that have one: ``deepseek``) runs on a device thread and takes pages from
every batch the pipeline submits; a batch's future is done once all its pages are, and the
main thread meanwhile keeps the next batch ready (``capacity`` 2).

A failure inside the stream (a CUDA out-of-memory error, a page that breaks preparation) ends
it: pages already delivered keep their results, and each unfinished batch's other pages run
again through the per-batch path (:func:`~ocrpress.backoff.limited_batch`: memory freed,
batch halved, a bad page isolated); then a new stream starts for the batches that follow.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .backoff import free_cuda_cache, limited_batch
from .document import PageImage, PageResult
from .engines import STREAM_END, EngineError, ReportsUsage, Usage
from .errors import describe

log = logging.getLogger("ocrpress")


@runtime_checkable
class Streams(Protocol):
    """Engines that decode pages of several batches at once (see :meth:`StreamRunner`)."""

    def stream(
        self,
        feed: Callable[[bool], Any],
        deliver: Callable[[int, PageResult | BaseException], None],
        stop: Callable[[], bool] | None = None,
    ) -> None: ...


@dataclass
class _Batch:
    fut: Future[tuple[list[PageResult], int, Usage]]
    pages: list[PageImage]
    results: list[PageResult | None] = field(default_factory=list)
    left: int = 0
    lowered: int = 0


class StreamRunner:
    """The engine's stream on a device thread; batches go in, per-batch futures come out."""

    capacity = 2  # batches submitted at once: one decoding, the next queued behind it
    replicas = 1  # engine copies: busy fraction is device time / wall time

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._incoming: queue.Queue[_Batch | None] = queue.Queue()
        self._lock = threading.Lock()
        self._where: dict[int, tuple[_Batch, int]] = {}  # key -> its batch, its place there
        self._waiting: deque[tuple[int, PageImage]] = deque()  # fed, not yet taken
        self._next_key = 0
        # Usage is reported as deltas from what the engine had done before this run.
        self._reported = engine.usage() if isinstance(engine, ReportsUsage) else Usage()
        self._closing = False  # the run's last batch was fed
        self._stop = False  # close() came: stop decoding, drop what is left
        self._dead: BaseException | None = None
        self._alone: _Batch | None = None  # a batch being run again batch by batch
        self._thread: threading.Thread | None = None
        # Set while the engine holds every page submitted (it would take more now).
        self._hungry = threading.Event()
        self._hungry.set()

    # ------------------------------------------------------------- the pipeline's side

    def submit(self, pages: list[PageImage], retry: bool) -> Future[Any]:
        """Queue a batch (``retry`` must be false: the pipeline uses the inline runner for
        ``--retry-truncated``). Any thread may submit."""
        assert not retry, "the truncated-page retry runs per batch, on the inline runner"
        batch = _Batch(Future(), pages, [None] * len(pages), len(pages))
        if self._dead is not None:
            batch.fut.set_exception(self._died())
            return batch.fut
        if not pages:
            batch.fut.set_result(([], 0, Usage()))
            return batch.fut
        self._hungry.clear()
        self._incoming.put(batch)
        if self._dead is not None:  # it died meanwhile: fail the batch just queued
            self._cancel(self._died())
            self._hungry.set()  # its own set may have come before the clear above
        with self._lock:  # batches may come from several threads (a Ray actor's calls)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="ocrpress-device", daemon=True
                )
                self._thread.start()
        return batch.fut

    def result(self, fut: Future[Any]) -> tuple[list[PageResult], int, Usage]:
        return fut.result()

    @property
    def dead(self) -> bool:
        """The device thread died (a bug): every batch submitted fails at once."""
        return self._dead is not None

    def wait_hungry(self) -> None:
        """Wait until the engine has taken every page submitted, or will take no more (the
        stream is over or its thread died): a caller with batches to share between replicas
        submits the next one only then, so that batches wait where any replica can take
        them."""
        while not self._hungry.wait(0.5):
            thread = self._thread
            if self._dead is not None or self._stop or (thread and not thread.is_alive()):
                return

    def close(self, wait: bool = True) -> None:
        """Stop the stream: nothing more is taken, the step under way ends it, and batches
        not finished are cancelled (at the end of a run there are none). ``wait``: until the
        device thread has stopped (an interrupted run does not wait)."""
        self._stop = True
        self._incoming.put(None)
        if wait and self._thread is not None:
            self._thread.join()

    # ------------------------------------------------------------- the device thread

    def _serve(self) -> None:
        try:
            while not (self._closing or self._stop):
                taken = self._next_key
                error = self._one_stream()
                if error is None or self._stop:
                    continue  # it ended (the run closed), or close() stopped it: no re-runs
                # Out of the except block, the failed stream's frames (its cache, the
                # activations of the failed step) are gone: free them before the re-runs.
                gc.collect()
                free_cuda_cache()
                log.warning("decode stream stopped (%s); unfinished pages run again", error)
                self._recover()
                if self._next_key == taken:
                    # It failed before taking a page: it would again. Batch by batch instead.
                    log.warning("decoding batch by batch for the rest of the run")
                    self._batch_by_batch()
        except BaseException as e:  # a bug: fail what is open rather than hang the run
            self._dead = e
            log.debug("the device thread died", exc_info=True)
            self._cancel(self._died())
            # The stream's frames (its KV cache) must not live on with ``_dead``.
            traceback.clear_frames(e.__traceback__)
        finally:
            self._hungry.set()  # nothing more is taken: nobody should wait for that
        self._cancel(CancelledError())

    def _one_stream(self) -> str | None:
        """Run one stream; None when it ended, else the error that stopped it (its
        traceback's frames cleared: nothing of the stream stays referenced)."""
        try:
            self.engine.stream(self._feed, self._deliver, lambda: self._stop)
        except Exception as e:
            error = describe(e)
            traceback.clear_frames(e.__traceback__)
            e.__traceback__ = None
            return error
        return None

    def _died(self) -> EngineError:
        """What a batch of a runner whose device thread died fails with (exit code 3)."""
        return EngineError(
            f"the device thread died ({self._dead!r}); finished pages are kept, "
            "run the same command again to resume"
        )

    def _feed(self, block: bool) -> Any:
        """The stream's pages, batch after batch; None: none now; END: the run is over."""
        if self._stop:
            return STREAM_END
        if not self._waiting:
            if self._incoming.empty():
                self._hungry.set()
            try:
                batch = self._incoming.get(block=block)
            except queue.Empty:
                return None
            if batch is None:
                self._closing = True
                return STREAM_END
            with self._lock:
                for i, page in enumerate(batch.pages):
                    key = self._next_key
                    self._next_key += 1
                    self._where[key] = (batch, i)
                    self._waiting.append((key, page))
        return self._waiting.popleft()

    def _deliver(self, key: int, result: PageResult | BaseException) -> None:
        with self._lock:
            where = self._where.pop(key, None)
            if where is None:  # its batch was already re-run or cancelled
                return
            batch, i = where
            if isinstance(result, BaseException):
                page = batch.pages[i]
                result = PageResult.failed(page, self.engine.name, describe(result))
            batch.results[i] = result
            batch.left -= 1
            if batch.left == 0:
                self._finish(batch)

    def _finish(self, batch: _Batch) -> None:
        """Complete a batch's future with what the device did since the last one completed
        (batches share the device: the deltas add up to the run's total)."""
        now = self.engine.usage() if isinstance(self.engine, ReportsUsage) else Usage()
        usage, self._reported = now.minus(self._reported), now
        results = [r for r in batch.results if r is not None]
        assert len(results) == len(batch.pages)
        if not batch.fut.done():
            batch.fut.set_result((results, batch.lowered, usage))

    def _recover(self) -> None:
        """After a failed stream: the unfinished pages of each open batch, batch by batch,
        through the per-batch path with its out-of-memory back-off and page isolation."""
        with self._lock:
            todo: dict[int, tuple[_Batch, list[int]]] = {}
            for batch, i in self._where.values():
                todo.setdefault(id(batch), (batch, []))[1].append(i)
            self._where.clear()
            self._waiting.clear()
        for batch, places in todo.values():
            self._run_alone(batch, sorted(places))

    def _run_alone(self, batch: _Batch, places: list[int]) -> None:
        pages = [batch.pages[i] for i in places]
        self._alone = batch  # for _cancel, should this thread die meanwhile
        try:
            results, lowered, _usage = limited_batch(self.engine, pages, False)
        finally:
            self._alone = None
        with self._lock:
            for i, res in zip(places, results, strict=True):
                batch.results[i] = res
            batch.left = 0
            batch.lowered = lowered
            self._finish(batch)

    def _batch_by_batch(self) -> None:
        while not self._stop:
            self._hungry.set()
            batch = self._incoming.get()
            if batch is None:
                self._closing = True
                return
            self._run_alone(batch, list(range(len(batch.pages))))

    def _cancel(self, error: BaseException) -> None:
        """Fail every batch not finished: open ones and queued ones (after close() or a
        dead device thread nobody should wait on them)."""
        with self._lock:
            batches = {id(b): b for b, _ in self._where.values()}
            if self._alone is not None:
                batches[id(self._alone)] = self._alone
            self._where.clear()
            self._waiting.clear()
        while True:
            try:
                queued = self._incoming.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                batches[id(queued)] = queued
        for b in batches.values():
            if not b.fut.done():
                b.fut.set_exception(error)
