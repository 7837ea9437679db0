"""Engine replicas in worker processes, one per GPU (``--devices``), each decoding across batches.

Each worker claims one device (``CUDA_VISIBLE_DEVICES`` set before torch touches CUDA),
builds its engine once and takes batches from one queue that all workers share, so a free
replica takes the next batch (dynamic balance). A replica whose engine has a ``stream``
(``deepseek``) runs it as the single-device pipeline does (:class:`~ocrpress.stream_runner.
StreamRunner`): it holds two batches, the pages of the second joining the decode while the
first finishes, so its GPU does not empty at batch ends. Other engines, and ``--retry-
truncated`` (a per-batch step), take one batch at a time through the per-batch path. Results
come back on a second queue; a collector thread completes each batch's future.

Workers die with the main process (``PR_SET_PDEATHSIG`` and a watcher thread); a worker that
dies fails every open batch with :class:`DeviceError` (exit 3: run the command again to
resume) instead of leaving the run waiting.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from .backoff import limited_batch
from .document import PageImage, PageResult
from .engines import EngineError, EngineOptions, Usage, create_engine
from .errors import describe
from .procs import die_with_parent, quiet_resource_tracker, watch_process

log = logging.getLogger("ocrpress")

#: Batches a streaming replica holds: one decoding, the next joining it.
STREAM_DEPTH = 2


class DeviceError(EngineError):
    """No usable device, or a device worker could not start or died (CLI exit code 3)."""


# ------------------------------------------------------------------ the worker process


def _worker_main(device: str, opts: EngineOptions, tasks: Any, results: Any, main_pid: int) -> None:
    """A replica: claim ``device``, build the engine, say what it is, serve batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process reports Ctrl-C once
    die_with_parent()
    watch_process(main_pid)
    # Before any CUDA call in this process: the worker then sees exactly one GPU, as cuda:0.
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    if opts.device and opts.device.startswith("cuda"):
        opts = replace(opts, device="cuda")  # the only visible GPU
    try:
        engine = create_engine(opts)
        from .stream_runner import StreamRunner, Streams

        streams = isinstance(engine, Streams)
        info = {"max_batch_size": int(engine.max_batch_size), "streams": streams}
    except BaseException as e:
        error = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
        results.put(("info", device, {"error": error, "pid": os.getpid()}))
        return
    results.put(("info", device, {**info, "pid": os.getpid()}))
    free = threading.Semaphore(STREAM_DEPTH if streams else 1)
    runner: StreamRunner | None = None

    def send(batch_id: int, outcome: Any) -> None:
        try:
            payload = pickle.dumps(outcome)
        except Exception as e:  # an exception that does not pickle: its description does
            payload = pickle.dumps(RuntimeError(describe(e)))
        results.put(("done", batch_id, device, payload))
        free.release()

    try:
        while True:
            free.acquire()
            task = tasks.get()
            if task is None:
                break
            batch_id, pages, retry = task
            if streams and not retry:
                if runner is None:
                    runner = StreamRunner(engine)
                fut = runner.submit(pages, False)
                fut.add_done_callback(lambda f, b=batch_id: send(b, _outcome(f)))
                continue
            try:
                send(batch_id, limited_batch(engine, pages, retry))
            except Exception as e:
                send(batch_id, e)
        for _ in range(STREAM_DEPTH - 1 if streams else 0):
            free.acquire()  # the batches still open are sent before the stream stops
    finally:
        if runner is not None:
            runner.close()


def _outcome(fut: Future[Any]) -> Any:
    try:
        return fut.result()
    except BaseException as e:
        return e


# ------------------------------------------------------------------ the main process


class DevicePool:
    """N worker processes, one engine replica each; ``submit`` returns a Future."""

    def __init__(self, devices: list[str], opts: EngineOptions) -> None:
        # spawn: a fresh interpreter per worker, so no CUDA state or threads are inherited.
        ctx = multiprocessing.get_context("spawn")
        self.devices = devices
        self.replicas = len(devices)
        self.capacity = len(devices)  # batches at once; more once the replicas say they stream
        self.pages_per_device: dict[str, int] = dict.fromkeys(devices, 0)
        with quiet_resource_tracker():  # the queues' semaphores may start it
            self._tasks = ctx.Queue()
            self._results = ctx.Queue()
        self._lock = threading.Lock()
        self._open: dict[int, Future[Any]] = {}
        self._next_id = 0
        self._info: dict[str, dict[str, Any]] = {}
        self._all_info = threading.Event()
        self._broken: str | None = None
        self._closing = False
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(d, opts, self._tasks, self._results, os.getpid()),
                name=f"ocrpress-device-{d}",
                daemon=True,
            )
            for d in devices
        ]
        for p in self._procs:  # all engines load in parallel from the start
            p.start()
        self._collector = threading.Thread(
            target=self._collect, name="ocrpress-devices", daemon=True
        )
        self._collector.start()

    def max_batch_size(self) -> int:
        """Smallest batch size the replicas chose (waits for their engines to load); a
        replica that streams makes the pool hold two batches for it."""
        self._all_info.wait()
        errors = [f"device {d}: {i['error']}" for d, i in self._info.items() if "error" in i]
        if errors:
            raise DeviceError(errors[0])
        if self._broken is not None:
            raise DeviceError(self._broken)
        self.capacity = sum(STREAM_DEPTH if i["streams"] else 1 for i in self._info.values())
        return max(1, min(i["max_batch_size"] for i in self._info.values()))

    def submit(self, pages: list[PageImage], retry: bool) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._broken is not None:
                fut.set_exception(DeviceError(self._broken))
                return fut
            batch_id = self._next_id
            self._next_id += 1
            self._open[batch_id] = fut
        self._tasks.put((batch_id, pages, retry))
        return fut

    def result(self, fut: Future[Any]) -> tuple[list[PageResult], int, Usage]:
        results, limit, device, usage = fut.result()
        self.pages_per_device[device] = self.pages_per_device.get(device, 0) + len(results)
        return results, limit, usage

    def close(self, wait: bool = True) -> None:
        """Stop the workers and the collector. ``wait``: each worker first finishes its open
        batches (at the end of a run there are none); else (an interrupted run) they are
        killed at once."""
        self._closing = True
        for p in self._procs:
            if wait and p.is_alive():
                self._tasks.put(None)
        for p in self._procs:
            p.join(timeout=60 if wait else 0)
            if p.is_alive():
                p.kill()
                p.join()
        self._fail("the device pool was closed")
        self._collector.join(timeout=5)
        for q in (self._tasks, self._results):
            q.cancel_join_thread()  # nobody reads them any more: never block on exit
            q.close()

    # ------------------------------------------------------------------ collector thread

    def _collect(self) -> None:
        while True:
            try:
                msg = self._results.get(timeout=0.2)
            except queue.Empty:
                if self._closing and not any(p.is_alive() for p in self._procs):
                    return
                dead = [p for p in self._procs if p.exitcode is not None]
                if dead and not self._closing:
                    if not self._all_info.is_set():
                        for p in dead:  # died while loading: its engine never said anything
                            self._info.setdefault(p.name.rsplit("-", 1)[1], {"error": "died"})
                        self._check_info()
                    self._fail(
                        "a device worker died; finished pages are kept, run the same command "
                        "to resume"
                    )
                continue
            except (EOFError, OSError):
                return
            if msg[0] == "info":
                self._info[msg[1]] = msg[2]
                self._check_info()
                continue
            _, batch_id, device, payload = msg
            with self._lock:
                fut = self._open.pop(batch_id, None)
            if fut is None or fut.done():
                continue
            outcome = pickle.loads(payload)
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                results, limit, usage = outcome
                fut.set_result((results, limit, device, usage))

    def _check_info(self) -> None:
        if len(self._info) == len(self.devices):
            self._all_info.set()

    def _fail(self, why: str) -> None:
        """Fail every open batch (and every later one) with :class:`DeviceError`."""
        with self._lock:
            if self._broken is None:
                self._broken = why
            open_ = list(self._open.values())
            self._open.clear()
        for fut in open_:
            if not fut.done():
                fut.set_exception(DeviceError(why))
        self._all_info.set()
