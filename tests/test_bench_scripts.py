"""The GPU benchmark scripts run through on the CPU (tiny model), as ``bench/gpu_run.sh``
calls them: a lent GPU session has minutes, and a script broken since the last one would
waste them. What only CUDA runs (captures, waits counted under sync debug mode) is not
reached here; what is reached has to work and agree with itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_gpu_profile_checks_run_and_graph_steps_match_eager() -> None:
    out = bench(
        "gpu_profile.py",
        "--tiny",
        "--plans",
        "2",
        "--graphs",
        "1,2",
        "--long",
        "6",
        "--batches",
        "1",
    )
    for part in ("prefill profile", "decode steps eager and as CUDA graphs", "host waits"):
        assert part in out
    equal = re.findall(r"(\d+) rows: ([\d.]+) equal tokens", out)
    assert [rows for rows, _ in equal] == ["1", "2"]
    assert all(float(share) == 1.0 for _, share in equal), out


@pytest.mark.slow
def test_gpu_throughput_end_to_end_with_graphs_and_read_late() -> None:
    out = bench(
        "gpu_throughput.py",
        *("--tiny", "--end-to-end", "--pages", "6", "--min-tokens", "4", "--max-tokens", "4"),
        *("--workers", "1", "--slots", "0", "--cuda-graphs", "--read-late"),
    )
    assert "timeline: first prefill" in out and "steady state:" in out
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["pages"] == 6
    assert result["text_tokens_per_page"] == 4.0  # lengths forced by the bench's hook
    assert 0 < result["engine_busy_fraction"] <= 1


@pytest.mark.slow
def test_gpu_throughput_engine_comparison() -> None:
    out = bench(
        "gpu_throughput.py",
        *("--tiny", "--pages", "6", "--min-tokens", "3", "--max-tokens", "8"),
    )
    pages = re.findall(
        r"^(refill \(ocrpress\)|static batches|naive one-by-one)\s*:\s+(\d+) pages", out, re.M
    )
    assert [n for _, n in pages] == ["6", "6", "6"], out
    assert "refill vs naive:" in out


def test_cache_schedule_counts_padding_only_where_lengths_differ() -> None:
    args = ("--pages", "24", "--slots", "8", "--prompt", "50", "--positions", "2000")
    mixed = bench("cache_schedule.py", *args, "--tokens", "20-60")
    even = bench("cache_schedule.py", *args, "--tokens", "40")
    eager = r"eager steps:.*?positions read over the job: [\d,]+, \+([\d.]+)%"
    mixed_pad = float(re.search(eager, mixed, re.S).group(1))  # type: ignore[union-attr]
    even_pad = float(re.search(eager, even, re.S).group(1))  # type: ignore[union-attr]
    assert even_pad == 0.0 and mixed_pad > 5.0, (mixed, even)


FAKE_SYNCS = """
class Event:
    def synchronize(self):
        time.sleep(0.01)

class Stream:
    def synchronize(self):
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        time.sleep(0.01)
"""


def test_host_waits_count_each_wait_once_by_caller_and_time_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GPU profile's host-wait count (CUDA only, so its CUDA calls are faked here): a
    stream's ``synchronize``, which CUDA's sync debug mode warns about, counts once; an
    event's, which it does not warn about, is counted by the wrapper; both are timed by
    caller; the classes get their methods back after."""
    import time
    import warnings
    from collections import Counter

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import _decode_checks

    # The fakes' code is torch's (not a caller the count names); this test's is ocrpress's.
    fakes: dict[str, Any] = {"time": time, "warnings": warnings}
    exec(compile(FAKE_SYNCS, "/site-packages/torch/cuda/streams.py", "exec"), fakes)
    Event, Stream = fakes["Event"], fakes["Stream"]
    monkeypatch.setattr(_decode_checks, "_WHO", (__file__,))
    originals = (Event.synchronize, Stream.synchronize)
    monkeypatch.setattr(_decode_checks.torch.cuda, "Event", Event)
    monkeypatch.setattr(_decode_checks.torch.cuda, "Stream", Stream)
    monkeypatch.setattr(_decode_checks.torch.cuda, "set_sync_debug_mode", lambda mode: None)
    monkeypatch.setattr(_decode_checks, "sync", lambda device: None)

    def decode() -> None:
        Event().synchronize()
        Event().synchronize()
        Stream().synchronize()

    seconds: Counter[str] = Counter()
    waits = _decode_checks.count_waits(decode, "cuda", seconds)
    assert sum(waits.values()) == 3 and all(" decode" in where for where in waits), waits
    assert set(seconds) == set(waits) and sum(seconds.values()) >= 0.03
    assert (Event.synchronize, Stream.synchronize) == originals
