"""Test engines for scale-out: they show which device a page ran on (``module:Class`` names)."""

from __future__ import annotations

import os

from fake_engines import EchoEngine

from ocrpress.document import PageImage, PageResult


class DeviceEchoEngine(EchoEngine):
    """EchoEngine that appends the CUDA_VISIBLE_DEVICES its process saw to each page's text."""

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        seen = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        results = super().run(batch)
        for r in results:
            r.blocks[0].text += f" cvd={seen} pid={os.getpid()}"
        return results
