"""Deterministic test engines: fast stand-ins for a model, selectable as ``fake_engines:Name``."""

from __future__ import annotations

import hashlib
import os
import threading
import time

from ocrpress.document import Block, PageImage, PageResult
from ocrpress.engines import EngineOptions, PagePlan
from ocrpress.inputs import InputDoc
from ocrpress.render import render_task


class EchoEngine:
    """Returns a digest of the page pixels as its text: equal pixels, equal output."""

    name = "echo"
    mode: str | None = None

    def __init__(self, opts: EngineOptions | None = None) -> None:
        self.opts = opts or EngineOptions()
        self.model = "echo-1"
        self.mode = self.opts.mode
        self.max_batch_size = self.opts.batch_size or 4
        self.delay = float(os.environ.get("ECHO_DELAY", "0"))
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def plan(self, page: PageImage) -> PagePlan:
        # Two batch keys, so tests see bucketing across documents.
        return PagePlan(batch_key=page.width > page.height, vision_tokens=100)

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        self.batches.append(len(batch))
        if self.delay:
            time.sleep(self.delay * len(batch))
        return [self._one(p) for p in batch]

    def _one(self, page: PageImage) -> PageResult:
        digest = hashlib.sha256(page.image.tobytes()).hexdigest()[:16]
        text = f"{os.path.basename(page.source)} p{page.index + 1} {digest}"
        return PageResult.for_page(
            page,
            self.name,
            model=self.model,
            vision_tokens=100,
            text_tokens=len(text.split()),
            blocks=[Block("text", (0, 0, page.width, page.height), text)],
        )

    def close(self) -> None:
        pass


class OomEngine(EchoEngine):
    """Raises torch's CUDA out-of-memory error for batches above ``limit`` pages."""

    def __init__(self, opts: EngineOptions | None = None, limit: int = 2) -> None:
        super().__init__(opts)
        self.limit = limit
        self.max_batch_size = 8

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        import torch

        if len(batch) > self.limit:
            self.batches.append(-len(batch))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().run(batch)


class FlakyEngine(EchoEngine):
    """Fails on every document's second page (a page the model chokes on)."""

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        if any(p.index == 1 for p in batch):
            raise RuntimeError("model choked on this page")
        return super().run(batch)


class FaultyEngine(EchoEngine):
    """Echo, except for documents whose name says how to misbehave (fault corpus):
    ``planfail`` -> ``plan`` raises; ``nanfig`` -> a figure block whose box is NaN."""

    def plan(self, page: PageImage) -> PagePlan:
        if "planfail" in page.source:
            raise ValueError("cannot plan this page")
        return super().plan(page)

    def _one(self, page: PageImage) -> PageResult:
        res = super()._one(page)
        if "nanfig" in page.source:
            nan = float("nan")
            res.blocks.append(Block("figure", (nan, nan, nan, nan), ""))
        return res


def crash_render(doc: InputDoc, index: int, dpi: int, ocr: str = "always") -> object:
    """A render task whose worker dies on page 1 of documents named ``crash*`` (as a MuPDF
    segfault would kill it): for RenderQueue tests."""
    if os.path.basename(doc.path).startswith("crash") and index == 0:
        os._exit(139)
    return render_task(doc, index, dpi, ocr)


class CountingEcho(EchoEngine):
    """EchoEngine that appends ``source index`` per page it runs to ``$OCRPRESS_COUNT_FILE``:
    how a test sees, across processes, which pages reached an engine."""

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        with open(os.environ["OCRPRESS_COUNT_FILE"], "a") as f:
            f.writelines(f"{os.path.basename(p.source)} {p.index}\n" for p in batch)
        return super().run(batch)
