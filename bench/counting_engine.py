"""Bench plugin: the real rapid engine, appending one line per page it starts to OCR.

Lines are written *before* the OCR runs, so a page whose work a kill interrupted counts as
computed: that is the work a resume has to redo.

Used as ``--engine counting_engine:CountingRapid`` (bench/ on PYTHONPATH) so bench/resume.py
can count pages computed across killed runs.
"""

from __future__ import annotations

import os

from ocrpress.document import PageImage, PageResult
from ocrpress.engines.rapid import RapidEngine


class CountingRapid(RapidEngine):
    def run(self, batch: list[PageImage]) -> list[PageResult]:
        with open(os.environ["OCRPRESS_BENCH_COUNT"], "a") as f:
            f.writelines(f"{p.source} {p.index}\n" for p in batch)
        return super().run(batch)
