"""Running one engine batch safely: CUDA out-of-memory back-off, page isolation, and the
truncated-page retry (shared by the pipeline, the device workers and the Ray actors).

The back-off frees memory before it retries. An exception's traceback references every frame
of the failed call, and with them its activations and KV cache; a retry made inside the
``except`` block runs with all of that still allocated, so ``torch.cuda.empty_cache()`` frees
nothing and pages that would fit fail too. Here the failed attempt's frames are cleared and the
``except`` block is left before the cache is emptied and the halves run.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .document import PageImage, PageResult
from .engines import ReportsUsage, Usage

log = logging.getLogger("ocrpress")

#: Successful batches in a row after which a lowered batch limit doubles again.
GROW_AFTER = 8

OOM_ERROR = "CUDA out of memory"


@runtime_checkable
class RetriesTruncated(Protocol):
    """Optional engine method: re-run pages that hit the token limit with a stronger guard."""

    def retry_truncated(self, batch: list[PageImage]) -> list[PageResult]: ...


def is_oom(e: BaseException) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or OOM_ERROR in str(e)


def free_cuda_cache() -> None:
    """Return cached CUDA blocks to the driver (a no-op without torch or CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _attempt(
    run: Callable[[list[PageImage]], list[PageResult]], pages: list[PageImage]
) -> tuple[list[PageResult] | None, str | None, bool]:
    """``(results, None, False)``, or ``(None, error, is_oom)`` with the failed call's frames
    already cleared (their tensors freed once this returns)."""
    try:
        return run(pages), None, False
    except Exception as e:
        oom = is_oom(e)
        message = OOM_ERROR if oom else f"{type(e).__name__}: {e}"
        # Locals of every frame the error passed through (activations, KV cache) go now, even
        # if something keeps the exception alive; the frames themselves go with ``e``.
        traceback.clear_frames(e.__traceback__)
        e.__traceback__ = None
    gc.collect()  # tensors caught in reference cycles with those frames
    return None, message, oom


def run_with_backoff(
    engine: Any,
    pages: list[PageImage],
    on_limit: Callable[[int], None] | None = None,
    run: Callable[[list[PageImage]], list[PageResult]] | None = None,
) -> list[PageResult]:
    """Run a batch (``run``, default ``engine.run``); halve it on CUDA out-of-memory (memory
    freed first), isolate a page that breaks a batch. Never raises for a page's fault."""
    run = run or engine.run
    results, error, oom = _attempt(run, pages)
    if results is not None:
        return results
    assert error is not None
    if oom:
        free_cuda_cache()
        if len(pages) == 1:
            return [PageResult.failed(pages[0], engine.name, error)]
        half = len(pages) // 2
        if on_limit is not None:
            on_limit(max(1, half))
        log.warning("CUDA out of memory with %d pages; retrying as %d", len(pages), half)
        return run_with_backoff(engine, pages[:half], on_limit, run) + run_with_backoff(
            engine, pages[half:], on_limit, run
        )
    if len(pages) > 1:
        return [r for p in pages for r in run_with_backoff(engine, [p], on_limit, run)]
    return [PageResult.failed(pages[0], engine.name, error)]


def retry_truncated(
    engine: Any,
    pages: list[PageImage],
    results: list[PageResult],
    on_limit: Callable[[int], None] | None = None,
) -> None:
    """Re-run truncated pages once with the engine's stronger guard (in place).

    The retry goes through the same back-off (truncated pages are the longest, so the likeliest
    to run out of memory); a page whose retry fails keeps its first pass, still truncated.
    """
    todo = [i for i, r in enumerate(results) if r.status == "truncated"]
    if not todo or not isinstance(engine, RetriesTruncated):
        return
    redone = run_with_backoff(engine, [pages[i] for i in todo], on_limit, engine.retry_truncated)
    for i, res in zip(todo, redone, strict=True):
        if res.status == "error":
            results[i].notes.append(f"retry after truncation failed ({res.error}); first pass kept")
            continue
        res.notes.append("retried after truncation with a stronger repetition guard")
        results[i] = res


def run_batch(
    engine: Any, pages: list[PageImage], retry: bool, on_limit: Callable[[int], None] | None
) -> list[PageResult]:
    """One engine batch as the pipeline runs it: back-off, then optional truncation retry."""
    results = run_with_backoff(engine, pages, on_limit)
    if retry:
        retry_truncated(engine, pages, results, on_limit)
    return results


def measured_batch(
    engine: Any, pages: list[PageImage], retry: bool, on_limit: Callable[[int], None] | None
) -> tuple[list[PageResult], Usage]:
    """:func:`run_batch` and what the device did meanwhile: the engine's own counters when it
    reports them (VLMs: forward passes only), else the time spent in the engine's calls."""
    before = engine.usage() if isinstance(engine, ReportsUsage) else None
    t0 = time.perf_counter()
    results = run_batch(engine, pages, retry, on_limit)
    if before is None:
        return results, Usage(device_seconds=time.perf_counter() - t0)
    return results, engine.usage().minus(before)


def limited_batch(
    engine: Any, pages: list[PageImage], retry: bool
) -> tuple[list[PageResult], int, Usage]:
    """:func:`measured_batch` plus the lowest batch size an out-of-memory error forced on the
    way (0: none), which every runner reports back to the batcher's :class:`BatchLimit`."""
    forced: list[int] = []
    results, usage = measured_batch(engine, pages, retry, forced.append)
    return results, min(forced, default=0), usage


@dataclass
class BatchLimit:
    """The batch size in force after out-of-memory errors.

    An OOM lowers the limit to what fitted; after :data:`GROW_AFTER` good batches in a row it
    doubles again, because an OOM is often one unlucky batch (long pages together, a
    fragmented allocator) and a job kept at a quarter of its batch size for hours wastes the
    GPU. An OOM after the limit has grown back once pins it for the rest of the job: that
    batch size keeps failing.
    """

    ceiling: int = 0  # 0: no limit
    streak: int = 0
    grown: bool = False
    pinned: bool = False

    def lower(self, n: int) -> None:
        """An OOM forced batches down to ``n`` pages."""
        self.ceiling = n if not self.ceiling else min(self.ceiling, n)
        self.streak = 0
        if self.grown:
            self.pinned = True

    def succeeded(self, max_batch: int) -> None:
        """A batch ran without an OOM; maybe grow the limit back towards ``max_batch``."""
        if not self.ceiling or self.pinned:
            return
        self.streak += 1
        if self.streak >= GROW_AFTER:
            self.streak = 0
            self.grown = True
            self.ceiling = 0 if 2 * self.ceiling >= max_batch else 2 * self.ceiling
            log.info(
                "batch limit raised to %s after %d good batches",
                self.ceiling or max_batch,
                GROW_AFTER,
            )

    def cap(self, max_batch: int) -> int:
        return min(max_batch, self.ceiling) if self.ceiling else max_batch
