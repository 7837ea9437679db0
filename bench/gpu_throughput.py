"""GPU throughput: ocrpress's batched DeepSeek engine vs a naive one-page-at-a-time loop.

The full-size DeepSeek-OCR-2 architecture is built from its config with random bf16 weights
(no download), pages are synthetic A4 at 144 dpi (1121 vision tokens each in gundam mode), and
each page's output length is forced to a target drawn from 300..1,500 tokens (EOS suppressed
until the target, then forced), so both paths do exactly the same decoding work. Prints
pages/s, tokens/s and the speed-up; finishes in a few minutes on an H100.

    python bench/gpu_throughput.py                      # H100 defaults
    python bench/gpu_throughput.py --pages 96 --batch-size 48
    python bench/gpu_throughput.py --tiny               # CPU smoke test of this script
    python bench/gpu_throughput.py --engine vllm --model deepseek-ai/DeepSeek-OCR-2
    python bench/gpu_throughput.py --engine vllm --model ./DeepSeek-OCR-2 --dummy-weights

With ``--engine vllm`` the same seeded pages and output lengths go through ocrpress's vLLM
engine in one ``LLM.generate`` call (continuous batching); compare its pages/s and tokens/s
with a transformers run of the same ``--pages``/``--seed``. vLLM needs a checkpoint folder in
the original DeepSeek layout (``--dummy-weights`` uses vLLM's random weights, so only the
config and tokenizer files need to be there).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import LogitsProcessor, LogitsProcessorList

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: tokenizer and toy config

from ocrpress.document import PageImage  # noqa: E402
from ocrpress.engines import EngineOptions  # noqa: E402
from ocrpress.engines.deepseek import PROMPTS, DeepSeekEngine  # noqa: E402
from ocrpress.modes import plan_tokens  # noqa: E402

A4_144DPI = (1190, 1684)

# DeepSeek-OCR-2 as published (deepseek-community/DeepSeek-OCR-2 config.json): SAM ViT-B,
# a Qwen2-0.5B-sized causal-flow encoder and the DeepSeek-3B-MoE decoder. transformers'
# DeepseekOcr2Config() defaults do NOT match for the encoder and decoder (they are
# DeepSeek-V2/7B-sized: 4096 hidden, 32 layers), so sizes are set explicitly; the SAM
# defaults (768 hidden, 12 layers, neck 256 -> 512 -> 896) do match.
FULL_TEXT = {
    "vocab_size": 129280,
    "hidden_size": 1280,
    "intermediate_size": 6848,
    "num_hidden_layers": 12,
    "num_attention_heads": 10,
    "num_key_value_heads": 10,
    "n_routed_experts": 64,
    "num_experts_per_tok": 6,
    "n_shared_experts": 2,
    "moe_intermediate_size": 896,
    "n_group": 1,
    "topk_group": 1,
    "topk_method": "greedy",
    "mlp_layer_types": ["dense"] + ["sparse"] * 11,
    "max_position_embeddings": 8192,
}
FULL_ENCODER = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
}


class ForceLengths(LogitsProcessor):
    """Row ``i`` emits exactly ``targets[i]`` tokens, then EOS; ids >= ``vocab_limit`` never.

    Token ids are kept below the bench tokenizer's size so that decoding works; the model
    still computes logits over its full vocabulary.
    """

    def __init__(self, prompt_length: int, targets: list[int], eos_id: int, vocab_limit: int):
        self.prompt_length = prompt_length
        self.targets = torch.tensor(targets)
        self.eos_id = eos_id
        self.vocab_limit = vocab_limit

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        if self.targets.device != scores.device:
            self.targets = self.targets.to(scores.device)
        done = (self.targets <= step)[:, None]
        scores = scores.clone()
        scores[:, self.vocab_limit :] = -float("inf")
        scores[:, self.eos_id] = -float("inf")
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.eos_id] = 0.0
        return torch.where(done, forced, scores)


def build_model(tiny: bool, device: str, dtype: torch.dtype):
    """(model, processor) with random weights; full DeepSeek-OCR-2 sizes unless ``tiny``."""
    from tiny_models import build_tokenizer, tiny_v2_config
    from transformers import (
        DeepseekOcr2Config,
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2Processor,
    )
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
        DeepseekOcr2ImageProcessorPil,
    )

    tokenizer = build_tokenizer()
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if tiny:
        config = tiny_v2_config(tokenizer)
    else:
        defaults = DeepseekOcr2Config()
        text = defaults.text_config
        print(
            f"transformers defaults: text hidden {text.hidden_size} x "
            f"{text.num_hidden_layers} layers, "
            f"encoder hidden {defaults.vision_config.encoder_config.hidden_size}; "
            "using the published DeepSeek-OCR-2 sizes instead"
        )
        config = DeepseekOcr2Config(
            vision_config={"encoder_config": FULL_ENCODER},
            text_config={**FULL_TEXT, **ids},
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        )
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no fp32 copy of 3B weights
    try:
        with torch.device(device):
            model = DeepseekOcr2ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.update(do_sample=False, **ids)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {n / 1e9:.2f} B parameters, built in {time.perf_counter() - t0:.1f} s")
    processor = DeepseekOcr2Processor(
        image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer
    )
    processor.tokenizer.padding_side = "left"
    return model, processor


def synthetic_pages(n: int, size: tuple[int, int], seed: int) -> list[PageImage]:
    """``n`` distinct text-like pages (grey lines of varying length)."""
    rng = random.Random(seed)
    pages = []
    w, h = size
    for i in range(n):
        im = Image.new("RGB", size, "white")
        d = ImageDraw.Draw(im)
        y = int(h * 0.06)
        while y < h * 0.94:
            x1 = int(w * rng.uniform(0.4, 0.92))
            d.rectangle([int(w * 0.08), y, x1, y + max(2, h // 120)], fill=(40, 40, 40))
            y += int(h * rng.uniform(0.018, 0.04))
        d.text((int(w * 0.08), int(h * 0.02)), f"synthetic page {i}", fill="black")
        pages.append(PageImage(source="bench.pdf", index=i, image=im, dpi=144.0))
    return pages


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_engine(
    engine: DeepSeekEngine, pages: list[PageImage], targets: list[int], batch_size: int
) -> tuple[float, int, int]:
    """Batched path as the pipeline drives it: returns (seconds, text tokens, mismatches)."""
    by_index = {p.index: t for p, t in zip(pages, targets, strict=True)}
    eos = min(engine.eos_ids)
    limit = len(engine.tokenizer)
    engine.logits_hook = lambda batch, pl: [
        ForceLengths(pl, [by_index[p.index] for p in batch], eos, limit)
    ]
    groups: dict[object, list[PageImage]] = {}
    for p in pages:
        groups.setdefault(engine.plan(p).batch_key, []).append(p)
    tokens = mismatches = 0
    sync(engine.device)
    t0 = time.perf_counter()
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            for r in engine.run(group[i : i + batch_size]):
                tokens += r.text_tokens or 0
                mismatches += r.text_tokens != by_index[r.index]
    sync(engine.device)
    return time.perf_counter() - t0, tokens, mismatches


def run_naive(
    model, processor, pages: list[PageImage], targets: list[int], device: str, dtype, mode: str
) -> tuple[float, int]:
    """What a first script does: processor -> generate -> decode, one page at a time."""
    eos = processor.tokenizer.eos_token_id
    limit = len(processor.tokenizer)
    kwargs = {"size": {"height": 1024, "width": 1024}, "tile_size": 768}
    if mode == "gundam":
        kwargs.update(crop_to_patches=True, min_patches=2, max_patches=6)
    else:
        kwargs.update(crop_to_patches=False, tile_size=768 if mode == "small" else 1024)
        kwargs["size"] = {"height": kwargs["tile_size"], "width": kwargs["tile_size"]}
    tokens = 0
    sync(device)
    t0 = time.perf_counter()
    for page, target in zip(pages, targets, strict=True):
        inputs = processor(
            images=[page.image], text=[PROMPTS["markdown"]], return_tensors="pt", **kwargs
        ).to(device, dtype=dtype)
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=8192,
                logits_processor=LogitsProcessorList([ForceLengths(n, [target], eos, limit)]),
            )
        gen = out[0, n:].tolist()
        tokens += len(gen) - (gen[-1] == eos)
        processor.tokenizer.decode(gen, skip_special_tokens=False)
    sync(device)
    return time.perf_counter() - t0, tokens


def run_vllm(args: argparse.Namespace) -> int:
    """The same seeded pages and forced lengths through ocrpress's vLLM engine."""
    from ocrpress.engines import EngineError
    from ocrpress.engines.vllm import VllmEngine, build_request, sampling_kwargs

    try:
        import vllm
    except ImportError:
        print("--engine vllm needs vLLM: pip install 'ocrpress[vllm]'", file=sys.stderr)
        return 2
    extra = {"vllm": {"load_format": "dummy"}} if args.dummy_weights else {}
    opts = EngineOptions(engine="vllm", model=args.model, mode="gundam", extra=extra)
    try:
        engine = VllmEngine(opts)
    except EngineError as e:
        print(f"--engine vllm: {e}", file=sys.stderr)
        return 2
    n_pages = args.pages or 64
    lo, hi = args.min_tokens or 300, args.max_tokens or 1500
    rng = random.Random(args.seed)
    pages = synthetic_pages(n_pages, A4_144DPI, args.seed)
    targets = [rng.randint(lo, hi) for _ in pages]
    base = sampling_kwargs(hi + 8, opts.ngram_size, opts.ngram_window)
    base.pop("extra_args", None)  # forced lengths: the guard would fight them
    params = [vllm.SamplingParams(**{**base, "min_tokens": t, "max_tokens": t}) for t in targets]
    requests = [build_request(p, engine.prompt) for p in pages]
    engine.llm.generate(requests[:2], params[:2], use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outputs = engine.llm.generate(requests, params, use_tqdm=False)
    secs = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(
        f"vllm engine      : {n_pages} pages {secs:7.1f} s  {n_pages / secs:6.2f} pages/s  "
        f"{tokens / secs:8.0f} tokens/s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=None, help="pages for the batched run")
    ap.add_argument("--naive-pages", type=int, default=None, help="pages for the naive loop")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="default 32 (tiny: 4); 0: engine's auto size"
    )
    ap.add_argument("--min-tokens", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--mode", default="gundam", choices=["small", "base", "gundam"])
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--model", default=None, help="--engine vllm: checkpoint id or folder")
    ap.add_argument("--dummy-weights", action="store_true", help="--engine vllm: random weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="toy model, few short pages (CPU smoke)")
    args = ap.parse_args(argv)

    if args.engine == "vllm":
        return run_vllm(args)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.tiny:
        print("no CUDA GPU: the full-size bench needs one (use --tiny for a CPU smoke test)")
        return 2
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tiny = args.tiny
    n_pages = args.pages or (6 if tiny else 64)
    n_naive = min(args.naive_pages or (2 if tiny else 6), n_pages)
    lo = args.min_tokens or (4 if tiny else 300)
    hi = args.max_tokens or (12 if tiny else 1500)
    size = (600, 850) if tiny else A4_144DPI  # tiny: tiled (2x3) yet quick on a CPU

    if device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(torch.device(device))}")
    model, processor = build_model(tiny, device, dtype)
    batch = args.batch_size if args.batch_size is not None else (4 if tiny else 32)
    opts = EngineOptions(
        engine="deepseek",
        model="random DeepSeek-OCR-2",
        mode=args.mode,
        device=device,
        dtype="bf16" if dtype == torch.bfloat16 else "fp32",
        batch_size=batch or None,
        max_new_tokens=hi + 8,
    )
    engine = DeepSeekEngine(opts, components=(model, processor))
    batch_size = engine.max_batch_size
    rng = random.Random(args.seed)
    pages = synthetic_pages(n_pages, size, args.seed)
    targets = [rng.randint(lo, hi) for _ in pages]
    vt = plan_tokens("v2", args.mode, *size).vision_tokens
    print(
        f"pages: {n_pages} x {size[0]}x{size[1]} ({vt} vision tokens each, mode {args.mode}); "
        f"output {lo}..{hi} tokens (mean {sum(targets) / n_pages:.0f}); batch size {batch_size}"
    )

    # Warm-up (CUDA context, kernels, allocator) outside the timings.
    warm = synthetic_pages(2, size, args.seed + 1)
    run_engine(engine, warm, [4, 4], batch_size)
    run_naive(model, processor, warm[:1], [4], device, dtype, args.mode)

    secs, tokens, bad = run_engine(engine, pages, targets, batch_size)
    e_pps, e_tps = n_pages / secs, tokens / secs
    print(
        f"ocrpress batched : {n_pages} pages {secs:7.1f} s  {e_pps:6.2f} pages/s  "
        f"{e_tps:8.0f} tokens/s"
    )
    if bad:
        print(f"WARNING: {bad} pages did not hit their forced length")
    if device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

    n_secs, n_tokens = run_naive(
        model, processor, pages[:n_naive], targets[:n_naive], device, dtype, args.mode
    )
    n_pps, n_tps = n_naive / n_secs, n_tokens / n_secs
    print(
        f"naive one-by-one : {n_naive} pages {n_secs:7.1f} s  {n_pps:6.2f} pages/s  "
        f"{n_tps:8.0f} tokens/s"
    )
    # Pages/s depends on the length mix of the sampled pages; tokens/s does not.
    print(f"speed-up: {e_pps / n_pps:.1f}x pages/s, {e_tps / n_tps:.1f}x tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
