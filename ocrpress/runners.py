"""Where batches run: the engine in this process, or (``device_pool.DevicePool``) one replica
per GPU. Both hand back, per batch, the results, the lowest batch limit a CUDA out-of-memory
error forced (0: none) and what the device did (:class:`~ocrpress.engines.Usage`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .backoff import limited_batch
from .document import PageImage, PageResult
from .engines import Engine, Usage
from .render import InlineFuture


class Runner(Protocol):
    """Where batches run: ``capacity`` batches at once; ``submit`` returns a future."""

    capacity: int

    def submit(self, pages: list[PageImage], retry: bool) -> Any: ...

    def result(self, fut: Any) -> tuple[list[PageResult], int, Usage]: ...


class InlineRunner:
    """The engine in this process: one batch at a time, run synchronously on submit."""

    capacity = 1

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self.engine = engine  # a getter: the model loads on the first batch, if any comes

    def submit(self, pages: list[PageImage], retry: bool) -> InlineFuture:
        return InlineFuture(limited_batch(self.engine(), pages, retry))

    def result(self, fut: Any) -> tuple[list[PageResult], int, Usage]:
        return fut.result()
