"""Loading DeepSeek-OCR(-2) into transformers: device, dtype, attention kernels, batch size.

Flash attention 2 goes to the language model only: SAM's relative-position attention has no
flash kernel, so full-model ``flash_attention_2`` is refused; a per-part setting gives the
decoder flash attention and keeps SDPA for the vision stack. It is asked for when the
``flash_attn`` package is importable and the model goes to a CUDA device; when the load
refuses it, the engine falls back to SDPA with one warning. Without flash-attn, one debug line
says so.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from . import EngineError
from .deepseek_spec import dtype_name
from .kv_slab import columns_for

log = logging.getLogger("ocrpress")

CPU_BATCH_SIZE = 4
MAX_AUTO_BATCH = 128

#: Decoder on flash attention 2, vision stack (SAM, encoder) and the rest on SDPA.
FLASH_DECODER = {"text_config": "flash_attention_2", "vision_config": "sdpa", "": "sdpa"}


def pick_device(requested: str | None) -> str:
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(requested: str | None, device: str) -> Any:
    import torch

    if requested is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype_name(requested))


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_attempts(device: str) -> list[Any]:
    """Attention settings to try, best first (both families share the per-part layout)."""
    if not device.startswith("cuda"):
        return ["sdpa"]
    if not flash_attn_installed():
        log.debug("flash-attn is not installed: the decoder uses SDPA")
        return ["sdpa"]
    return [FLASH_DECODER, "sdpa"]


def describe_attention(attn: Any) -> str:
    return "flash_attention_2 (text) + sdpa (vision)" if isinstance(attn, dict) else str(attn)


def load_with_fallback(load: Any, device: str, what: str) -> tuple[Any, str]:
    """``load(attn_implementation)`` with each of :func:`attention_attempts` in turn; returns
    the model and the attention it got. ``load`` raises EngineError for fatal problems."""
    attempts = attention_attempts(device)
    for i, attn in enumerate(attempts):
        try:
            return load(attn), describe_attention(attn)
        except (ValueError, ImportError) as e:
            if i + 1 == len(attempts):
                raise EngineError(f"cannot load {what!r}: {e}") from e
            log.warning("flash attention unavailable for the decoder (%s); using SDPA", e)
    raise AssertionError("unreachable")  # pragma: no cover


def load_v2(folder: str, model_name: str, device: str, dtype: Any) -> tuple[Any, Any, str]:
    """(model, processor, attention) of a DeepSeek-OCR-2 checkpoint folder."""
    from transformers import AutoModelForImageTextToText

    from .page_inputs import v2_processor

    def load(attn: Any) -> Any:
        try:
            return AutoModelForImageTextToText.from_pretrained(
                folder, dtype=dtype, attn_implementation=attn, local_files_only=True
            )
        except OSError as e:
            raise EngineError(f"cannot load {model_name!r}: {e}") from e

    model, attention = load_with_fallback(load, device, model_name)
    # No device_map: that would make accelerate a dependency.
    model = model.to(device)
    try:
        processor = v2_processor(folder)
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot load the processor of {model_name!r}: {e}") from e
    return model, processor, attention


def load_v1(folder: str, model_name: str, device: str, dtype: Any) -> tuple[Any, Any, str]:
    """(model, processor, attention) of a DeepSeek-OCR (v1) checkpoint folder."""
    from .deepseek_v1 import load_v1 as load_folder
    from .deepseek_v1_config import V1LoadError

    def load(attn: Any) -> Any:
        try:
            return load_folder(folder, device=device, dtype=dtype, attn_implementation=attn)
        except V1LoadError as e:
            raise EngineError(f"cannot load {model_name!r}: {e}") from e

    (model, processor), attention = load_with_fallback(load, device, model_name)
    return model, processor, attention


def text_config(model: Any) -> Any:
    """The language model's config (None for a stand-in model without a config)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "text_config", None) or getattr(cfg, "language_config", None) or cfg


def kv_bytes_per_token(model: Any, dtype: Any) -> int:
    text = text_config(model)
    layers = getattr(text, "num_hidden_layers", 12)
    heads = getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", 10)
    head_dim = getattr(text, "head_dim", None) or (
        getattr(text, "hidden_size", 1280) // getattr(text, "num_attention_heads", 10)
    )
    return 2 * layers * heads * head_dim * dtype.itemsize


#: Transient memory one prefill call may give the vision stack: pages per prefill call are
#: capped to stay under it (or under a quarter of the free GPU memory, if less). Measured on an
#: H100 (gundam, A4): 32 pages in one prefill peaked at 58 GiB and 64 ran out of memory, while
#: decoding them needs a few GiB of cache; prefilling a few pages at a time lets the card hold
#: far more decode slots, and a decode step costs about the same at 1 or 32 rows.
PREFILL_BUDGET = 16 * 2**30
SLACK = 1.25  # allocator slack on the estimates; the pipeline halves the batch on OOM


def vision_bytes_per_page(mode_spec: Any, max_tiles: int, dtype: Any) -> int:
    """Prefill peak of one page's views: SAM's SDPA path materialises a (heads, HW, HW)
    relative-position bias per view (0.4 GB for a 1024-px view in bf16)."""
    itemsize = dtype.itemsize
    patches = (mode_spec.base_size // 16) ** 2
    vision = 12 * patches * patches * itemsize
    if mode_spec.tile_size:
        tile_patches = (mode_spec.tile_size // 16) ** 2
        vision += max_tiles * 12 * tile_patches * tile_patches * itemsize
    return vision


def prefill_budget(device: str) -> int:
    """Bytes one prefill call may use: :data:`PREFILL_BUDGET`, or a quarter of free GPU memory."""
    if not device.startswith("cuda"):
        return PREFILL_BUDGET
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(min(PREFILL_BUDGET, free // 4))


def prefill_pages(mode_spec: Any, max_tiles: int, dtype: Any, budget: int) -> int:
    """Pages one prefill call takes so that their vision stack stays within ``budget``."""
    per_page = vision_bytes_per_page(mode_spec, max_tiles, dtype) * SLACK
    return max(1, int(budget // per_page))


#: Output tokens a page is expected to need, for sizing the automatic decode slots: pages run
#: ~300-1,500 tokens. Pages that run longer do not overflow the card: the decoder keeps its
#: cache within :func:`cache_positions` and parks rows in host memory if it must.
TYPICAL_NEW_TOKENS = 1024


def cache_positions(model: Any, device: str, dtype: Any, prefill_bytes: int) -> int | None:
    """Positions (rows x columns) the decode cache may hold: the GPU's free memory (the model
    loaded) less a margin and one prefill call of ``prefill_bytes``; None on the CPU (host
    memory: no bound)."""
    if not device.startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    budget = 0.9 * free - 2 * 2**30 - prefill_bytes
    return max(0, int(budget // (kv_bytes_per_token(model, dtype) * SLACK)))


def auto_batch_size(model: Any, worst_positions: int, opts: Any, positions: int | None) -> int:
    """Decode slots: rows of ``worst_positions`` prompt and :data:`TYPICAL_NEW_TOKENS` output
    (or ``max_new_tokens`` if fewer) that fit ``positions`` of cache; a fixed small number on
    the CPU (``positions`` None). Not sized for the context's worst case (8,192 positions a
    row: ~2.5x fewer slots in gundam mode), since the decoder holds to the budget anyway."""
    if positions is None:
        return CPU_BATCH_SIZE
    row = worst_positions + min(opts.max_new_tokens, TYPICAL_NEW_TOKENS)
    context = getattr(text_config(model), "max_position_embeddings", None)
    if isinstance(context, int):
        row = min(row, context)  # generation stops at the context (truncated)
    return max(1, min(MAX_AUTO_BATCH, positions // columns_for(row)))
