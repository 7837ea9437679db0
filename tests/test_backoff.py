"""OOM back-off: memory of the failed call is released before the retry; the limit grows back."""

from __future__ import annotations

import weakref

import pytest
from fake_engines import EchoEngine
from PIL import Image

from ocrpress import backoff
from ocrpress.backoff import GROW_AFTER, BatchLimit, run_batch, run_with_backoff
from ocrpress.document import PageImage, PageResult


class OutOfMemoryError(RuntimeError):
    """Named like torch's, which is how the back-off recognises it."""


class _Activations:
    """Stands for the KV cache and activations a real batch allocates before it runs out."""


def _pages(n: int) -> list[PageImage]:
    return [PageImage(f"d{i}.png", i, Image.new("RGB", (20, 30), "white"), 72.0) for i in range(n)]


class HoardingEngine(EchoEngine):
    """Allocates (a local in its own frame) before raising OOM for batches above ``fits``; every
    call checks that no earlier allocation is still alive and that the cache was emptied."""

    def __init__(self, fits: int, events: list[str]) -> None:
        super().__init__()
        self.fits = fits
        self.events = events
        self.held: list[weakref.ref[_Activations]] = []
        self.leaks: list[int] = []

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        self.leaks.append(sum(r() is not None for r in self.held))
        self.events.append(f"run {len(batch)}")
        activations = _Activations()
        self.held.append(weakref.ref(activations))
        if len(batch) > self.fits:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        del activations
        return super().run(batch)

    def retry_truncated(self, batch: list[PageImage]) -> list[PageResult]:
        self.events.append(f"retry {len(batch)}")
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    log: list[str] = []
    monkeypatch.setattr(backoff, "free_cuda_cache", lambda: log.append("empty_cache"))
    return log


def test_failed_call_is_released_before_the_retry(events: list[str]) -> None:
    eng = HoardingEngine(fits=2, events=events)
    limits: list[int] = []
    results = run_with_backoff(eng, _pages(8), limits.append)
    assert [r.status for r in results] == ["ok"] * 8
    assert [r.index for r in results] == list(range(8))
    assert eng.leaks == [0] * len(eng.leaks), "a failed batch's allocation outlived it"
    # every retry comes after the cache was emptied
    assert events[:4] == ["run 8", "empty_cache", "run 4", "empty_cache"]
    assert limits == [4, 2, 2]


def test_retry_truncated_backs_off_and_keeps_the_first_pass(events: list[str]) -> None:
    eng = HoardingEngine(fits=8, events=events)
    pages = _pages(3)

    def truncating(batch: list[PageImage]) -> list[PageResult]:
        out = EchoEngine.run(eng, batch)
        out[1].status = "truncated"
        return out

    eng.run = truncating  # type: ignore[method-assign]
    results = run_batch(eng, pages, retry=True, on_limit=None)
    assert [r.status for r in results] == ["ok", "truncated", "ok"]
    assert "first pass kept" in results[1].notes[-1]
    assert events.count("retry 1") == 1 and "empty_cache" in events


def test_limit_grows_back_then_pins() -> None:
    lim = BatchLimit()
    assert lim.cap(16) == 16
    lim.lower(4)
    assert lim.cap(16) == 4
    for _ in range(GROW_AFTER - 1):
        lim.succeeded(16)
    assert lim.cap(16) == 4
    lim.succeeded(16)
    assert lim.cap(16) == 8
    for _ in range(GROW_AFTER):
        lim.succeeded(16)
    assert lim.cap(16) == 16  # back to the engine's own size
    lim.lower(8)  # failing again after growing back: kept for the rest of the job
    for _ in range(3 * GROW_AFTER):
        lim.succeeded(16)
    assert lim.cap(16) == 8


def test_usage_becomes_busy_fraction_and_slot_utilisation() -> None:
    from ocrpress.engines import Usage
    from ocrpress.stats import RunStats

    s = RunStats(wall_seconds=10.0, pages=4, engine_replicas=2)
    s.add_usage(Usage(device_seconds=6.0, slot_tokens=90, slot_capacity=100))
    s.add_usage(Usage(device_seconds=8.0, slot_tokens=0, slot_capacity=0))
    d = s.to_dict()
    assert d["engine_busy_fraction"] == 0.7  # 14 s of 2 replicas x 10 s
    assert d["decode_slot_utilisation"] == 0.9
    assert "engine busy 70%, decode slots 90% used" in s.summary()
    assert RunStats().to_dict()["decode_slot_utilisation"] is None
