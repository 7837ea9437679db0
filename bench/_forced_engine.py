"""A DeepSeek engine whose pages decode to forced lengths, for benches whose engine is built
by name in another process (a Ray actor): ``--engine _forced_engine:ForcedLengthDeepSeek``.

Each page's output length is drawn from ``FORCE_LENGTHS=lo,hi`` by a hash of its source and
index, so every run of the same pages does the same decoding work, whatever process runs it.
"""

from __future__ import annotations

import os
import zlib

from _vlm import force_lengths_hook

from ocrpress.document import PageImage
from ocrpress.engines import EngineOptions
from ocrpress.engines.deepseek import DeepSeekEngine


def target_length(page: PageImage, lo: int, hi: int) -> int:
    """The page's output length: the same in every process (no per-process hash seed)."""
    return lo + zlib.crc32(f"{page.source}:{page.index}".encode()) % (hi - lo + 1)


class ForcedLengthDeepSeek(DeepSeekEngine):
    """DeepSeekEngine that emits exactly ``target_length`` tokens a page, then EOS."""

    def __init__(self, opts: EngineOptions) -> None:
        super().__init__(opts)
        lo, hi = (int(v) for v in os.environ.get("FORCE_LENGTHS", "12,60").split(","))
        self.step_hook = force_lengths_hook(
            lambda page: target_length(page, lo, hi), min(self.eos_ids), len(self.tokenizer)
        )
