"""What a decode step's cache update costs: transformers' ``DynamicLayer`` (``torch.cat``: the
whole cache copied every step) against the refill decoder's ``SlabLayer`` (the step's column
written in place), side by side, at DeepSeek-OCR-2's cache shape (12 layers, 10 heads of 128).

    python bench/kv_cache.py                       # 32 rows of 2,000 positions, bf16, CPU
    python bench/kv_cache.py --rows 96 --device cuda

Only the cache's own work is timed (no attention, no model): it is the part of a step that
grows with rows x positions and that the slab removes.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _vlm import sync
from transformers.cache_utils import DynamicLayer

from ocrpress.engines.kv_slab import MAX_SPARE_COLUMNS, SlabLayer


def per_step(layers: list, steps: int, rows: int, device: str, dtype: torch.dtype) -> float:
    """Seconds a step, over ``steps`` steps (the slab's include its reallocations)."""
    col = torch.randn(rows, 10, 1, 128, device=device, dtype=dtype)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        for layer in layers:
            layer.update(col, col)
    sync(device)
    return (time.perf_counter() - t0) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--positions", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--steps", type=int, default=20, help="torch.cat steps timed")
    ap.add_argument(
        "--slab-steps",
        type=int,
        default=2 * MAX_SPARE_COLUMNS + 1,
        help="in-place steps timed: more than the spare columns, so reallocations count",
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dtype = torch.bfloat16
    shape = (args.rows, 10, args.positions, 128)
    gib = 2 * args.layers * torch.Size(shape).numel() * 2 / 2**30
    print(f"cache: {args.layers} layers x {shape} bf16 keys and values = {gib:.1f} GiB")
    results = {}
    for name in ("DynamicLayer (torch.cat)", "SlabLayer (in place)"):
        layers = []
        for _ in range(args.layers):
            k = torch.randn(shape, device=args.device, dtype=dtype)
            if name.startswith("Dynamic"):
                layer = DynamicLayer()
                layer.update(k, k)
            else:
                layer = SlabLayer(k, k, rows=args.rows)
            layers.append(layer)
            del k
        steps = args.steps if name.startswith("Dynamic") else args.slab_steps
        results[name] = per_step(layers, steps, args.rows, args.device, dtype)
        print(f"{name:26s}: {results[name] * 1000:9.2f} ms a step ({steps} steps)")
        del layers
    cat, slab = results.values()
    print(f"ratio torch.cat / in place: {cat / slab:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
