"""DeepSeek-OCR (v1) checkpoints on transformers' native ``unlimited_ocr`` classes.

transformers has no class for ``deepseek-ai/DeepSeek-OCR`` (its config names remote code:
``DeepseekOCRForCausalLM`` in ``modeling_deepseekocr.py``), but ``unlimited_ocr`` is a port of
the same network: SAM ViT-B -> CLIP-L -> linear projector -> DeepSeek-V2 MoE decoder with
multi-head attention, one newline embedding per feature row and a view separator. Its
checkpoint conversion mapping reads v1 key names (``model.sam_model.*``,
``model.vision_model.*``, ``model.projector.layers.*``, ``model.view_seperator``, per-expert
MoE weights). This module loads a v1 folder into that class: the config is translated by
:mod:`.deepseek_v1_config`, pages are prepared by :mod:`.deepseek_v1_processor`, and a load that
would leave weights random is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .deepseek_v1_config import (
    V1_ARCHITECTURE,
    V1LoadError,
    is_v1_config,
    read_shapes,
    v1_to_unlimited_config,
)
from .deepseek_v1_processor import V1Processor


def _load_tokenizer(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    if not (path / "tokenizer.json").is_file():
        raise V1LoadError(f"{path}: no tokenizer.json")
    # v1 ships a byte-level tokenizer.json under the name LlamaTokenizerFast; the generic
    # tokenizers backend reads it as is (the Llama class would only warn and fall back).
    return PreTrainedTokenizerFast.from_pretrained(str(path), padding_side="left")


def load_v1(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | dict[str, str] = "sdpa",
) -> tuple[Any, V1Processor]:
    """Load a local DeepSeek-OCR v1 folder as ``UnlimitedOcrForConditionalGeneration``.

    No remote code runs: the v1 config is translated and the v1 weights are renamed by
    transformers' own ``unlimited_ocr`` conversion mapping. Raises :class:`V1LoadError` when
    the folder is not a servable v1 checkpoint or its weights do not cover the model.
    """
    from transformers import UnlimitedOcrForConditionalGeneration

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise V1LoadError(f"{path}: no config.json")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise V1LoadError(f"{config_file}: invalid JSON ({exc})") from exc
    if not is_v1_config(raw):
        raise V1LoadError(f"{config_file}: not a DeepSeek-OCR v1 config ({V1_ARCHITECTURE})")
    tokenizer = _load_tokenizer(path)
    processor = V1Processor(tokenizer, device=device, dtype=dtype)
    try:
        config = v1_to_unlimited_config(
            raw,
            read_shapes(path),
            image_token_id=processor.image_token_id,
            pad_token_id=processor.pad_token_id,
        )
    except KeyError as exc:
        raise V1LoadError(f"{config_file}: missing field {exc}") from exc
    try:
        model, info = UnlimitedOcrForConditionalGeneration.from_pretrained(
            str(path),
            config=config,
            dtype=dtype,
            attn_implementation=attn_implementation,
            output_loading_info=True,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, ValueError) and attn_implementation != "sdpa":
            raise  # the attention setting was refused: the caller retries with SDPA
        raise V1LoadError(f"{path}: weights do not fit the v1 architecture ({exc})") from exc
    # transformers only warns about missing weights and leaves them random: refuse instead.
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        detail = ", ".join(missing[:5]) + (
            f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        )
        raise V1LoadError(
            f"{path}: incomplete v1 checkpoint; missing weights: {detail or '-'}; "
            f"shape mismatches: {mismatched[:3] or '-'}"
        )
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.pad_token_id
    model.generation_config.do_sample = False
    return model.to(device).eval(), processor
