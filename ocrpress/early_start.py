"""Pages render while the model loads.

Loading a VLM's weights onto its device takes seconds to minutes, and preparing one gundam
page takes ~0.3 s of a core. One after the other, the engine's first prefill waits for the
render workers to make the first pages after the load, and its decode slots fill a few pages
at a time. Here the model loads on a thread while the workers render the run's first pages
and prepare them by the recipe the engine will have, known from config.json alone; the
batcher then starts with those pages in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from typing import Any, Generic, TypeVar

from .engines.page_inputs import InputsRecipe, window_for
from .ledger import DocState
from .render import RenderQueue

log = logging.getLogger("ocrpress")

T = TypeVar("T")

#: Pages rendered (and prepared) during the load at most; the prepared pages' memory budget
#: (:func:`~ocrpress.engines.page_inputs.window_for`) may allow fewer.
EARLY_PAGES = 256

Tasks = Iterator[tuple[DocState, int]]


class BackgroundLoad(Generic[T]):
    """``load()`` on a thread of its own; :meth:`result` waits for it.

    The thread is a daemon: an interrupted run leaves at once (the CLI exits with
    ``os._exit``) instead of waiting for the weights to finish loading.
    """

    def __init__(self, load: Callable[[], T]) -> None:
        self.future: Future[T] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(load,), name="ocrpress-model-load", daemon=True
        )
        self._thread.start()

    def _run(self, load: Callable[[], T]) -> None:
        self.future.set_running_or_notify_cancel()
        try:
            self.future.set_result(load())
        except BaseException as e:  # handed to the waiting thread, which raises it
            self.future.set_exception(e)

    def result(self) -> T:
        """The loaded object, or the load's error raised here."""
        return self.future.result()

    def wait(self) -> None:
        """Wait for the load to end, whatever its outcome."""
        wait([self.future])


def early_pages(
    recipe: InputsRecipe | None,
    spool: str,
    batch: int | None,
    window: int | None = None,
    replicas: int = 1,
) -> int:
    """How many pages to render while the model loads: each engine replica's first call's
    worth (``batch``: its pages a call, if known before the load) or :data:`EARLY_PAGES`,
    fewer when ``--window`` is smaller or their prepared inputs would not fit the budget."""
    count = min(batch * replicas if batch else EARLY_PAGES, EARLY_PAGES, window or EARLY_PAGES)
    return window_for(recipe, count, 0, spool, replicas) if recipe is not None else count


def render_early(tasks: Tasks, renders: RenderQueue, count: int) -> int:
    """Submit up to ``count`` of ``tasks``' pages to ``renders``; returns how many went.

    The batcher takes ``tasks`` on from where this stopped, with these pages in flight.
    """
    sent = 0
    while sent < count and renders.accepting:
        task: Any = next(tasks, None)
        if task is None:
            break
        st, idx = task
        renders.submit((st, idx), st.doc, idx)
        sent += 1
    return sent
