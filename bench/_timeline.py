"""A device timeline of one run, for the benchmarks: when the refill decoder's prefills and
decode steps ran, so that a run's idle time can be placed (before the first prefill, between
device calls, after the last step)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocrpress.engines.deepseek import DeepSeekEngine


class DeviceTimeline:
    """When the refill decoder's prefills and decode steps ran during a run (both end in a
    synchronising ``tolist``, so their wall time is the device's): what the engine waited
    for before its first prefill and after its last step, and a prefill's cost a call."""

    def __init__(self, read_late: bool = False) -> None:
        self.calls: dict[str, list[tuple[float, float, int]]] = {"_prefill": [], "_step": []}
        # Tokens read a step late: a call waits for the one before it, not for itself.
        self.read_late = read_late

    def __enter__(self) -> DeviceTimeline:
        from ocrpress.engines.refill import RefillDecoder  # after _vlm put the repo on the path

        self.decoder = RefillDecoder
        self.t0 = time.perf_counter()
        self.saved = {name: getattr(RefillDecoder, name) for name in self.calls}
        for name, original in self.saved.items():
            setattr(RefillDecoder, name, self._timed(name, original))
        return self

    def __exit__(self, *exc: object) -> None:
        self.t1 = time.perf_counter()
        for name, original in self.saved.items():
            setattr(self.decoder, name, original)

    def _timed(self, name: str, original):
        calls = self.calls[name]

        def timed(decoder, rows, *args, **kwargs):
            start = time.perf_counter()
            # A prefill's pages: its group; a step's: the rows running as it starts.
            pages = len(args[0]) if name == "_prefill" else len(rows.keys)
            out = original(decoder, rows, *args, **kwargs)
            calls.append((start - self.t0, time.perf_counter() - self.t0, pages))
            return out

        return timed

    def report(self) -> str:
        pre, steps = self.calls["_prefill"], self.calls["_step"]
        if not pre:
            return "timeline: no prefill ran"
        wall = self.t1 - self.t0
        pre_s = sum(b - a for a, b, _ in pre)
        step_s = sum(b - a for a, b, _ in steps)
        pages = sum(n for *_, n in pre)
        end = max(b for _, b, _ in pre + steps)
        rows = sum(n for *_, n in steps) / max(1, len(steps))
        return (
            f"timeline: first prefill at {pre[0][0]:.1f} s; {len(pre)} prefills of "
            f"{pages / len(pre):.1f} pages, {pre_s:.1f} s ({pre_s / len(pre) * 1000:.0f} ms a "
            f"call); {len(steps)} steps of {rows:.1f} rows, {step_s:.1f} s "
            f"({step_s / max(1, len(steps)) * 1000:.1f} ms a step); between them "
            f"{end - pre[0][0] - pre_s - step_s:.1f} s; after the last {wall - end:.1f} s "
            f"(run {wall:.1f} s)\n" + self.late_note() + self.steady(pre_s / pages)
        )

    def late_note(self) -> str:
        if not self.read_late:
            return ""
        return (
            "(tokens read a step late: a call's time is mostly the device time of the call "
            "before it, so single calls are shifted by one; sums and the estimate below hold)\n"
        )

    def steady(self, prefill_per_page: float) -> str:
        """Steps by rows (near the most, or fewer: the run filling up and draining), and an
        estimate of a long job's pages/s: every step as full as the full ones here, each page
        costing its prefill and its share of steps. A run of a few times the slots spends
        much of its time filling and draining; the estimate says what the engine does once
        it no longer does."""
        steps = self.calls["_step"]
        if not steps:
            return "steady state: no decode step ran"
        most = max(n for *_, n in steps)
        full = [(b - a, n) for a, b, n in steps if n >= most * 7 // 8]
        step_s = sum(t for t, _ in full) / len(full)
        rows = sum(n for _, n in full) / len(full)
        pages = sum(n for *_, n in self.calls["_prefill"])
        tokens = sum(n for *_, n in steps) / pages  # decode steps a page took
        rate = 1 / (prefill_per_page + tokens * step_s / rows)
        return (
            f"steady state: {len(full)} of {len(steps)} steps ran >= 7/8 of the most rows "
            f"({most}), {step_s * 1000:.1f} ms a step at {rows:.0f} rows; a long job of "
            f"{tokens:.0f}-token pages would make ~{rate:.2f} pages/s (an estimate: these "
            f"steps, and {prefill_per_page * 1000:.0f} ms of prefill a page)"
        )


def line(label: str, pages: int, secs: float, tokens: int, busy: float, slots: float | None):
    s = "  n/a" if slots is None else f"{slots:5.2f}"
    print(
        f"{label:<17}: {pages:4d} pages {secs:8.1f} s {pages / secs:7.2f} pages/s "
        f"{tokens / secs:8.0f} tokens/s  busy {busy:4.2f}  slots {s}"
    )


def graphs_line(eng: DeepSeekEngine, warm_up: int = 0) -> str:
    """The captures since the warm-up's ``warm_up`` ones, and loudly a capture that failed
    (the run then went on eager)."""
    from ocrpress.engines.decode_graphs import capture_failure

    failed = capture_failure()
    text = (
        f"decode steps captured as CUDA graphs: {eng.decode_stats.captures - warm_up} "
        f"(and {warm_up} in the warm-up)"
    )
    return text + (f"; CAPTURE FAILED, steps ran eager: {failed}" if failed else "")
