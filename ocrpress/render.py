"""Render workers: pages become images in separate processes while the engine works.

forkserver workers never inherit the engine's threads or CUDA state; a page that cannot be
rendered comes back as the reason (a string), so one bad page never kills the pool.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from . import inputs, procs
from .document import PageImage
from .inputs import InputDoc, InputError


def default_workers() -> int:
    """Render processes: leave a core to the engine, never more than 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


# ------------------------------------------------------------------ render workers

_RENDERER: inputs.PageRenderer | None = None


def render_task(doc: InputDoc, index: int, dpi: int) -> PageImage | str:
    """Runs in a worker: a rendered page, or the reason it could not be rendered."""
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = inputs.PageRenderer()
    try:
        return _RENDERER.render(doc, index, dpi)
    except InputError as e:
        return str(e)
    except Exception as e:  # never let one page kill the worker pool
        return f"cannot render ({type(e).__name__}: {e})"


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


def make_pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers never inherit the engine's threads or CUDA state.
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ocrpress.procs", "ocrpress.inputs"])
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
