"""Where the DeepSeek engine's GPU time goes: prefill and per-step decode cost by batch size,
for the refill decoder and for transformers' ``generate`` on the same pages, peak memory, and
the top operators of one batched run (torch.profiler); and the pages/s of the engine's CPU
preparation with 1..8 threads (how much of it the GIL serialises on the GPU box's cores).

Each batch of ``B`` identical-length pages is decoded twice, to ``--short`` and to ``--long``
forced tokens: (long - short) steps separate the decode step's cost from the prefill's.

    python bench/gpu_profile.py                 # full size on a GPU
    python bench/gpu_profile.py --tiny          # CPU check of the script
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _vlm import A4_144DPI, ForceLengths, build_model, force_lengths_hook, sync, synthetic_pages

from ocrpress.engines import EngineOptions
from ocrpress.engines.deepseek import DeepSeekEngine


def timed_run(
    eng: DeepSeekEngine, pages: list, length: int, generate: bool = False
) -> tuple[float, float]:
    """Seconds for one engine call (or one ``generate`` call) forcing every page to ``length``
    tokens, and peak GiB."""
    eos, limit = min(eng.eos_ids), len(eng.tokenizer)
    target_of = {(p.source, p.index): length for p in pages}
    eng.step_hook = force_lengths_hook(target_of, eos, limit)
    if eng.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(eng.device)
    t0 = time.perf_counter()
    if generate:
        rows = eng.generate_ids(
            pages, extra_processors=[ForceLengths([length] * len(pages), eos, limit)]
        )
        got = [row.index(eos) if eos in row else len(row) for row in rows]
    else:
        got = [r.text_tokens for r in eng.run(pages)]
    sync(eng.device)
    secs = time.perf_counter() - t0
    bad = sum(n != length for n in got)
    if bad:
        print(f"WARNING: {bad} pages did not hit {length} tokens")
    peak = torch.cuda.max_memory_allocated() / 2**30 if eng.device.startswith("cuda") else 0.0
    return secs, peak


def prep_scaling(eng: DeepSeekEngine, size: tuple[int, int], threads: str) -> None:
    """Pages/s of the engine's CPU preparation with 1, 2, 4... threads (the GIL's share)."""
    from concurrent.futures import ThreadPoolExecutor

    pages = synthetic_pages(16, size, 7)
    eng.prepare(pages[0])  # warm
    for n in (int(t) for t in threads.split(",")):
        with ThreadPoolExecutor(n) as pool:
            t0 = time.perf_counter()
            list(pool.map(eng.prepare, pages))
            secs = time.perf_counter() - t0
        print(f"preparation, {n} threads: {len(pages) / secs:6.1f} pages/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--short", type=int, default=16)
    ap.add_argument("--long", type=int, default=96)
    ap.add_argument("--profile-batch", type=int, default=8)
    ap.add_argument("--prep-threads", default="1,2,4,8", help="preparation threads to time")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    mode = args.mode or ("small" if args.tiny else "gundam")
    size = (600, 850) if args.tiny else A4_144DPI
    model, processor = build_model(args.tiny, device, dtype)
    print(
        "attention:",
        model.config._attn_implementation,
        "experts:",
        getattr(model.config.text_config, "_experts_implementation", None),
    )
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
    timed_run(eng, synthetic_pages(2, size, 99), 4)  # warm-up
    steps = args.long - args.short
    print(f"mode {mode}, page {size}; decode cost from {args.short} vs {args.long} tokens")
    print(" path     | batch | prefill+short s | long s | ms/step | ms/step/row | tokens/s | GiB")
    for b in batches:
        pages = synthetic_pages(b, size, b)
        for path in ("refill", "generate"):
            try:
                s_short, _ = timed_run(eng, pages, args.short, path == "generate")
                s_long, peak = timed_run(eng, pages, args.long, path == "generate")
            except torch.OutOfMemoryError as exc:
                print(f" {path:<8} | {b:5d} | out of memory: {str(exc).splitlines()[0][:90]}")
                torch.cuda.empty_cache()
                continue
            ms = (s_long - s_short) / steps * 1000
            print(
                f" {path:<8} | {b:5d} | {s_short:15.2f} | {s_long:6.2f} | {ms:7.1f} | "
                f"{ms / b:11.2f} | {b * steps / (s_long - s_short):8.0f} | {peak:4.1f}"
            )
    prep_scaling(eng, size, args.prep_threads)
    b = args.profile_batch
    pages = synthetic_pages(b, size, 1000 + b)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        secs, _ = timed_run(eng, pages, args.short + 16)
    print(f"profile: batch {b}, {args.short + 16} tokens, {secs:.2f} s")
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
    if device == "cuda":
        print(
            prof.key_averages().table(
                sort_by="cpu_time_total", row_limit=15, max_name_column_width=60
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
