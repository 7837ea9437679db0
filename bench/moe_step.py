"""One decode step of DeepSeek-OCR-2's decoder by rows, with its MoE experts on ``grouped_mm``
and on ``batched_mm``, side by side: how each setting's cost grows with the rows decoding.

The decoder is built at full width (hidden 1280, 64 experts of 896, 6 a token, 2 shared) with
random weights and ``--layers`` MoE layers (12 in the model; fewer keep a CPU run short: the
cost is per layer), over a cache of ``--positions`` positions.

    python bench/moe_step.py                          # CPU, 3 layers, fp32
    python bench/moe_step.py --device cuda --layers 12
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _vlm import FULL_TEXT, sync
from transformers import DeepseekOcr2Config
from transformers.cache_utils import DynamicCache
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2TextModel

from ocrpress.engines.refill_items import decode_attention


def step_ms(model, cfg, rows: int, positions: int, device: str, dtype, layers: int) -> float:
    """Fastest of three steps of ``rows`` rows over a cache of ``positions`` positions."""
    best = float("inf")
    for _ in range(3):
        cache = DynamicCache(config=cfg)
        for i in range(layers):
            kv = torch.randn(rows, 10, positions, 128, device=device, dtype=dtype)
            cache.update(kv, kv, i)
        ids = torch.randint(0, 1000, (rows, 1), device=device)
        with torch.inference_mode(), decode_attention(device):  # the engine's step kernels
            sync(device)
            t0 = time.perf_counter()
            model(
                input_ids=ids,
                position_ids=torch.full((rows, 1), positions, device=device),
                attention_mask=torch.ones(rows, positions + 1, dtype=torch.long, device=device),
                past_key_values=cache,
                use_cache=True,
            )
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--positions", type=int, default=1200)
    ap.add_argument("--rows", default="1,8,32,96")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    sparse = ["sparse"] * args.layers
    text = {**FULL_TEXT, "num_hidden_layers": args.layers, "mlp_layer_types": sparse}
    cfg = DeepseekOcr2Config(text_config=text).text_config
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = DeepseekOcr2TextModel(cfg).to(args.device, dtype).eval()
    print(
        f"decoder: {args.layers} MoE layers at full width, {args.positions} cached positions, "
        f"{args.device}, {dtype}"
    )
    print(" rows | grouped_mm ms | batched_mm ms | batched / grouped")
    for rows in (int(r) for r in args.rows.split(",")):
        ms = {}
        for impl in ("grouped_mm", "batched_mm"):
            model.set_experts_implementation(impl)
            ms[impl] = step_ms(model, cfg, rows, args.positions, args.device, dtype, args.layers)
        g, b = ms["grouped_mm"], ms["batched_mm"]
        print(f" {rows:4d} | {g:13.1f} | {b:13.1f} | {b / g:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
