"""Render workers: pages become images in separate processes while the engine works.

forkserver workers never inherit the engine's threads or CUDA state; a page that cannot be
rendered comes back as the reason (a string), so one bad page never kills the pool.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import util as mp_util
from typing import Any

from . import inputs, procs
from .document import PageImage
from .engines.page_inputs import InputsRecipe, discard_prepared, prepare_in_worker
from .errors import describe
from .escalation import AutoSpec, choose_page_mode
from .inputs import InputDoc, InputError
from .routing import TextLayerPage, route


def default_workers(replicas: int = 1) -> int:
    """Render processes: a core left to each engine replica, never more than 4 per replica
    (they prepare the replicas' page inputs too: ~3 gundam pages a second each)."""
    return max(1, min(4 * replicas, (os.cpu_count() or 2) - replicas))


# ------------------------------------------------------------------ render workers

_RENDERER: inputs.PageRenderer | None = None


def render_task(
    doc: InputDoc,
    index: int,
    dpi: int,
    ocr: str = "always",
    auto: AutoSpec | None = None,
    prepare: tuple[InputsRecipe, str] | None = None,
) -> PageImage | TextLayerPage | str:
    """Runs in a worker: a rendered page, a page finished from its text layer (``ocr`` auto
    or never, see :mod:`ocrpress.routing`), or the reason it could not be rendered. With
    ``auto`` (``--mode auto``) a rendered page also gets its mode, chosen here on the CPU;
    with ``prepare`` (an engine's inputs recipe and the spool folder), its model inputs."""
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = inputs.PageRenderer()
    try:
        page = route(_RENDERER, doc, index, dpi, ocr)
        if auto is not None and isinstance(page, PageImage):
            choose_page_mode(page, _RENDERER, doc, auto)
        if prepare is not None and isinstance(page, PageImage):
            prepare_in_worker(page, *prepare)
        return page
    except InputError as e:
        return str(e)
    except Exception as e:  # never let one page kill the worker pool
        return f"cannot render ({type(e).__name__}: {e})"


@dataclass(frozen=True)
class Spooled:
    """A worker's result left in a file: only this small handle goes through the pipe."""

    path: str

    def load(self) -> Any:
        try:
            with open(self.path, "rb") as f:
                return pickle.load(f)
        finally:
            os.unlink(self.path)


def spooled_call(task: Callable[..., Any], folder: str, doc: InputDoc, *args: Any) -> Spooled:
    """Runs in a worker: ``task``'s result is written to ``folder`` and returned by name.

    A worker killed (OOM killer, MuPDF crash) while it writes a multi-megabyte page image
    into the result pipe leaves half a message there, and ProcessPoolExecutor's reader then
    waits forever for the rest: the run hangs instead of seeing a broken pool. A handle of a
    few dozen bytes is written in one atomic pipe write, so it either arrives or does not.
    """
    path = os.path.join(folder, f"page-{os.getpid()}-{uuid.uuid4().hex}.pickle")
    result = task(doc, *args)
    try:
        with open(path, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        # No room left, most likely: leave nothing behind that keeps the folder full.
        with contextlib.suppress(OSError):
            os.unlink(path)
        discard_prepared(result)
        raise
    return Spooled(path)


class InlineFuture:
    """Stand-in for a Future when rendering runs in-process (workers=0)."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value

    def done(self) -> bool:
        return True


def main_is_importable() -> bool:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is None or os.path.isfile(path)


#: Modules the forkserver imports once for every worker it forks.
PRELOAD = ["ocrpress.procs", "ocrpress.inputs", "ocrpress.routing"]
#: ... and when the workers prepare model inputs (see ocrpress.engines.prepare_warm).
PRELOAD_INPUTS = ["ocrpress.engines.prepare_warm"]


def make_pool(workers: int, preload: list[str] | None = None) -> ProcessPoolExecutor:
    """``workers`` render processes forked by a forkserver that imported ``preload`` (the
    first pool's list wins: the forkserver outlives pools)."""
    # forkserver: workers never inherit the engine's threads or CUDA state.
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD + (preload or []))
    with procs.forkserver_env():
        # Started here, from the main thread, so its parent-death signal is tied to the
        # process's lifetime (not to a thread's), and with a sys.path that skips the cwd.
        forkserver.ensure_running()
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=procs.worker_init,
        initargs=(os.getpid(),),
    )


# ------------------------------------------------------------------ render queue

#: The error of a page whose rendering kills a render worker twice.
CRASH_ERROR = "render worker crashed on this page (a renderer bug or not enough memory)"


#: A run whose render workers die this often stops: something kills them all (memory).
MAX_RESTARTS = 20


@dataclass
class _Page:
    tag: Any
    doc: InputDoc
    index: int
    fut: Any = None  # None: waiting to be rendered (again)
    suspect: bool = False  # in flight when the pool broke


class RenderQueue:
    """Pages being rendered, handed back in submission order; survives a dying worker.

    A worker that dies (MuPDF crashing on a hostile PDF, the OOM killer) breaks the whole
    ProcessPoolExecutor: every page in flight then fails with BrokenProcessPool, whatever
    its document. The queue starts a fresh pool and renders those pages again one at a time;
    a page that breaks the pool while alone is the culprit and becomes an error (its
    document's, under the isolation rule), the others are rendered as usual.
    """

    def __init__(
        self,
        workers: int,
        dpi: int,
        task: Callable[..., Any] = render_task,
        ocr: str = "always",
        preload: list[str] | None = None,
    ) -> None:
        self.workers = workers
        self.preload = preload
        self.dpi = dpi
        self.ocr = ocr
        self.auto: AutoSpec | None = None  # --mode auto: set before the first page
        # The engine's inputs recipe: workers prepare pages for it (set before the first page).
        self.inputs: InputsRecipe | None = None
        self.task = task
        self.pool = make_pool(workers, preload) if workers > 0 else None
        # The multiprocessing temp folder: removed at exit, and by the forkserver when the
        # main process is killed (see procs), so spooled pages never outlive the run.
        self.spool = mp_util.get_temp_dir() if workers > 0 else ""
        self.items: deque[_Page] = deque()
        self.restarts = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def accepting(self) -> bool:
        """False while the pages of a broken pool are rendered again, one by one."""
        return not any(p.suspect for p in self.items)

    def submit(self, tag: Any, doc: InputDoc, index: int) -> None:
        page = _Page(tag, doc, index)
        self.items.append(page)
        self._launch(page)

    def head(self) -> Future[Any] | None:
        """The oldest page's future, to wait on (None when it is inline)."""
        fut = self.items[0].fut if self.items else None
        return fut if isinstance(fut, Future) else None

    def ready(self) -> Iterator[tuple[Any, Any]]:
        """(tag, the render task's result) of the oldest pages that are done, in order."""
        while self.items and self.items[0].fut is not None and self.items[0].fut.done():
            page = self.items[0]
            try:
                result = page.fut.result()
                if isinstance(result, Spooled):
                    result = result.load()
            except BrokenProcessPool:
                if not page.suspect:
                    self._broken()
                    continue
                result = CRASH_ERROR  # it broke a pool while rendered alone: it is the cause
                self._restart()
            except Exception as e:  # e.g. no room left to spool the page: its own error
                result = f"cannot render ({describe(e)})"
            self.items.popleft()
            self._pump()
            yield page.tag, result

    def _launch(self, page: _Page) -> None:
        args: tuple[Any, ...] = (page.index, self.dpi, self.ocr)
        if self.auto is not None or self.inputs is not None:
            args += (self.auto,)  # only then: stand-in tasks of tests take four arguments
        if self.inputs is not None and self.pool is not None:
            args += ((self.inputs, self.spool),)
        try:
            if self.pool is None:
                page.fut = InlineFuture(self.task(page.doc, *args))
            else:
                page.fut = self.pool.submit(spooled_call, self.task, self.spool, page.doc, *args)
        except BrokenProcessPool:
            self._broken()

    def _broken(self) -> None:
        """The pool broke: every page without a result is a suspect, rendered again alone."""
        for page in self.items:
            fut = page.fut
            if fut is None or not (fut.done() and fut.exception() is None):
                page.fut, page.suspect = None, True
        self._restart()
        self._pump()

    def _restart(self) -> None:
        from .errors import OcrpressError

        assert self.pool is not None
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise OcrpressError(f"render workers died {MAX_RESTARTS} times; is memory short?")
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = make_pool(self.workers, self.preload)

    def _pump(self) -> None:
        """Render the oldest page waiting to be rendered again, once nothing else runs."""
        if any(p.fut is not None and not p.fut.done() for p in self.items):
            return
        waiting = next((p for p in self.items if p.fut is None), None)
        if waiting is not None:
            self._launch(waiting)

    def close(self, wait: bool = True) -> None:
        """Stop the workers; with ``wait``, the files of pages rendered but never taken
        (a run that failed, e.g. its model did not load) are removed now, not at exit."""
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)
        if wait:
            self._discard_unread()

    def _discard_unread(self) -> None:
        while self.items:
            fut = self.items.popleft().fut
            if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
                continue
            with contextlib.suppress(Exception):  # best effort: the folder goes at exit
                result = fut.result()
                discard_prepared(result.load() if isinstance(result, Spooled) else result)
