"""Bench plugin: the real rapid engine, appending one line per page it starts to OCR.

Lines are written *before* the OCR runs, so a page whose work a kill interrupted counts as
computed: that is the work a resume has to redo.

Used as ``--engine counting_engine:CountingRapid`` (bench/ on PYTHONPATH) so bench/resume.py
can count pages computed across killed runs.
"""

from __future__ import annotations

import hashlib
import os
import time

from ocrpress.document import Block, PageImage, PageResult
from ocrpress.engines import PagePlan
from ocrpress.engines.rapid import RapidEngine


class CountingRapid(RapidEngine):
    def run(self, batch: list[PageImage]) -> list[PageResult]:
        with open(os.environ["OCRPRESS_BENCH_COUNT"], "a") as f:
            f.writelines(f"{p.source} {p.index}\n" for p in batch)
        return super().run(batch)


class CountingEcho:
    """A model stand-in for reliability trials: ``ECHO_SECONDS`` per page (default 0.1),
    text = a digest of the page's pixels (equal pixels, equal bytes), counted like
    CountingRapid. Makes 20 kill trials take minutes where OCR would take an hour."""

    name = "counting-echo"
    model = "echo-1"
    mode = None
    max_batch_size = 2

    def __init__(self, opts: object = None) -> None:
        self.opts = opts
        self.seconds = float(os.environ.get("ECHO_SECONDS", "0.1"))

    def plan(self, page: PageImage) -> PagePlan:
        return PagePlan(batch_key=0, vision_tokens=0)

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        with open(os.environ["OCRPRESS_BENCH_COUNT"], "a") as f:
            f.writelines(f"{p.source} {p.index}\n" for p in batch)
        time.sleep(self.seconds * len(batch))
        out = []
        for p in batch:
            text = hashlib.sha256(p.image.tobytes()).hexdigest()
            block = Block("text", (0, 0, p.width, p.height), text)
            out.append(PageResult.for_page(p, self.name, model=self.model, blocks=[block]))
        return out

    def close(self) -> None:
        pass
