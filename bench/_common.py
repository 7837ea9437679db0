"""Shared bench helpers: generated documents and a process-tree RSS sampler."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # docgen lives with the tests

from docgen import make_pdf, sample_text  # noqa: E402


def text_pdf(path: Path, pages: int, lines_per_page: int = 30, seed: int = 0) -> Path:
    """A PDF of ``pages`` pages of generated prose (the same generator the tests use)."""
    if not path.exists():
        make_pdf(path, [sample_text(lines_per_page, seed + i) for i in range(pages)])
    return path


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
        todo += _children(p)
    return total


class PeakSampler(threading.Thread):
    """Samples a process tree's RSS every ``interval`` seconds; ``peak`` in KiB."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, tree_rss_kib(self.pid))
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak
