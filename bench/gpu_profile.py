"""Where the DeepSeek engine's GPU time goes: the prefill's cost a page and a decode step's
cost by rows, for each MoE experts setting of the decode steps (``grouped_mm``, ``batched_mm``
and the engine's choice by rows) and for transformers' ``generate``; peak memory; the pages/s
of the engine's CPU preparation with 1..8 threads; and the top operators of one run
(torch.profiler).

Pages are prepared before anything is timed, and the refill decoder runs on them directly, so
the CPU's preparation never counts as prefill. ``B`` pages are decoded to 1 token (the prefill
alone), then to ``--long`` tokens (EOS banned until then) once per setting, each decode step
timed. ``generate`` prepares its pages inside its call: its step cost is the difference of a
``--short`` and a ``--long`` run over their steps.

    python bench/gpu_profile.py                 # full size on a GPU
    python bench/gpu_profile.py --tiny          # CPU check of the script
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import torch
from _decode_checks import PREFILL_PAGES_SEEN, decode_seconds, graph_check, wait_check
from _vlm import A4_144DPI, ForceLengths, build_model, sync, synthetic_pages

from ocrpress.engines import EngineOptions
from ocrpress.engines.deepseek import DeepSeekEngine
from ocrpress.engines.refill_items import (
    Prepared,
    batched_mm_rows,
    decode_attention,
    decode_experts,
)

#: Decode-step experts settings compared: most rows that run batched_mm (None: the engine's).
SETTINGS = {"grouped": 0, "batched": 10**9, "engine": None}


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0


def generate_seconds(eng: DeepSeekEngine, pages: list, length: int) -> float:
    """Seconds for one ``generate`` call (preparation included) forcing ``length`` tokens."""
    eos, limit = min(eng.eos_ids), len(eng.tokenizer)
    sync(eng.device)
    t0 = time.perf_counter()
    eng.generate_ids(pages, extra_processors=[ForceLengths([length] * len(pages), eos, limit)])
    sync(eng.device)
    return time.perf_counter() - t0


def step_table(eng: DeepSeekEngine, prepared: list[Prepared], pages: list, args) -> None:
    steps = args.long - 1
    print(f"a run of {args.long} tokens: {steps} decode steps, timed one by one")
    print(" rows | prefill s | s/page | setting  | ms/step | ms/step/row | tokens/s | peak GiB")
    for b in (int(x) for x in args.batches.split(",")):
        if b > len(prepared):
            break
        try:
            pre, _ = decode_seconds(eng, prepared[:b], 1, 0)
        except torch.OutOfMemoryError as exc:
            print(f" {b:4d} | out of memory in the prefill: {str(exc).splitlines()[0][:80]}")
            torch.cuda.empty_cache()
            break
        for name, cap in SETTINGS.items():
            try:
                _, step_s = decode_seconds(eng, prepared[:b], args.long, cap)
            except torch.OutOfMemoryError as exc:
                print(f" {b:4d} | {name:<8} | out of memory: {str(exc).splitlines()[0][:80]}")
                torch.cuda.empty_cache()
                continue
            ms = step_s / steps * 1000
            print(
                f" {b:4d} | {pre:9.2f} | {pre / b:6.3f} | {name:<8} | {ms:7.1f} | "
                f"{ms / b:11.2f} | {b * 1000 / ms:8.0f} | {peak_gib(eng.device):4.1f}"
            )
        if b <= args.generate_max:
            try:
                long = generate_seconds(eng, pages[:b], args.long)
                ms = (long - generate_seconds(eng, pages[:b], args.short)) * 1000
                ms /= args.long - args.short
                print(f" {b:4d} |           |        | generate | {ms:7.1f} | {ms / b:11.2f} |")
            except torch.OutOfMemoryError:
                print(f" {b:4d} | generate: out of memory")
                torch.cuda.empty_cache()


#: Attention kernels compared: PyTorch's default (cuDNN allowed: a plan for each new shape)
#: and the engine's decode-step kernels (None: :func:`decode_attention`).
KERNELS = {"default (cuDNN allowed)": lambda device: nullcontext(), "no cuDNN": None}


def plan_check(eng: DeepSeekEngine, prepared: list[Prepared], rows: int, length: int) -> None:
    """A decode step's cost under each set of kernels, on shapes it has not seen, then again."""
    print(f"decode steps of {rows}/{rows + 1} rows, {length - 1} steps a run:")
    for n, (name, attention) in enumerate(KERNELS.items()):
        for run in ("new shapes", "same again"):
            _, step_s = decode_seconds(eng, prepared[: rows + n], length, None, attention)
            print(f"  {name:<24} {run:<10}: {step_s / (length - 1) * 1000:6.1f} ms a step")


def prefill_check(eng: DeepSeekEngine, prepared: list[Prepared]) -> None:
    """A prefill call's cost with the whole call under each set of kernels (the engine keeps
    PyTorch's default for prefills), on page counts it has not seen, then again."""
    most = min(eng.prefill_pages, len(prepared))
    fresh = [p for p in range(most - 1, 0, -1) if not {p, p + 1} & PREFILL_PAGES_SEEN]
    pages = fresh[0] if fresh else max(1, most - 2)
    print(f"prefill of {pages}/{pages + 1} pages (one call each):")
    if not fresh:
        print(f"  WARNING: every page count up to {most} has been prefilled: not new shapes")
    for n, (name, attention) in enumerate(KERNELS.items()):
        for run in ("new shapes", "same again"):
            with (attention or decode_attention)(eng.device):
                secs, _ = decode_seconds(eng, prepared[: pages + n], 1, 0)
            print(f"  {name:<24} {run:<10}: {secs:6.2f} s")


def prefill_profile(eng: DeepSeekEngine, prepared: list[Prepared]) -> None:
    """Where one prefill call's time goes (its shapes seen once before): the top operators by
    the host's time and by the device's. On an H100 a gundam call took ~0.7 s for 11 pages and
    0.65 s for one, but on shapes never seen (cuDNN plans included): whether a large part does
    not grow with the pages is what this is to tell."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if eng.device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    for group in (prepared[:1], prepared):
        decode_seconds(eng, group, 1, 0)  # shapes seen
        with torch.profiler.profile(activities=acts) as prof:
            secs, _ = decode_seconds(eng, group, 1, 0)
        print(f"prefill profile: {len(group)} pages, {secs:.2f} s")
        keys = ["cpu_time_total"] + (["self_cuda_time_total"] if eng.device == "cuda" else [])
        for key in keys:
            table = prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=50)
            print(table)


def prep_scaling(eng: DeepSeekEngine, size: tuple[int, int], threads: str) -> None:
    """Pages/s of the engine's CPU preparation with 1, 2, 4... threads (the GIL's share)."""

    pages = synthetic_pages(16, size, 7)
    eng.prepare(pages[0])  # warm
    for n in (int(t) for t in threads.split(",")):
        with ThreadPoolExecutor(n) as pool:
            t0 = time.perf_counter()
            list(pool.map(eng.prepare, pages))
            secs = time.perf_counter() - t0
        print(f"preparation, {n} threads: {len(pages) / secs:6.1f} pages/s")


def profile_run(eng: DeepSeekEngine, prepared: list[Prepared], tokens: int) -> None:
    """The top operators of one decode of ``prepared`` to ``tokens`` tokens."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if eng.device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        secs, _ = decode_seconds(eng, prepared, tokens, None)
    print(f"profile: {len(prepared)} pages, {tokens} tokens, {secs:.2f} s")
    key = "self_cuda_time_total" if eng.device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
    if eng.device == "cuda":
        print(
            prof.key_averages().table(
                sort_by="cpu_time_total", row_limit=15, max_name_column_width=60
            )
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--short", type=int, default=16)
    ap.add_argument("--long", type=int, default=80)
    ap.add_argument("--generate-max", type=int, default=8, help="largest batch for generate")
    ap.add_argument("--profile-batch", type=int, default=8)
    ap.add_argument("--prep-threads", default="1,2,4,8", help="preparation threads to time")
    ap.add_argument(
        "--plans", default="", help="only compare attention kernels at these rows (e.g. 16,96)"
    )
    ap.add_argument(
        "--graphs", default="", help="only compare eager and CUDA-graph decode steps at these rows"
    )
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    mode = args.mode or ("small" if args.tiny else "gundam")
    size = (600, 850) if args.tiny else A4_144DPI
    model, processor = build_model(args.tiny, device, dtype)
    batches = [int(b) for b in args.batches.split(",")]
    opts = EngineOptions(
        engine="deepseek",
        model="random DeepSeek-OCR-2",
        mode=mode,
        device=device,
        dtype="bf16" if dtype == torch.bfloat16 else "fp32",
        batch_size=max(batches),
        max_new_tokens=args.long + 8,
    )
    eng = DeepSeekEngine(opts, components=(model, processor))
    print(
        f"attention: {model.config._attn_implementation}; experts: "
        f"{getattr(model.config.text_config, '_experts_implementation', None)}, decode "
        f"steps of <= {batched_mm_rows(model)} rows on batched_mm "
        f"(switch {'on' if decode_experts(model, device) else 'off'} on {device}); "
        f"prefill pages a call: {eng.prefill_pages}; mode {mode}, page {size}"
    )
    plans = [int(r) for r in args.plans.split(",") if r]
    graph_rows = [int(r) for r in args.graphs.split(",") if r]
    pages = synthetic_pages(max([*batches, *(r + 1 for r in plans), *graph_rows]), size, 7)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        prepared = list(pool.map(eng.prepare, pages, range(len(pages))))
    print(f"prepared {len(pages)} pages in {time.perf_counter() - t0:.1f} s (8 threads)")
    decode_seconds(eng, prepared[:2], 4, None)  # warm-up
    if plans or graph_rows:
        # The graphs' checks first: a time limit that cuts the run cuts the kernels' ones.
        graph_check(eng, prepared, graph_rows, args.long)
        if graph_rows:
            wait_check(eng, prepared[: max(graph_rows)], args.long)
        for rows in plans:
            plan_check(eng, prepared, rows, args.long)
        if plans:
            prefill_check(eng, prepared)
            prefill_profile(eng, prepared[: eng.prefill_pages])
        return 0
    step_table(eng, prepared, pages, args)
    try:
        profile_run(eng, prepared[: args.profile_batch], args.short + 16)
    except torch.OutOfMemoryError as exc:
        print(f"profile: out of memory: {str(exc).splitlines()[0][:90]}")
        torch.cuda.empty_cache()
    prep_scaling(eng, size, args.prep_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
