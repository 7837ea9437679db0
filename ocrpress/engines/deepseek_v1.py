"""DeepSeek-OCR (v1) checkpoints on transformers' native ``unlimited_ocr`` classes.

transformers has no class for ``deepseek-ai/DeepSeek-OCR`` (its config names remote code:
``DeepseekOCRForCausalLM`` in ``modeling_deepseekocr.py``), but ``unlimited_ocr`` is a port of
the same network: SAM ViT-B -> CLIP-L -> linear projector -> DeepSeek-V2 MoE decoder with
multi-head attention, one newline embedding per feature row and a view separator. Its
checkpoint conversion mapping reads v1 key names (``model.sam_model.*``,
``model.vision_model.*``, ``model.projector.layers.*``, ``model.view_seperator``, per-expert
MoE weights). Two things differ and are handled here:

* the config: v1's ``config.json`` (DeepseekV2 fields, a free-form ``vision_config``) is
  translated into an :class:`UnlimitedOcrConfig`; sizes the v1 config does not state (its
  remote code hard-codes them) are read from the safetensors header;
* attention: Unlimited-OCR decodes with reference sliding-window attention, v1 with full
  causal attention, so every decoder layer is set to ``full_attention``.

Images are prepared with PIL + numpy (the transformers image processor needs torchvision),
following the reference ``DeepseekOCRForCausalLM.infer``: tiny/small views are stretched to a
square, base/large views are letterboxed with grey (127, 127, 127), gundam adds 640-px tiles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .. import modes
from ..modes import ModeSpec

if TYPE_CHECKING:
    from transformers.feature_extraction_utils import BatchFeature

V1_ARCHITECTURE = "DeepseekOCRForCausalLM"
_V1_REMOTE_MODULE = "modeling_deepseekocr."  # trailing dot: not modeling_deepseekocr2
IMAGE_TOKEN = "<image>"
PAD_COLOR = (127, 127, 127)  # int(0.5 * 255): the normalisation mean, i.e. 0 after normalising
TILE_SIZE = modes.modes_for("v1")["gundam"].tile_size or 640


class V1LoadError(RuntimeError):
    """A DeepSeek-OCR v1 checkpoint that cannot be served (what is wrong is in the message)."""


def get_mode(mode: str) -> ModeSpec:
    """The v1 mode called ``mode``; ValueError naming the valid ones otherwise."""
    return modes.get_mode("v1", mode)


def token_plan(
    image: Image.Image | tuple[int, int], mode: str, min_tiles: int = 2, max_tiles: int = 6
) -> modes.TokenPlan:
    """Vision tokens, tile grid and prompt positions of one page (see :mod:`ocrpress.modes`)."""
    width, height = image.size if isinstance(image, Image.Image) else image
    return modes.plan_tokens("v1", mode, width, height, min_tiles, max_tiles)


def plan(
    image: Image.Image | tuple[int, int], mode: str, min_tiles: int = 2, max_tiles: int = 6
) -> tuple[int, tuple[int, int] | None]:
    """Published vision-token cost and tile grid of one page: ``(vision_tokens, tiles)``.

    ``image`` is a PIL image or its ``(width, height)``. Tokens are feature cells only
    (tiny 64, small 100, base 256, large 400, gundam 256 + 100 per tile), without the newline
    and separator positions that :func:`token_plan` also counts.
    """
    tp = token_plan(image, mode, min_tiles, max_tiles)
    return tp.vision_tokens, tp.tiles


# --------------------------------------------------------------------------- images


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 -> CHW float in [-1, 1] (v1: ToTensor, then Normalize(0.5, 0.5))."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1).contiguous()


def global_view(image: Image.Image, mode: str) -> Image.Image:
    """The square global view: stretched up to 640 px, letterboxed with grey above."""
    spec = get_mode(mode)
    view = spec.base_size
    image = image.convert("RGB")
    # v1's infer(): views <= 640 px are resized without keeping the aspect ratio; larger
    # views (and gundam's 1024-px global view) keep it and pad with the mean colour.
    if spec.tile_size is None and view <= TILE_SIZE:
        return image.resize((view, view), Image.Resampling.BICUBIC)
    return ImageOps.pad(image, (view, view), method=Image.Resampling.BICUBIC, color=PAD_COLOR)


def crop_tiles(image: Image.Image, tiles: tuple[int, int]) -> list[Image.Image]:
    """Resize to ``640*cols x 640*rows`` and cut row-major into 640-px tiles."""
    cols, rows = tiles
    resized = image.convert("RGB").resize(
        (TILE_SIZE * cols, TILE_SIZE * rows), Image.Resampling.BICUBIC
    )
    return [
        resized.crop((c * TILE_SIZE, r * TILE_SIZE, (c + 1) * TILE_SIZE, (r + 1) * TILE_SIZE))
        for r in range(rows)
        for c in range(cols)
    ]


class V1Processor:
    """Prompts + pages -> inputs of ``UnlimitedOcrForConditionalGeneration`` for a v1 checkpoint.

    Each prompt holds one ``<image>``; it is expanded into the image's placeholder positions
    and the BOS token is prepended, as v1's ``infer()`` does. Rows of unequal length are
    left-padded with the pad token.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_token_id: int | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        # Where the model lives: outputs land there, pixels in its dtype (a bf16 model
        # rejects fp32 pixels).
        self.device = device
        self.dtype = dtype
        self.image_token_id = (
            image_token_id
            if image_token_id is not None
            else tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        )
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise V1LoadError(f"the tokenizer has no {IMAGE_TOKEN!r} token")
        self.bos_token_id = tokenizer.bos_token_id
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    def plan(
        self, image: Image.Image, mode: str, min_tiles: int = 2, max_tiles: int = 6
    ) -> tuple[int, tuple[int, int] | None]:
        """``(vision_tokens, tiles)`` of one page; see :func:`plan`."""
        return plan(image, mode, min_tiles, max_tiles)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def __call__(
        self,
        images: list[Image.Image],
        prompts: list[str],
        mode: str,
        min_tiles: int = 2,
        max_tiles: int = 6,
        on_device: bool = True,
    ) -> BatchFeature:
        """Tensors for ``model.generate(**inputs)``: ids, mask, global and tile pixels (on the
        model's device, or on the CPU with ``on_device=False``: page preparation)."""
        from transformers.feature_extraction_utils import BatchFeature

        get_mode(mode)  # an unknown mode fails before any image work
        if len(images) != len(prompts) or not images:
            raise ValueError(f"need one prompt per image, got {len(images)} and {len(prompts)}")
        rows: list[list[int]] = []
        views: list[torch.Tensor] = []
        local: list[torch.Tensor] = []
        num_local: list[int] = []
        grids: list[list[int]] = []
        for image, prompt in zip(images, prompts, strict=True):
            if prompt.count(IMAGE_TOKEN) != 1:
                raise ValueError(f"a v1 prompt needs exactly one {IMAGE_TOKEN}: {prompt!r}")
            tp = token_plan(image, mode, min_tiles, max_tiles)
            tiles = tp.tiles
            views.append(_to_tensor(global_view(image, mode)))
            if tiles:
                local.extend(_to_tensor(t) for t in crop_tiles(image, tiles))
            num_local.append(tiles[0] * tiles[1] if tiles else 0)
            grids.append(list(tiles) if tiles else [1, 1])
            before, after = prompt.split(IMAGE_TOKEN)
            ids = [self.bos_token_id] if self.bos_token_id is not None else []
            ids += self._encode(before)
            ids += [self.image_token_id] * tp.positions
            ids += self._encode(after)
            rows.append(ids)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids) :] = 1
        data: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack(views),
            "num_local_patches": num_local,
            "patches_grid": grids,
        }
        if local:
            data["pixel_values_local"] = torch.stack(local)
        for key in ("pixel_values", "pixel_values_local"):
            if key in data and self.dtype is not None:
                data[key] = data[key].to(self.dtype)
        if self.device is not None and on_device:
            data = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in data.items()}
        return BatchFeature(data=data)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, **kwargs)

    def decode(self, ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(ids, **kwargs)


# --------------------------------------------------------------------------- config


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
