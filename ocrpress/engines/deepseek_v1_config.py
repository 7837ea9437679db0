"""DeepSeek-OCR (v1) checkpoint -> transformers ``UnlimitedOcrConfig``, without loading weights.

v1's ``config.json`` describes a remote-code ``DeepseekOCRForCausalLM`` (DeepseekV2 fields and a
free-form ``vision_config``); transformers' ``unlimited_ocr`` port of the same network wants its
own config class. This module recognises a v1 config, reads tensor shapes from the safetensors
headers (v1's remote code hard-codes the vision sizes its config leaves out) and translates the
two into an :class:`UnlimitedOcrConfig`, with every decoder layer on full causal attention (v1
does not use Unlimited-OCR's sliding window). It imports neither torch nor transformers at module
level, so the torch-free planner (:mod:`.deepseek_spec`) can tell a v1 checkpoint by its config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

V1_ARCHITECTURE = "DeepseekOCRForCausalLM"
_V1_REMOTE_MODULE = "modeling_deepseekocr."  # trailing dot: not modeling_deepseekocr2


class V1LoadError(RuntimeError):
    """A DeepSeek-OCR v1 checkpoint that cannot be served (what is wrong is in the message)."""


def is_v1_config(config: dict) -> bool:
    """True for a ``deepseek-ai/DeepSeek-OCR`` config.json (remote-code DeepseekOCRForCausalLM).

    The published file says ``model_type: deepseek_vl_v2`` (shared with DeepSeek-VL2 and
    DeepSeek-OCR-2), so the architecture and the remote-code ``auto_map`` decide.
    """
    if not isinstance(config, dict):
        return False
    if V1_ARCHITECTURE in (config.get("architectures") or []):
        return True
    auto_map = config.get("auto_map") or {}
    return any(str(v).startswith(_V1_REMOTE_MODULE) for v in auto_map.values())


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise V1LoadError(f"{index}: not a safetensors index ({exc})") from exc
        return [path / n for n in names]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise V1LoadError(f"{path}: no safetensors weights (model.safetensors or an index)")
    return found


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers, without loading tensors."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in _weight_files(Path(path)):
        if not file.is_file():
            raise V1LoadError(f"{file}: weight file listed in the index is missing")
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except Exception as exc:  # a truncated or corrupt file: say which
            raise V1LoadError(f"{file}: unreadable safetensors file ({exc})") from exc
    return shapes


def _shape(shapes: dict[str, tuple[int, ...]], name: str) -> tuple[int, ...]:
    for key in (name, f"model.{name}"):
        if key in shapes:
            return shapes[key]
    raise V1LoadError(f"weights lack {name!r}: not a DeepSeek-OCR v1 checkpoint, or incomplete")


def v1_to_unlimited_config(
    config: dict,
    shapes: dict[str, tuple[int, ...]],
    *,
    image_token_id: int,
    pad_token_id: int | None = None,
) -> Any:
    """Translate a v1 config.json (+ tensor shapes) into an ``UnlimitedOcrConfig``."""
    from transformers import UnlimitedOcrConfig

    # v1's config class is a DeepseekV2Config built from the top level; language_config is a
    # copy of those fields, so the top level wins.
    lm = {**(config.get("language_config") or {}), **config}
    if lm.get("use_mla", True):
        raise V1LoadError(
            "use_mla is true: unlimited_ocr has multi-head attention only (v1 sets use_mla=false)"
        )
    problems = []
    if lm.get("scoring_func", "softmax") != "softmax":
        problems.append(f"scoring_func={lm['scoring_func']!r} (only softmax)")
    if lm.get("norm_topk_prob", False):
        problems.append("norm_topk_prob=true (unlimited_ocr never renormalises top-k weights)")
    topk_method = lm.get("topk_method", "greedy")
    if topk_method not in ("greedy", "group_limited_greedy"):
        problems.append(f"topk_method={topk_method!r}")
    if lm.get("rope_scaling"):
        problems.append(f"rope_scaling={lm['rope_scaling']!r}")
    projector = config.get("projector_config") or {}
    if projector.get("projector_type", "linear") != "linear":
        problems.append(f"projector_type={projector['projector_type']!r} (only linear)")
    if problems:
        raise V1LoadError("unsupported v1 settings: " + "; ".join(problems))

    layers = int(lm["num_hidden_layers"])
    n_experts = lm.get("n_routed_experts")
    first_dense = int(lm.get("first_k_dense_replace", 0))
    freq = int(lm.get("moe_layer_freq", 1))
    mlp_layer_types = [
        "sparse" if n_experts and i >= first_dense and i % freq == 0 else "dense"
        for i in range(layers)
    ]
    text = {
        "vocab_size": int(lm["vocab_size"]),
        "hidden_size": int(lm["hidden_size"]),
        "intermediate_size": int(lm["intermediate_size"]),
        "moe_intermediate_size": int(lm.get("moe_intermediate_size", 1407)),
        "num_hidden_layers": layers,
        "num_attention_heads": int(lm["num_attention_heads"]),
        "num_key_value_heads": int(lm.get("num_key_value_heads") or lm["num_attention_heads"]),
        "n_routed_experts": int(n_experts or 1),
        "num_experts_per_tok": int(lm.get("num_experts_per_tok") or 1),
        "n_shared_experts": int(lm.get("n_shared_experts") or 0),
        "n_group": lm.get("n_group") or 1,
        "topk_group": lm.get("topk_group") or 1,
        "topk_method": topk_method,
        "routed_scaling_factor": float(lm.get("routed_scaling_factor", 1.0)),
        "mlp_layer_types": mlp_layer_types,
        # v1 decodes with full causal attention; sliding_window must be set but is unused.
        "layer_types": ["full_attention"] * layers,
        "sliding_window": 128,
        "hidden_act": lm.get("hidden_act", "silu"),
        "rms_norm_eps": float(lm.get("rms_norm_eps", 1e-6)),
        "max_position_embeddings": int(lm.get("max_position_embeddings", 8192)),
        # DeepseekV2Config's defaults, which v1's config.json leaves implicit.
        "rope_parameters": {"rope_type": "default", "rope_theta": float(lm.get("rope_theta", 1e4))},
        "attention_bias": bool(lm.get("attention_bias", False)),
        "bos_token_id": lm.get("bos_token_id", 0),
        "eos_token_id": lm.get("eos_token_id", 1),
        "pad_token_id": pad_token_id,
        "tie_word_embeddings": False,
    }

    vision = config.get("vision_config") or {}
    widths = vision.get("width") or {}
    sam_cfg = widths.get("sam_vit_b") or {}
    clip_cfg = widths.get("clip-l-14-224") or {}
    # v1's remote code hard-codes these in build_sam_vit_b / build_clip_l; the config only
    # documents them, so shapes are the ground truth and the config fills in head counts.
    sam_hidden = _shape(shapes, "sam_model.patch_embed.proj.weight")[0]
    sam_patch = _shape(shapes, "sam_model.patch_embed.proj.weight")[-1]
    sam_grid = _shape(shapes, "sam_model.pos_embed")[1]
    sam_layers = 1 + max(
        int(k.split("sam_model.blocks.")[1].split(".")[0])
        for k in shapes
        if "sam_model.blocks." in k
    )
    global_idx = list(sam_cfg.get("global_attn_indexes", [2, 5, 8, 11]))
    windowed = [i for i in range(sam_layers) if i not in global_idx]
    window = (
        (_shape(shapes, f"sam_model.blocks.{windowed[0]}.attn.rel_pos_h")[0] + 1) // 2
        if windowed
        else 14
    )
    sam = {
        "hidden_size": sam_hidden,
        "output_channels": _shape(shapes, "sam_model.neck.0.weight")[0],
        "num_hidden_layers": sam_layers,
        "num_attention_heads": int(sam_cfg.get("heads", 12)),
        "image_size": sam_grid * sam_patch,
        "patch_size": sam_patch,
        "mlp_dim": _shape(shapes, "sam_model.blocks.0.mlp.lin1.weight")[0],
        "global_attn_indexes": global_idx,
        "window_size": window,
        "downsample_channels": [
            _shape(shapes, "sam_model.net_2.weight")[0],
            _shape(shapes, "sam_model.net_3.weight")[0],
        ],
        "layer_norm_eps": 1e-6,
    }
    clip_hidden = _shape(shapes, "vision_model.embeddings.class_embedding")[0]
    clip_positions = _shape(shapes, "vision_model.embeddings.position_embedding.weight")[0]
    clip_patch = int(clip_cfg.get("patch_size", 14))
    clip_layers = 1 + max(
        int(k.split("vision_model.transformer.layers.")[1].split(".")[0])
        for k in shapes
        if "vision_model.transformer.layers." in k
    )
    encoder = {
        "hidden_size": clip_hidden,
        "intermediate_size": _shape(shapes, "vision_model.transformer.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": clip_layers,
        "num_attention_heads": int(clip_cfg.get("heads", 16)),
        "image_size": math.isqrt(clip_positions - 1) * clip_patch,
        "patch_size": clip_patch,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    if sam["downsample_channels"][-1] != clip_hidden:
        raise V1LoadError(
            f"SAM output channels {sam['downsample_channels'][-1]} != CLIP width {clip_hidden}"
        )
    return UnlimitedOcrConfig(
        vision_config={"sam_config": sam, "encoder_config": encoder},
        text_config=text,
        image_token_id=image_token_id,
        tie_word_embeddings=False,
    )
