"""Bench plugin: the real rapid engine, appending one line per page it OCRs to a file.

Used as ``--engine counting_engine:CountingRapid`` (bench/ on PYTHONPATH) so bench/resume.py
can count pages computed across killed runs.
"""

from __future__ import annotations

import os

from ocrpress.document import PageImage, PageResult
from ocrpress.engines.rapid import RapidEngine


class CountingRapid(RapidEngine):
    def run(self, batch: list[PageImage]) -> list[PageResult]:
        results = super().run(batch)
        with open(os.environ["OCRPRESS_BENCH_COUNT"], "a") as f:
            f.writelines(f"{p.source} {p.index}\n" for p in batch)
            f.flush()
        return results
