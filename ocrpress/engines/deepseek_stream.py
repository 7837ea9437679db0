"""One refill decode over the whole run: pages of later batches join while earlier ones decode.

:meth:`DeepSeekEngine.run <ocrpress.engines.deepseek.DeepSeekEngine.run>` decodes one batch:
at its end the running rows finish one by one and the slots they leave stay empty until the
next call, and between calls the device waits while the pipeline journals, writes and buckets.
A stream has no such ends: the pipeline's runner (:mod:`ocrpress.stream_runner`) feeds it
pages as batches arrive, and each page's result is delivered as soon as it is done.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from ..backoff import is_oom
from ..document import PageImage, PageResult
from .deepseek_spec import REFILL_DEPTH
from .refill import END, Prepared

if TYPE_CHECKING:
    from .deepseek import DeepSeekEngine

log = logging.getLogger("ocrpress")

#: ``feed(block) -> (key, page) | None | END``: the next page of the run, None when none is
#: waiting (only if ``block`` is false), END when the run has no more.
Feed = Callable[[bool], Any]

#: ``stop()``: true once the run is over and the stream should end at its next step.
Stop = Callable[[], bool]

#: ``deliver(key, result)``: a page is done (``result`` is a PageResult, or the exception its
#: preparation or post-processing raised). Called from the engine's threads and, for a page
#: whose preparation failed, from the decoding thread.
Deliver = Callable[[int, "PageResult | BaseException"], None]


class PageSource:
    """The decoder's page source (a stream's, and one engine call's): pages from ``feed``,
    prepared on the engine's threads at most ``ahead`` pages before the decoder takes them
    (an A4 gundam page is ~30 MB of bf16 pixels). A page whose preparation fails is delivered
    as that error and decoding goes on (an out-of-memory error stops it; a ``deliver`` that
    raises stops it too)."""

    def __init__(
        self, engine: DeepSeekEngine, feed: Feed, deliver: Deliver, ahead: int, wait: bool = False
    ) -> None:
        self.engine = engine
        # Wait for each page even while rows decode: one engine call's pages are all there,
        # so its refills come in whole groups and its prefill calls are the same every run.
        self.wait = wait
        self.feed = feed
        self.deliver = deliver
        self.ahead = ahead
        self.queue: deque[tuple[int, Future[Prepared]]] = deque()
        self.ended = False
        self.pages: dict[int, PageImage] = {}  # key -> page, until its result is made
        self.budgets: dict[int, int] = {}  # key -> its token budget, once prepared

    def _take(self, block: bool) -> bool:
        """Start preparing the next fed page; False if there is none (now)."""
        item = self.feed(block)
        if item is END:
            self.ended = True
            return False
        if item is None:
            return False
        key, page = item
        self.pages[key] = page
        self.queue.append((key, self.engine._pool.submit(self.engine.prepare, page, key)))
        return True

    def __call__(self, block: bool) -> Any:
        block = block or self.wait
        while True:
            while not self.ended and len(self.queue) < self.ahead and self._take(False):
                pass
            if not self.queue and (self.ended or not block or not self._take(True)):
                return END if self.ended else None
            key, head = self.queue[0]
            if not block and not head.done():
                return None  # decoding goes on; the page joins at a later step
            self.queue.popleft()
            t0 = time.perf_counter()
            try:
                item = head.result()
            except Exception as e:
                if is_oom(e):
                    raise
                self.pages.pop(key, None)
                self.deliver(key, e)
                continue
            if (waited := time.perf_counter() - t0) > 0.05:
                log.debug("decoder waited %.2f s for page preparation", waited)
            self.budgets[item.key] = item.budget
            return item


def serve(engine: DeepSeekEngine, feed: Feed, deliver: Deliver, stop: Stop | None = None) -> None:
    """Decode every page ``feed`` gives until it ends or ``stop()``. Raises what the decoder
    raises (a CUDA out-of-memory error lowers the engine's decode slots first); every page
    finished before that has been delivered, the others are the caller's to run again."""
    slots = engine._slot_limit.cap(engine.slots)
    source = PageSource(engine, feed, deliver, slots)
    posted: list[Future[None]] = []
    finished = 0

    def result(key: int, page: PageImage, tokens: list[int], budget: int) -> None:
        try:
            res: PageResult | BaseException = engine._result(
                page, engine.token_plan(page), tokens, budget
            )
        except Exception as e:
            res = e
        try:
            deliver(key, res)  # here, not in a done-callback: waiting on the task waits for it
        except Exception:  # a bug in the runner: say so, the pool would swallow it
            log.exception("could not deliver %s page %d", page.source, page.index + 1)

    def post(key: int, tokens: list[int]) -> None:
        nonlocal finished
        page, budget = source.pages.pop(key), source.budgets.pop(key)
        posted.append(engine._pool.submit(result, key, page, tokens, budget))
        if len(posted) > 4 * slots:
            posted[:] = [f for f in posted if not f.done()]
        # Slots lowered by an out-of-memory error grow back as batches' worth of pages go
        # through without one (BatchLimit's rule, pages for batches).
        finished += 1
        if engine._slot_limit.ceiling and finished % (REFILL_DEPTH * decoder.slots) == 0:
            engine._slot_limit.succeeded(engine.slots)
            decoder.resize(engine._slot_limit.cap(engine.slots), engine.cache_budget())

    decoder = engine.decoder(slots, engine.step_hook(source.pages) if engine.step_hook else None)
    engine.live = decoder
    try:
        decoder.serve(source, on_done=post, stop=stop)
    except Exception as e:
        if is_oom(e):
            engine._slot_limit.lower(max(1, decoder.slots // 2))
        raise
    finally:
        with engine.usage_lock:
            engine.live = None
            engine.decode_stats.add(decoder.stats)
        for _key, fut in source.queue:  # pages prepared but never decoded: the caller's
            fut.cancel()
        wait(posted)  # every finished page is delivered before this returns or raises
