"""Engine replicas in worker processes, one per GPU (``--devices``), each decoding across batches.

Each worker claims one device (``CUDA_VISIBLE_DEVICES`` set before torch touches CUDA),
builds its engine once and takes batches from one queue that all workers share, so a free
replica takes the next batch (dynamic balance). A replica whose engine has a ``stream``
(``deepseek``) runs it as the single-device pipeline does (:class:`~ocrpress.stream_runner.
StreamRunner`): batches are twice its decode slots, and it takes the next one as soon as its
stream holds every page of the last (at most two at once), so the pages of the next join the
decode while the last finish and its GPU does not empty at batch ends, while batches no
replica needs yet wait in the shared queue, where the first replica to need one takes it. Other
engines, and ``--retry-truncated`` (a per-batch step), take one batch at a time through the
per-batch path. The main process's render workers prepare the replicas' page inputs, as they
do for a local engine, when every replica reports the same inputs recipe (the replica reads
each page's file; a page without one it prepares itself). Each worker sends its results back
on a pipe of its own (a worker killed while writing cannot garble another's messages: its pipe
just ends); a collector thread completes each batch's future.

Workers die with the main process (``PR_SET_PDEATHSIG`` and a watcher thread). A worker that
dies, or a collector that fails, fails every open batch with :class:`DeviceError` (exit 3: run
the command again to resume) instead of leaving the run waiting, and the pool then closes
without waiting for the other workers' batches.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from .backoff import limited_batch
from .document import PageImage, PageResult
from .engines import EngineError, EngineOptions, Usage, create_engine
from .engines.page_inputs import InputsRecipe
from .errors import describe
from .procs import quiet_resource_tracker, worker_init
from .stream_runner import StreamRunner, Streams

log = logging.getLogger("ocrpress")

#: Batches a streaming replica holds: one decoding, the next joining it.
STREAM_DEPTH = 2

#: Seconds ``close`` waits, in all, for workers to finish their open batches.
CLOSE_WAIT = 60.0

DIED = "a device worker died; finished pages are kept, run the same command to resume"


class DeviceError(EngineError):
    """No usable device, or a device worker could not start or died (CLI exit code 3)."""


# ------------------------------------------------------------------ the worker process


def _worker_main(
    device: str, opts: EngineOptions, tasks: Any, out: Connection, main_pid: int
) -> None:
    """A replica: claim ``device``, build the engine, say what it is, serve batches."""
    worker_init(main_pid)  # as a render worker: quiet on Ctrl-C, dies with the main process
    # Before any CUDA call in this process: the worker then sees exactly one GPU, as cuda:0.
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    if opts.device and opts.device.startswith("cuda"):
        opts = replace(opts, device="cuda")  # the only visible GPU

    def put(msg: tuple[Any, ...]) -> None:
        out.send_bytes(pickle.dumps(msg))

    try:
        engine = create_engine(opts)
        streams = isinstance(engine, Streams)
        slots = getattr(engine, "slots", None)
        info = {
            "max_batch_size": int(engine.max_batch_size),
            "streams": streams,
            "slots": slots if isinstance(slots, int) else None,
            # How its pages' inputs are made: the main process's render workers then make them.
            "inputs_recipe": getattr(engine, "inputs_recipe", None),
        }
    except BaseException as e:
        error = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
        put(("info", {"error": error}))
        out.close()
        os._exit(1)  # threads the failed load started must not keep the worker alive
    put(("info", info))
    free = threading.Semaphore(STREAM_DEPTH if streams else 1)
    runner: StreamRunner | None = None
    # Results leave through one sender thread: a batch completes inside the stream's lock,
    # which must not wait on the pipe.
    outbox: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()

    def sender() -> None:
        while (item := outbox.get()) is not None:
            batch_id, outcome = item
            try:
                try:
                    payload = pickle.dumps(outcome)
                except Exception as e:  # it does not pickle: say what it was
                    what = outcome if isinstance(outcome, BaseException) else e
                    payload = pickle.dumps(DeviceError(f"device {device}: {describe(what)}"))
                put(("done", batch_id, payload))
            finally:
                free.release()

    sending = threading.Thread(target=sender, name="ocrpress-device-send", daemon=True)
    sending.start()
    try:
        while True:
            free.acquire()
            if runner is not None:
                # The next batch only once the stream holds every page it was given: until
                # then it waits in the shared queue, where an idle replica can take it.
                runner.wait_hungry()
            task = tasks.get()
            if task is None:
                break
            batch_id, pages, retry = pickle.loads(task)
            if streams and not retry:
                if runner is None:
                    runner = StreamRunner(engine)
                fut = runner.submit(pages, False)
                fut.add_done_callback(lambda f, b=batch_id: outbox.put((b, _outcome(f))))
                continue
            try:
                outcome: Any = limited_batch(engine, pages, retry)
            except Exception as e:
                outcome = e
            outbox.put((batch_id, outcome))
        for _ in range(STREAM_DEPTH - 1 if streams else 0):
            free.acquire()  # the batches still open are sent before the stream stops
    finally:
        if runner is not None:
            runner.close()
        outbox.put(None)
        sending.join(timeout=10)


def _outcome(fut: Future[Any]) -> Any:
    try:
        return fut.result()
    except BaseException as e:
        return e


# ------------------------------------------------------------------ the main process


class DevicePool:
    """N worker processes, one engine replica each; ``submit`` returns a Future."""

    def __init__(self, devices: list[str], opts: EngineOptions, per_batch: bool = False) -> None:
        """``per_batch``: every batch runs through the per-batch path (``--retry-truncated``),
        so no replica streams."""
        # spawn: a fresh interpreter per worker, so no CUDA state or threads are inherited.
        ctx = multiprocessing.get_context("spawn")
        self.devices = devices
        self.per_batch = per_batch
        self.replicas = len(devices)
        self.capacity = len(devices)  # batches at once; more once the replicas say they stream
        self.pages_per_device: dict[str, int] = dict.fromkeys(devices, 0)
        with quiet_resource_tracker():  # the queue's semaphores may start it
            self._tasks = ctx.Queue()
        self._lock = threading.Lock()
        self._open: dict[int, Future[Any]] = {}
        self._next_id = 0
        self._info: dict[str, dict[str, Any]] = {}
        self._all_info = threading.Event()
        self._broken: str | None = None
        self._closing = False
        self._procs: dict[str, Any] = {}
        self._pipes: dict[Connection, str] = {}
        try:
            for d in devices:  # all engines load in parallel from the start
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(d, opts, self._tasks, writer, os.getpid()),
                    name=f"ocrpress-device-{d}",
                    daemon=True,
                )
                try:
                    proc.start()
                finally:
                    writer.close()  # the worker holds the only writing end
                self._procs[d] = proc
                self._pipes[reader] = d
        except BaseException:
            for proc in self._procs.values():
                proc.kill()
            raise
        self._collector = threading.Thread(
            target=self._collect, name="ocrpress-devices", daemon=True
        )
        self._collector.start()

    def max_batch_size(self) -> int:
        """Pages a batch should have (waits for the engines to load). A replica that streams
        takes batches of twice its decode slots, up to two at once (pages join its decode as
        others end); other engines take their own batch size."""
        self._all_info.wait()
        with self._lock:
            info = dict(self._info)
        errors = [f"device {d}: {i['error']}" for d, i in info.items() if "error" in i]
        if errors:
            raise DeviceError(errors[0])
        if self._broken is not None:
            raise DeviceError(self._broken)
        streaming = [i["streams"] and not self.per_batch for i in info.values()]
        self.capacity = sum(STREAM_DEPTH if s else 1 for s in streaming)
        sizes = [
            min(i["max_batch_size"], 2 * i["slots"]) if s and i["slots"] else i["max_batch_size"]
            for i, s in zip(info.values(), streaming, strict=True)
        ]
        return max(1, min(sizes))

    @property
    def inputs_recipe(self) -> InputsRecipe | None:
        """The replicas' inputs recipe (after :meth:`max_batch_size`) when they all have the
        same one: render workers can then prepare pages for any of them."""
        with self._lock:
            recipes = {i.get("inputs_recipe") for i in self._info.values()}
        return recipes.pop() if len(recipes) == 1 else None

    def submit(self, pages: list[PageImage], retry: bool) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._broken is not None:
                fut.set_exception(DeviceError(self._broken))
                return fut
            batch_id = self._next_id
            self._next_id += 1
        try:  # here, not in the queue's feeder thread, where a failure would be lost
            task = pickle.dumps((batch_id, pages, retry))
        except Exception as e:
            fut.set_exception(DeviceError(f"cannot send a batch to a device: {describe(e)}"))
            return fut
        with self._lock:
            if self._broken is not None:  # it broke while the batch was being pickled
                fut.set_exception(DeviceError(self._broken))
                return fut
            self._open[batch_id] = fut
        self._tasks.put(task)
        return fut

    def result(self, fut: Future[Any]) -> tuple[list[PageResult], int, Usage]:
        results, limit, device, usage = fut.result()
        self.pages_per_device[device] = self.pages_per_device.get(device, 0) + len(results)
        return results, limit, usage

    def close(self, wait: bool = True) -> None:
        """Stop the workers and the collector. ``wait``: let each worker end by itself (at the
        end of a run nothing is open); not after a worker died, with batches still open (the
        run failed), nor while replicas are still loading (the run failed before its first
        batch), nor for an interrupted run: then they are killed at once."""
        with self._lock:
            # Batches still open mean the run failed: their results would be thrown away.
            wait = wait and self._broken is None and not self._open and self._all_info.is_set()
        self._closing = True
        for proc in self._procs.values():
            if wait and proc.is_alive():
                self._tasks.put(None)
        deadline = time.monotonic() + (CLOSE_WAIT if wait else 0.0)
        for proc in self._procs.values():
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._fail("the device pool was closed")
        self._collector.join(timeout=5)
        self._tasks.cancel_join_thread()  # nobody reads it any more: never block on exit
        self._tasks.close()
        for reader in self._pipes:
            reader.close()

    # ------------------------------------------------------------------ collector thread

    def _collect(self) -> None:
        try:
            self._serve_pipes()
        except BaseException as e:  # a bug: fail what is open rather than hang the run
            log.debug("device result collector failed", exc_info=True)
            self._fail(f"the device result collector failed: {describe(e)}")

    def _serve_pipes(self) -> None:
        live = dict(self._pipes)
        while live:
            ready = set(wait(list(live), timeout=0.5))
            # A process that ended is gone even if its pipe has not ended: a child it forked
            # may still hold the pipe (and its sentinel) open.
            ended = {r for r, d in live.items() if self._procs[d].exitcode is not None}
            for reader in ready | ended:
                device = live[reader]
                try:
                    while reader.poll():
                        self._message(device, reader.recv_bytes())
                    if reader not in ended:
                        continue
                except (EOFError, OSError):  # the pipe ended (or a message was cut off)
                    pass
                del live[reader]
                self._gone(device)
            if self._closing and not any(p.is_alive() for p in self._procs.values()):
                return

    def _message(self, device: str, data: bytes) -> None:
        try:
            msg = pickle.loads(data)
        except Exception as e:  # cannot happen for our own tuples; say so if it does
            self._fail(f"device {device} sent an unreadable message: {describe(e)}")
            return
        if msg[0] == "info":
            with self._lock:
                self._info[device] = msg[1]
                complete = len(self._info) == len(self.devices)
            if "error" in msg[1]:  # no point waiting for the other engines
                self._fail(f"device {device}: {msg[1]['error']}")
            if complete:
                self._all_info.set()
        else:
            self._done(device, msg[1], msg[2])

    def _done(self, device: str, batch_id: int, payload: bytes) -> None:
        with self._lock:
            fut = self._open.pop(batch_id, None)
        if fut is None or fut.done():
            return  # the pool already failed it
        try:
            outcome = pickle.loads(payload)
        except Exception as e:  # only this batch is lost
            why = f"device {device} sent an unreadable result: {describe(e)}"
            fut.set_exception(DeviceError(why))
            return
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            results, limit, usage = outcome
            fut.set_result((results, limit, device, usage))

    def _gone(self, device: str) -> None:
        """A worker's pipe ended: at the end of the run that is its exit, else it died."""
        if self._closing:
            return
        proc = self._procs[device]
        proc.join(timeout=1)
        with self._lock:
            known = self._info.get(device)
            if known is None:
                died = f"the worker died while loading (exit {proc.exitcode})"
                self._info[device] = {"error": died}
        if known is not None and "error" not in known:  # a load failure said so itself
            log.warning("device %s: the worker died (exit code %s)", device, proc.exitcode)
        self._fail(DIED)

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
