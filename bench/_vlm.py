"""Bench helpers for the DeepSeek VLM benchmarks: random-weight models at full or toy size,
synthetic pages, and forced output lengths (so every path does the same decoding work)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import LogitsProcessor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: tokenizer and toy config

from ocrpress.document import PageImage  # noqa: E402

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


def lengths(n: int, lo: int, hi: int, seed: int) -> list[int]:
    """Output lengths drawn uniformly from lo..hi (the same for every path compared)."""
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(n)]


def _force(scores: torch.Tensor, done: torch.Tensor, eos_id: int, vocab_limit: int) -> torch.Tensor:
    scores = scores.clone()
    scores[:, vocab_limit:] = -float("inf")
    scores[:, eos_id] = -float("inf")
    forced = torch.full_like(scores, -float("inf"))
    forced[:, eos_id] = 0.0
    return torch.where(done[:, None], forced, scores)


class ForceLengths(LogitsProcessor):
    """Static ``generate``: row ``i`` emits exactly ``targets[i]`` tokens, then EOS; ids >=
    ``vocab_limit`` never (the bench tokenizer is smaller than the model's vocabulary)."""

    def __init__(self, targets: list[int], eos_id: int, vocab_limit: int) -> None:
        self.prompt_length: int | None = None
        self.targets = torch.tensor(targets)
        self.eos_id = eos_id
        self.vocab_limit = vocab_limit

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_length
        targets = self.targets.to(scores.device)
        return _force(scores, targets <= step, self.eos_id, self.vocab_limit)


def force_lengths_hook(target: Callable[[PageImage], int], eos_id: int, vocab_limit: int):
    """The refill engine's ``step_hook`` with the same rule as :class:`ForceLengths`: a page
    emits ``target(page)`` tokens, then EOS."""

    def for_batch(pages):  # the call's pages by key: a list, or a growing dict (streams)
        def hook(keys: list[int], counts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            targets = torch.tensor([target(pages[k]) for k in keys])
            done = targets <= counts
            if scores.is_cuda:  # a copy from pageable memory would wait for the step queued
                done = done.pin_memory().to(scores.device, non_blocking=True)
            return _force(scores, done, eos_id, vocab_limit)

        return hook

    return for_batch


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
