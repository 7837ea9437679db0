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

from . import inputs
from .document import PageImage
from .inputs import InputDoc, InputError
from .routing import TextLayerPage, route


def default_workers() -> int:
    """Render processes: leave a core to the engine, never more than 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


# ------------------------------------------------------------------ render workers

_RENDERER: inputs.PageRenderer | None = None


def render_task(
    doc: InputDoc, index: int, dpi: int, ocr: str = "always"
) -> PageImage | TextLayerPage | str:
    """Runs in a worker: a rendered page, a page finished from its text layer (``ocr`` auto
    or never, see :mod:`ocrpress.routing`), or the reason it could not be rendered."""
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = inputs.PageRenderer()
    try:
        return route(_RENDERER, doc, index, dpi, ocr)
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
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ocrpress.inputs", "ocrpress.routing"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
