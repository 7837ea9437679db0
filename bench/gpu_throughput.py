"""GPU throughput of the DeepSeek engine: naive loop, static batches and refill decoding on the
same pages and output lengths; and the whole tool end to end.

The DeepSeek-OCR-2 architecture is built from its config with random weights (no download):
full size on a GPU, toy size with ``--tiny`` (the CPU proxy). Each page's output length is
forced to a target drawn from 300..1,500 tokens (``--tiny``: the same mix scaled down 25x,
12..60), so every path does exactly the same decoding work. Every mode prints pages/s,
tokens/s, the engine's busy fraction and the decode-slot utilisation.

    python bench/gpu_throughput.py                      # engine: naive vs static vs refill
    python bench/gpu_throughput.py --end-to-end         # render, prepare, decode, write
    python bench/gpu_throughput.py --tiny [--end-to-end]  # CPU proxy (goals: slots, busy >= 0.9)
    python bench/gpu_throughput.py --full-size-cpu      # full-size shapes on the CPU, 1 page
    python bench/gpu_throughput.py --engine vllm --model ./DeepSeek-OCR-2 --dummy-weights

``--end-to-end`` writes A4 PDFs of generated prose and converts them with the pipeline the CLI
runs (render workers, page preparation, refill decoding, figure crops, journal and output
writing), with the engine built in memory instead of loaded from disk.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
from _end_to_end import end_to_end
from _timeline import graphs_line, line
from _vlm import (
    A4_144DPI,
    ForceLengths,
    build_model,
    force_lengths_hook,
    lengths,
    sync,
    synthetic_pages,
)

from ocrpress.document import PageImage
from ocrpress.engines import EngineOptions
from ocrpress.engines.deepseek import PROMPTS, DeepSeekEngine
from ocrpress.engines.refill_items import decode_attention
from ocrpress.modes import plan_tokens

TINY_SCALE = 25  # --tiny divides output lengths by this


def run_naive(
    eng: DeepSeekEngine, pages: list[PageImage], targets: list[int], budget_s: float | None = None
) -> tuple:
    """What a first script does: processor -> generate -> decode, one page at a time. With
    ``budget_s`` it stops after the page that crosses the budget (a GPU lease is short) and
    returns how many pages it did as a fifth value."""
    eos, limit = min(eng.eos_ids), len(eng.tokenizer)
    tokens, device_s, done = 0, 0.0, 0
    sync(eng.device)
    t0 = time.perf_counter()
    for page, target in zip(pages, targets, strict=True):
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
        inputs = eng.processor(
            images=[page.image],
            text=[PROMPTS["markdown"]],
            return_tensors="pt",
            **_processor_kwargs(eng),
        ).to(eng.device, dtype=eng.dtype)
        n = inputs["input_ids"].shape[1]
        d0 = time.perf_counter()
        with torch.inference_mode(), decode_attention(eng.device):  # the engine's kernels
            out = eng.hf_model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=8192,
                logits_processor=[ForceLengths([target], eos, limit)],
            )
        gen = out[0, n:].tolist()
        device_s += time.perf_counter() - d0
        tokens += len(gen) - (gen[-1] == eos)
        eng.tokenizer.decode(gen, skip_special_tokens=False)
        done += 1
    sync(eng.device)
    secs = time.perf_counter() - t0
    return secs, tokens, device_s / secs, None, done


def _processor_kwargs(eng: DeepSeekEngine) -> dict:
    spec = eng.mode_spec
    kw: dict = {"size": {"height": spec.base_size, "width": spec.base_size}}
    if spec.tile_size is None:
        return kw | {"crop_to_patches": False, "tile_size": spec.base_size}
    return kw | {
        "crop_to_patches": True,
        "tile_size": spec.tile_size,
        "min_patches": 2,
        "max_patches": eng.opts.max_tiles,
    }


def run_static(eng: DeepSeekEngine, pages: list[PageImage], targets: list[int]) -> tuple:
    """Static batches of ``slots`` pages (transformers ``generate``): each decodes until its
    longest page."""
    eos, limit, slots = min(eng.eos_ids), len(eng.tokenizer), eng.slots
    tokens, device_s, capacity = 0, 0.0, 0
    sync(eng.device)
    t0 = time.perf_counter()
    for i in range(0, len(pages), slots):
        chunk, want = pages[i : i + slots], targets[i : i + slots]
        d0 = time.perf_counter()
        rows = eng.generate_ids(chunk, extra_processors=[ForceLengths(want, eos, limit)])
        device_s += time.perf_counter() - d0
        for row in rows:
            text = row[: row.index(eos)] if eos in row else row
            tokens += len(text)
            eng.tokenizer.decode(text, skip_special_tokens=False)
        capacity += max(want) * slots
    sync(eng.device)
    secs = time.perf_counter() - t0
    return secs, tokens, device_s / secs, sum(targets) / capacity


def run_refill(eng: DeepSeekEngine, pages: list[PageImage], targets: list[int]) -> tuple:
    """The engine as the pipeline drives it: calls of ``max_batch_size`` pages."""
    target_of = {(p.source, p.index): t for p, t in zip(pages, targets, strict=True)}
    eng.step_hook = force_lengths_hook(
        lambda p: target_of[(p.source, p.index)], min(eng.eos_ids), len(eng.tokenizer)
    )
    before = eng.usage()
    tokens = bad = 0
    sync(eng.device)
    t0 = time.perf_counter()
    for i in range(0, len(pages), eng.max_batch_size):
        for r in eng.run(pages[i : i + eng.max_batch_size]):
            tokens += r.text_tokens or 0
            bad += r.text_tokens != target_of[(r.source, r.index)]
    sync(eng.device)
    secs = time.perf_counter() - t0
    u = eng.usage().minus(before)
    if bad:
        print(f"WARNING: {bad} pages did not hit their forced length")
    return secs, tokens, u.device_seconds / secs, u.slot_tokens / max(1, u.slot_capacity)


def full_size_cpu(args: argparse.Namespace) -> int:
    """Full-size DeepSeek-OCR-2 (random fp32 weights, ~14 GB) on the CPU: one A4 page in
    gundam mode, a few tokens. fp32 because CPUs without native bf16 run bf16 matmuls ~200x
    slower (measured here: 145 s vs 0.7 s for a 2048^2 product)."""
    model, processor = build_model(False, "cpu", torch.float32)
    opts = EngineOptions(
        engine="deepseek",
        model="random DeepSeek-OCR-2 (full size)",
        mode="gundam",
        device="cpu",
        dtype="fp32",
        batch_size=1,
        max_new_tokens=args.max_tokens or 4,
    )
    eng = DeepSeekEngine(opts, components=(model, processor))
    page = synthetic_pages(1, A4_144DPI, args.seed)[0]
    prep = eng.prepare(page)
    print(
        f"A4 page: prompt {prep.prompt_length} positions, "
        f"{plan_tokens('v2', 'gundam', *A4_144DPI).vision_tokens} vision tokens; "
        f"pixels {tuple(prep.inputs['pixel_values'].shape)} + tiles "
        f"{tuple(prep.inputs['pixel_values_local'].shape)}"
    )
    t0 = time.perf_counter()
    r = eng.run([page])[0]
    print(
        f"decoded {r.text_tokens} tokens ({r.status}) in {time.perf_counter() - t0:.1f} s; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB"
    )
    if not args.cuda_graphs:
        return 0 if r.text_tokens else 1
    eng.decode_graphs = True  # the fixed-shape step a CUDA graph replays, at full size
    t0 = time.perf_counter()
    g = eng.run([page])[0]
    same = g.raw == r.raw and g.text_tokens == r.text_tokens
    print(
        f"fixed-shape decode steps: {g.text_tokens} tokens in {time.perf_counter() - t0:.1f} s, "
        f"{'the same text' if same else 'A DIFFERENT TEXT'} as the eager steps"
    )
    return 0 if r.text_tokens and same else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=None, help="pages (default 64; tiny 48)")
    ap.add_argument(
        "--slots",
        type=int,
        default=None,
        help="decode slots (default 32; tiny 4; 0: the engine's own)",
    )
    ap.add_argument(
        "--cache-positions",
        type=int,
        default=None,
        help="bound the decode cache to this many positions (default: the GPU's free memory; "
        "none on the CPU): pages past it wait in host memory",
    )
    ap.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="decode steps replayed as CUDA graphs (fixed-shape steps on the CPU)",
    )
    ap.add_argument(
        "--read-late",
        action="store_true",
        help="read each decode step's tokens a step late (the next step queued first)",
    )
    ap.add_argument(
        "--prefill-no-cudnn",
        action="store_true",
        help="prefills on the decode steps' attention kernels, not cuDNN's (PyTorch's default)",
    )
    ap.add_argument("--min-tokens", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument(
        "--mode", default=None, choices=["small", "base", "gundam"], help="gundam; tiny: small"
    )
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--model", default=None, help="--engine vllm: checkpoint id or folder")
    ap.add_argument("--dummy-weights", action="store_true", help="--engine vllm: random weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="toy model, lengths / 25 (CPU proxy)")
    ap.add_argument("--end-to-end", action="store_true", help="PDFs through the pipeline")
    ap.add_argument("--workers", type=int, default=1, help="--end-to-end: render workers")
    ap.add_argument("--skip-naive", action="store_true", help="engine mode: no naive loop")
    ap.add_argument(
        "--naive-budget",
        type=float,
        default=None,
        help="engine mode: stop the naive loop after this many seconds (it runs last; the "
        "ratio is then taken on tokens/s over the pages it did)",
    )
    ap.add_argument("--full-size-cpu", action="store_true", help="full-size smoke on the CPU")
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="the interpreter's GIL switch interval in ms (default 5; see bench/gil_switch.py)",
    )
    args = ap.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000)

    if args.engine == "vllm":
        from _vllm_bench import run_vllm

        return run_vllm(args)
    if args.full_size_cpu:
        return full_size_cpu(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.tiny:
        print("no CUDA GPU: the full-size bench needs one (--tiny: CPU proxy; --full-size-cpu)")
        return 2
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tiny = args.tiny
    # The toy model's CPU prefill of a tiled page outweighs its decoding, unlike a real model
    # on a GPU: the proxy uses one 768-px view so that decoding dominates, as it does there.
    args.mode = args.mode or ("small" if tiny else "gundam")
    args.pages = args.pages or (48 if tiny else 64)
    lo = args.min_tokens or (300 // TINY_SCALE if tiny else 300)
    hi = args.max_tokens or (1500 // TINY_SCALE if tiny else 1500)
    size = (600, 850) if tiny else A4_144DPI  # tiny: tiled (2x3) yet quick on a CPU
    if device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(torch.device(device))}")
    model, processor = build_model(tiny, device, dtype)
    opts = EngineOptions(
        engine="deepseek",
        model="random DeepSeek-OCR-2",
        mode=args.mode,
        device=device,
        dtype="bf16" if dtype == torch.bfloat16 else "fp32",
        batch_size=(args.slots or None) if args.slots is not None else (4 if tiny else 32),
        max_new_tokens=hi + 8,
    )
    eng = DeepSeekEngine(opts, components=(model, processor))
    if args.cache_positions is not None:
        eng.cache_positions = args.cache_positions
    eng.prefill_cudnn = not args.prefill_no_cudnn
    eng.decode_graphs = args.cuda_graphs
    eng.read_late = args.read_late
    vt = plan_tokens("v2", args.mode, *size).vision_tokens
    print(
        f"pages: {args.pages} ({vt} vision tokens each, mode {args.mode}); output {lo}..{hi} "
        f"tokens; {eng.slots} slots, {eng.max_batch_size} pages per engine call, decode cache "
        f"{'unbounded' if eng.cache_positions is None else f'{eng.cache_positions:,} positions'}"
        f"; prefill attention {'default (cuDNN allowed)' if eng.prefill_cudnn else 'no cuDNN'}"
        f"; decode steps {'as CUDA graphs' if eng.decode_graphs else 'eager'}"
        f"{', tokens read a step late' if eng.read_late else ''}"
    )
    warm = synthetic_pages(2, size, args.seed + 1)
    run_refill(eng, warm, [4, 4])  # CUDA context, kernels, allocator: outside the timings
    warm_captures = eng.decode_stats.captures
    if args.end_to_end:
        end_to_end(eng, args, lo, hi, warm_captures)
        return 0
    pages = synthetic_pages(args.pages, size, args.seed)
    targets = lengths(args.pages, lo, hi, args.seed)
    print(f"mean output {sum(targets) / len(targets):.0f} tokens")
    results = {}
    # Batched paths first: if the lease runs out during the slow naive loop, they are printed.
    for name, fn in (("refill", run_refill), ("static", run_static)):
        results[name] = fn(eng, pages, targets)
        secs, tokens, busy, slots = results[name]
        label = "static batches" if name == "static" else "refill (ocrpress)"
        line(label, args.pages, secs, tokens, busy, slots)
    if device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"pages parked in host memory (cache full): {eng.decode_stats.parked}")
    print(graphs_line(eng, warm_captures))
    print(f"refill vs static: {results['static'][0] / results['refill'][0]:.2f}x pages/s")
    if not args.skip_naive:
        secs, tokens, busy, _, done = run_naive(eng, pages, targets, args.naive_budget)
        line("naive one-by-one", done, secs, tokens, busy, None)
        r_secs, r_tokens = results["refill"][:2]
        if done == len(pages):
            print(f"refill vs naive: {secs / r_secs:.1f}x pages/s (same {done} pages)")
        else:
            print(
                f"refill vs naive: {(r_tokens / r_secs) / (tokens / secs):.1f}x tokens/s "
                f"(naive stopped by --naive-budget after {done} of {len(pages)} pages)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
