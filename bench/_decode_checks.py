"""Decode runs for the GPU profile (``bench/gpu_profile.py``): the refill decoder taking
pages to a forced length with each step timed, decode steps eager against CUDA graphs, and
the host's waits for the device in a decode as the engine runs it."""

from __future__ import annotations

import math
import os
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _timeline import DeviceTimeline
from _vlm import sync

import ocrpress
from ocrpress.engines.decode_graphs import capture_failure
from ocrpress.engines.deepseek import DeepSeekEngine
from ocrpress.engines.kv_slab import columns_for
from ocrpress.engines.refill import RefillDecoder
from ocrpress.engines.refill_items import Prepared, batched_mm_rows, decode_experts
from ocrpress.engines.refill_rows import ADMIT_SHARE

#: The page counts of the prefill calls run so far: a shape's first call under cuDNN pays
#: for a plan, so a check of "new shapes" has to pick counts not in here.
PREFILL_PAGES_SEEN: set[int] = set()


def decode_seconds(
    eng: DeepSeekEngine,
    prepared: list[Prepared],
    length: int,
    rows_cap: int | None,
    attention: Callable[[str], AbstractContextManager[Any]] | None = None,
    graphs: bool = False,
    info: dict[str, Any] | None = None,
) -> tuple[float, float]:
    """Seconds for the refill decoder to take every page to exactly ``length`` tokens, and
    seconds of its decode steps alone (each step ends in a synchronising ``tolist``).
    ``attention``: the decode steps' kernel context instead of the engine's; ``graphs``:
    decode steps as CUDA graphs; ``info`` receives the tokens and the graphs captured."""
    limit = len(eng.tokenizer)
    banned = sorted(eng.eos_ids)

    def no_end(keys: list[int], counts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, banned] = -float("inf")
        scores[:, limit:] = -float("inf")
        return scores

    for it in prepared:
        it.budget = length
    decoder = RefillDecoder(
        eng.hf_model,
        slots=len(prepared),
        eos_ids=eng.eos_ids,
        device=eng.device,
        dtype=eng.dtype,
        guard=None,
        step_hook=no_end,
        prefill_pages=eng.prefill_pages,
        decode_experts=decode_experts(eng.hf_model, eng.device),
        decode_experts_rows=batched_mm_rows(eng.hf_model) if rows_cap is None else rows_cap,
        graphs=graphs,
    )
    if attention is not None:
        decoder.attention = attention
    if eng.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(eng.device)
    t0 = time.perf_counter()
    with DeviceTimeline() as timeline:  # each step's and prefill's call
        tokens = decoder.run(prepared)
    sync(eng.device)
    secs = time.perf_counter() - t0
    step_times = [end - start for start, end, _ in timeline.calls["_step"]]
    PREFILL_PAGES_SEEN.update(pages for *_, pages in timeline.calls["_prefill"])
    if info is not None:
        # A graphs run's first step is its capture (and the capture's eager warm-up).
        first = step_times[0] if step_times else 0.0
        info.update(tokens=tokens, captures=decoder.stats.captures, first_step=first)
    bad = sum(len(t) != length for t in tokens.values())
    if bad:
        print(f"WARNING: {bad} pages did not reach {length} tokens")
    return secs, sum(step_times)


def graph_check(
    eng: DeepSeekEngine, prepared: list[Prepared], rows: list[int], length: int
) -> None:
    """A decode step's cost eager and as CUDA graphs (the engine's kernels and experts
    settings), by rows. A graphs run's steps include its captures (one here: neither the rows
    nor the cache's buffer change in a run), and its first step is that capture with its
    eager warm-up: the time printed for it is what each new cache buffer costs a rows bucket
    again (bench/cache_schedule.py counts those over a job), and the steps after it are
    timed apart (what a step costs once captured). In bf16 the graphs' attention over the
    whole buffer may round differently, so the share of equal tokens is printed, not
    asserted."""
    print(f"decode steps eager and as CUDA graphs, {length - 1} steps a run:")
    for n in rows:
        if n > len(prepared):
            break
        runs: dict[bool, dict[str, Any]] = {}
        for graphs in (False, True):
            info: dict[str, Any] = {}
            _, step_s = decode_seconds(eng, prepared[:n], length, None, graphs=graphs, info=info)
            runs[graphs] = info
            later = (step_s - info["first_step"]) / max(1, length - 2)
            print(
                f"  {n:4d} rows, {'graphs' if graphs else 'eager '}: "
                f"{step_s / (length - 1) * 1000:6.1f} ms a step, {later * 1000:6.1f} after the "
                f"first; {info['captures']} captured; first step {info['first_step'] * 1000:.1f} ms"
            )
        if capture_failure():
            print(f"  CAPTURE FAILED, the graphs runs were eager: {capture_failure()}")
        eager, graphed = runs[False]["tokens"], runs[True]["tokens"]
        pairs = [(a, b) for k in eager for a, b in zip(eager[k], graphed[k], strict=False)]
        print(
            f"  {n:4d} rows: {sum(a == b for a, b in pairs) / max(1, len(pairs)):.3f} equal tokens"
        )


def wait_check(eng: DeepSeekEngine, prepared: list[Prepared], length: int) -> None:
    """Where the host waits for the device in a decode as the engine would run it with CUDA
    graphs and tokens read a step late (the n-gram guard on, pages ending at different
    steps so that rows leave mid-run): CUDA's sync debug mode warns at each wait, counted
    by the function that asked. Outside the model's own calls the CPU tests expect one wait
    a step (its tokens, an event) and one a prefill; the model's eager prefills and the
    graphs' captures wait inside transformers. A second run has a cache budget so tight
    that rows are parked in host memory and rejoin: their keys' copies, through pinned
    memory, should add no wait."""
    if not torch.cuda.is_available():
        print("host waits: CUDA only (the CPU tests count them by operator)")
        return
    # The second run, last (the checks' time limit may cut it): 8 rows, all admitted at the
    # prompt's width, in a budget that parks some once the window is ~11% wider (at its
    # second buffer in gundam mode, hence 300 steps).
    few, long = prepared[:8], max(length, 300)
    # Rounded up (and one more): rounded down, it admits one row fewer, and that row's room
    # keeps the others from being parked.
    prompt = max(it.prompt_length for it in few)
    tight = math.ceil(len(few) * columns_for(prompt) / ADMIT_SHARE) + 1
    for rows, steps, budget in ((prepared, length, None), (few, long, tight)):
        saved = eng.decode_graphs, eng.read_late
        eng.decode_graphs, eng.read_late = True, True
        decoder = eng.decoder(len(rows), None)
        eng.decode_graphs, eng.read_late = saved
        label = "the engine's"
        if budget is not None:
            decoder.resize(len(rows), budget)
            label = f"{budget:,} positions"
        for i, it in enumerate(rows):
            it.budget = max(2, steps - 5 * (i % 8))  # rows leave every few steps
        waited: Counter[str] = Counter()
        waits = count_waits(partial(decoder.run, rows), eng.device, waited)
        st = decoder.stats
        print(
            f"host waits, {len(rows)} rows, graphs and read late, cache budget {label}: "
            f"{st.steps} steps, {st.prefills} prefills, {st.captures} captured, "
            f"{st.parked} pages parked; waits by caller (seconds where timed):"
        )
        for where, n in waits.most_common(12):
            timed = f" {waited[where]:7.2f} s" if where in waited else ""
            print(f"  {n:6d}{timed}  {where}")
        if budget is not None and not st.parked:
            print("  WARNING: no page was parked, so this run says nothing of parking's waits")
    print(
        "  (not seen as waits: a non_blocking copy from pageable memory, which is synchronous"
        " without a warning, and pinning host memory)"
    )
    if capture_failure():
        print(f"  CAPTURE FAILED, the steps were eager: {capture_failure()}")


#: Frames that say who waited: ocrpress's package and transformers' (matched by folder, not
#: by a name the checkout's own path may hold).
_WHO = (str(Path(ocrpress.__file__).parent) + os.sep, f"{os.sep}transformers{os.sep}")


def _caller(frames: list[traceback.FrameSummary]) -> str:
    """The innermost of ocrpress's or transformers' frames (else the innermost outside this
    file): who waited."""
    frames = [f for f in frames if f.filename != __file__] or frames
    ours = [f for f in frames if any(w in f.filename for w in _WHO)]
    where = ours[-1] if ours else frames[-1]
    return f"{Path(where.filename).name}:{where.lineno} {where.name}"


@contextmanager
def counting_calls(
    owner: type, name: str, calls: Counter[str] | None, seconds: Counter[str]
) -> Iterator[None]:
    """Time each call of ``owner.name`` by its caller while the block runs, and count it
    into ``calls`` unless that is None (for calls something else counts)."""
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        where = _caller(traceback.extract_stack()[:-1])
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if calls is not None:
                calls[where] += 1
            seconds[where] += time.perf_counter() - t

    setattr(owner, name, counted)
    try:
        yield
    finally:
        setattr(owner, name, original)


def count_waits(
    work: Callable[[], Any], device: str, seconds: Counter[str] | None = None
) -> Counter[str]:
    """The waits for the device while ``work()`` runs, by the function that asked: those
    CUDA's sync debug mode warns at (a stream's ``synchronize`` among them: a capture's
    warm-up), and an event's ``synchronize``, which it does not see (the step's tokens);
    both ``synchronize`` calls are also timed into ``seconds``."""
    waits: Counter[str] = Counter()
    seconds = Counter() if seconds is None else seconds
    show = warnings.showwarning

    def record(message: Any, *args: Any, **kwargs: Any) -> None:
        if "synchronizing CUDA operation" not in str(message):
            return show(message, *args, **kwargs)
        frames = [f for f in traceback.extract_stack()[:-2] if "warnings" not in f.filename]
        waits[_caller(frames)] += 1

    sync(device)
    with (
        warnings.catch_warnings(),
        counting_calls(torch.cuda.Event, "synchronize", waits, seconds),
        counting_calls(torch.cuda.Stream, "synchronize", None, seconds),  # it warns
    ):
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return waits
