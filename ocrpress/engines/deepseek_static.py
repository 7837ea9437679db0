"""Static ``generate`` batches of the DeepSeek engine: the reference that refill decoding is
tested against (token identity) and benchmarked against (``bench/gpu_throughput.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..document import PageImage
from .page_inputs import processor_outputs
from .refill_items import decode_attention

if TYPE_CHECKING:
    from .deepseek import DeepSeekEngine


def logits_processors(engine: DeepSeekEngine, prompt_length: int) -> list:
    """The decoding guards of a static ``generate`` call with prompts this long."""
    from .ngram import WindowedNoRepeatNGramLogitsProcessor

    size, window = engine._guard or (engine.opts.ngram_size, engine.opts.ngram_window)
    if size <= 0 or window <= 0:
        return []
    return [
        WindowedNoRepeatNGramLogitsProcessor(
            ngram_size=size,
            window=window,
            prompt_length=prompt_length,
            whitelist_token_ids=engine.whitelist_ids,
        )
    ]


def generate_ids(
    engine: DeepSeekEngine, pages: list[PageImage], extra_processors: list[Any] | None = None
) -> list[list[int]]:
    """Generated token ids per page (EOS and padding included) from one transformers
    ``generate`` call: a static batch that decodes until its longest page.

    All pages should share a prompt length (``plan().batch_key``); otherwise the batch is
    left-padded and, in low precision, outputs may differ from one-page runs.
    """
    import torch
    from transformers import LogitsProcessorList

    images = [p.image if p.image.mode == "RGB" else p.image.convert("RGB") for p in pages]
    mode = engine.planner.page_mode(pages[0])  # one batch key: one mode
    inputs = processor_outputs(engine.processor, engine.inputs_recipe, images, mode)
    inputs = inputs.to(engine.device, dtype=engine.dtype)
    prompt_length = inputs["input_ids"].shape[1]
    processors = logits_processors(engine, prompt_length) + list(extra_processors or [])
    # The decode steps' attention kernels, as refill decoding has them (a fair comparison).
    with torch.inference_mode(), decode_attention(engine.device):
        out = engine.hf_model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=engine.new_token_budget(prompt_length),
            logits_processor=LogitsProcessorList(processors),
            eos_token_id=sorted(engine.eos_ids),
            pad_token_id=engine.pad_id,
        )
    return out[:, prompt_length:].tolist()
