"""DeepSeek-OCR v1 checkpoints served natively by transformers' ``unlimited_ocr`` classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from tiny_models_v1 import REAL_CLIP, REAL_SAM, REAL_TEXT, REAL_VOCAB, v1_shapes

from ocrpress.engines.deepseek_v1 import load_v1
from ocrpress.engines.deepseek_v1_config import (
    V1LoadError,
    is_v1_config,
    read_shapes,
    v1_to_unlimited_config,
)
from ocrpress.engines.deepseek_v1_processor import V1Processor, plan, token_plan

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."

# deepseek-ai/DeepSeek-OCR's config.json as published (transcribed; the language fields are
# duplicated at the top level there too).
_REAL_LM = {
    "bos_token_id": 0,
    "eos_token_id": 1,
    "first_k_dense_replace": 1,
    "hidden_size": 1280,
    "intermediate_size": 6848,
    "kv_lora_rank": None,
    "lm_head": True,
    "max_position_embeddings": 8192,
    "moe_intermediate_size": 896,
    "n_group": 1,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "num_attention_heads": 10,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 12,
    "num_key_value_heads": 10,
    "q_lora_rank": None,
    "qk_nope_head_dim": 0,
    "qk_rope_head_dim": 0,
    "rm_head": False,
    "topk_group": 1,
    "topk_method": "greedy",
    "use_mla": False,
    "v_head_dim": 0,
    "vocab_size": 129280,
}
REAL_V1_CONFIG = {
    "_name_or_path": "deepseek-ai/DeepSeek-OCR",
    "candidate_resolutions": [[1024, 1024]],
    "global_view_pos": "head",
    "architectures": ["DeepseekOCRForCausalLM"],
    "auto_map": {
        "AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
        "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM",
    },
    "language_config": {
        "architectures": ["DeepseekV2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_deepseekv2.DeepseekV2Config",
            "AutoModel": "modeling_deepseek.DeepseekV2Model",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM",
        },
        **_REAL_LM,
        "torch_dtype": "bfloat16",
    },
    "model_type": "deepseek_vl_v2",
    "projector_config": {
        "input_dim": 2048,
        "model_type": "mlp_projector",
        "n_embed": 1280,
        "projector_type": "linear",
    },
    "tile_tag": "2D",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
    "vision_config": {
        "image_size": 1024,
        "mlp_ratio": 3.7362,
        "model_name": "deeplip_b_l",
        "model_type": "vision",
        "width": {
            "clip-l-14-224": {
                "heads": 16,
                "image_size": 224,
                "layers": 24,
                "patch_size": 14,
                "width": 1024,
            },
            "sam_vit_b": {
                "downsample_channels": [512, 1024],
                "global_attn_indexes": [2, 5, 8, 11],
                "heads": 12,
                "layers": 12,
                "width": 768,
            },
        },
    },
    **_REAL_LM,
}

# Published v1 costs: mode -> (vision tokens of the global view, its sequence positions).
PUBLISHED = {
    "tiny": (64, 73),
    "small": (100, 111),
    "base": (256, 273),
    "large": (400, 421),
    "gundam": (256, 273),
}
VIEW = {"tiny": 512, "small": 640, "base": 1024, "large": 1280, "gundam": 1024}
# (width, height): A4 and Letter at 144 dpi, landscape, a receipt strip, a small snippet.
PAGES = [(1191, 1684), (1224, 1584), (1684, 1191), (600, 2000), (500, 400), (1024, 1024)]


def _page(width: int, height: int, seed: int) -> Image.Image:
    """A page with a few dark blocks whose placement depends on ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = (torch.rand(2, generator=gen) * torch.tensor([width * 0.7, height * 0.8])).tolist()
        w, h = width * 0.25, height * 0.05
        shade = int(torch.randint(0, 120, (1,), generator=gen))
        draw.rectangle([x, y, x + w, y + h], fill=(shade, shade, shade))
    return image


@pytest.fixture(scope="module")
def v1(tiny_v1_model: Path):
    return load_v1(str(tiny_v1_model), device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------ config recognition


def test_is_v1_config_recognises_the_published_layout() -> None:
    assert is_v1_config(REAL_V1_CONFIG)
    only_auto_map = {k: v for k, v in REAL_V1_CONFIG.items() if k != "architectures"}
    assert is_v1_config(only_auto_map)


@pytest.mark.parametrize(
    "config",
    [
        # DeepSeek-OCR-2, remote code: same model_type, other module.
        {
            "model_type": "deepseek_vl_v2",
            "architectures": ["DeepseekOCR2ForCausalLM"],
            "auto_map": {"AutoModel": "modeling_deepseekocr2.DeepseekOCR2ForCausalLM"},
        },
        {"model_type": "deepseek_ocr2", "architectures": ["DeepseekOcr2ForConditionalGeneration"]},
        {"model_type": "deepseek_vl_v2", "architectures": ["DeepseekVLV2ForCausalLM"]},
        {"model_type": "unlimited_ocr", "architectures": ["UnlimitedOcrForConditionalGeneration"]},
        {},
        [],
    ],
)
def test_is_v1_config_rejects_other_models(config) -> None:
    assert not is_v1_config(config)


def test_translation_of_the_real_config_rebuilds_the_real_model() -> None:
    """At full size (on the meta device) the translated model has v1's parameter count."""
    from transformers import UnlimitedOcrForConditionalGeneration

    shapes = v1_shapes(REAL_VOCAB, REAL_TEXT, REAL_SAM, REAL_CLIP)
    # The published header: 2710 tensors, 3,336,106,240 parameters.
    assert len(shapes) == 2710
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert total == 3_336_106_240

    config = v1_to_unlimited_config(REAL_V1_CONFIG, shapes, image_token_id=128815, pad_token_id=2)
    sam, clip = config.vision_config.sam_config, config.vision_config.encoder_config
    assert (sam.hidden_size, sam.num_hidden_layers, sam.num_attention_heads) == (768, 12, 12)
    assert (sam.mlp_dim, sam.window_size, sam.output_channels) == (3072, 14, 256)
    assert list(sam.downsample_channels) == [512, 1024] and sam.image_size == 1024
    assert (clip.hidden_size, clip.num_hidden_layers, clip.intermediate_size) == (1024, 24, 4096)
    assert (clip.image_size, clip.patch_size, clip.num_attention_heads) == (224, 14, 16)
    text = config.text_config
    assert text.layer_types == ["full_attention"] * 12
    assert text.mlp_layer_types == ["dense"] + ["sparse"] * 11
    assert (text.head_dim, text.num_experts, text.num_experts_per_tok) == (128, 64, 6)
    assert text.rope_parameters["rope_theta"] == 10000.0

    with torch.device("meta"):
        model = UnlimitedOcrForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    # Everything but CLIP's patch embedding, which v1 never runs (SAM features replace it).
    assert params == total - 1024 * 3 * 14 * 14


def test_unsupported_v1_variants_are_refused_by_name() -> None:
    shapes = v1_shapes(REAL_VOCAB, REAL_TEXT, REAL_SAM, REAL_CLIP)
    for field, value, needle in [
        ("use_mla", True, "use_mla"),
        ("norm_topk_prob", True, "norm_topk_prob"),
        ("topk_method", "noaux_tc", "topk_method"),
    ]:
        config = {**REAL_V1_CONFIG, field: value}
        with pytest.raises(V1LoadError, match=needle):
            v1_to_unlimited_config(config, shapes, image_token_id=128815)


# ------------------------------------------------------------------ loading


def test_load_by_path_reads_v1_key_names(v1, tiny_v1_model: Path) -> None:
    from safetensors.torch import load_file
    from transformers import UnlimitedOcrForConditionalGeneration

    model, processor = v1
    assert isinstance(model, UnlimitedOcrForConditionalGeneration)
    assert isinstance(processor, V1Processor)
    assert not model.training
    saved = load_file(str(tiny_v1_model / "model-00001-of-000001.safetensors"))
    assert "model.sam_model.blocks.0.attn.qkv.weight" in saved  # the checkpoint is v1-named

    inner = model.model
    clip_attn = inner.vision_tower.vision_encoder.encoder.layers[0].self_attn
    qkv = saved["model.vision_model.transformer.layers.0.self_attn.qkv_proj.weight"]
    q, k, v = qkv.chunk(3)
    assert torch.equal(clip_attn.q_proj.weight, q) and torch.equal(clip_attn.v_proj.weight, v)
    assert torch.equal(clip_attn.k_proj.weight, k)
    experts = inner.language_model.layers[1].mlp.experts
    for e in range(experts.num_experts):
        gate_up = torch.cat(
            [
                saved[f"model.layers.1.mlp.experts.{e}.gate_proj.weight"],
                saved[f"model.layers.1.mlp.experts.{e}.up_proj.weight"],
            ]
        )
        assert torch.equal(experts.gate_up_proj[e], gate_up)
        down = saved[f"model.layers.1.mlp.experts.{e}.down_proj.weight"]
        assert torch.equal(experts.down_proj[e], down)
    sam = inner.vision_tower.sam_encoder
    assert torch.equal(
        sam.layers[1].attn.rel_pos_h, saved["model.sam_model.blocks.1.attn.rel_pos_h"]
    )
    assert torch.equal(sam.neck.layer_norm2.bias, saved["model.sam_model.neck.3.bias"])
    assert torch.equal(sam.proj.conv2.weight, saved["model.sam_model.net_3.weight"])
    assert torch.equal(inner.view_separator, saved["model.view_seperator"])
    assert torch.equal(inner.multi_modal_projector.weight, saved["model.projector.layers.weight"])
    assert torch.equal(model.lm_head.weight, saved["lm_head.weight"])
    assert model.config.text_config.layer_types == ["full_attention"] * 2
    assert processor.tokenizer.bos_token_id == 0 and processor.tokenizer.eos_token_id == 1


# ------------------------------------------------------------------ modes and token counts


@pytest.mark.parametrize("mode", list(PUBLISHED))
@pytest.mark.parametrize("size", PAGES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_mode_tensors_and_token_counts(v1, mode: str, size: tuple[int, int]) -> None:
    from ocrpress.modes import plan_tokens

    _, processor = v1
    page = Image.new("RGB", size, "white")
    tokens, tiles = plan(page, mode)
    base_tokens, base_positions = PUBLISHED[mode]
    if mode == "gundam" and max(size) > 640:
        assert tiles is not None and 2 <= tiles[0] * tiles[1] <= 6
        cols, rows = tiles
        assert tokens == 256 + 100 * cols * rows
        positions = 273 + (10 * cols + 1) * 10 * rows
    else:
        assert tiles is None
        assert tokens == base_tokens
        positions = base_positions
    assert token_plan(page, mode).positions == positions
    assert processor.plan(page, mode) == (tokens, tiles)

    other = plan_tokens("v1", mode, *size)  # the modes module agrees
    assert (other.vision_tokens, other.tiles, other.positions) == (tokens, tiles, positions)

    inputs = processor([page], [PROMPT], mode)
    view = VIEW[mode]
    assert inputs["pixel_values"].shape == (1, 3, view, view)
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == positions
    assert inputs["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    if tiles:
        assert inputs["pixel_values_local"].shape == (tiles[0] * tiles[1], 3, 640, 640)
        assert inputs["num_local_patches"] == [tiles[0] * tiles[1]]
        assert inputs["patches_grid"] == [list(tiles)]
    else:
        assert "pixel_values_local" not in inputs
        assert inputs["num_local_patches"] == [0]


def test_a4_page_gets_two_by_three_tiles() -> None:
    assert plan((1191, 1684), "gundam") == (856, (2, 3))
    assert plan((1191, 1684), "gundam", min_tiles=2, max_tiles=9)[1] == (2, 3)
    assert plan((4000, 500), "gundam", max_tiles=9) == (256 + 8 * 100, (8, 1))


def test_small_views_stretch_and_large_views_letterbox(v1) -> None:
    _, processor = v1
    wide = Image.new("RGB", (2000, 1000), "white")
    grey = (127 / 255 - 0.5) / 0.5
    for mode in ("tiny", "small"):  # v1 resizes these straight to a square: no padding
        pixels = processor([wide], [PROMPT], mode)["pixel_values"][0]
        assert torch.allclose(pixels, torch.ones_like(pixels))
    for mode in ("base", "large", "gundam"):  # aspect kept, grey bands above and below
        pixels = processor([wide], [PROMPT], mode)["pixel_values"][0]
        view = pixels.shape[-1]
        assert torch.allclose(pixels[:, 0], torch.full_like(pixels[:, 0], grey))
        assert torch.allclose(pixels[:, view // 2], torch.ones_like(pixels[:, view // 2]))


def test_processor_rejects_bad_requests(v1) -> None:
    _, processor = v1
    page = Image.new("RGB", (800, 1000), "white")
    with pytest.raises(ValueError, match="<image>"):
        processor([page], ["Free OCR."], "base")
    with pytest.raises(ValueError, match="unknown mode 'huge'"):
        processor([page], [PROMPT], "huge")
    with pytest.raises(ValueError, match="tile range"):
        processor([page], [PROMPT], "gundam", min_tiles=2, max_tiles=10)
    with pytest.raises(ValueError, match="one prompt per image"):
        processor([page, page], [PROMPT], "base")


# ------------------------------------------------------------------ generation


@pytest.mark.parametrize("mode", list(PUBLISHED))
def test_generate_runs_in_every_mode(v1, mode: str) -> None:
    model, processor = v1
    inputs = processor([_page(1191, 1684, 0)], [PROMPT], mode)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def _greedy(model, inputs, n: int = 8) -> list[list[int]]:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :].tolist()


def test_batched_equals_one_by_one_in_fp32(v1) -> None:
    model, processor = v1
    pages = [_page(1191, 1684, s) for s in range(3)]
    batched = _greedy(model, processor(pages, [PROMPT] * 3, "base"))
    single = [_greedy(model, processor([p], [PROMPT], "base"))[0] for p in pages]
    assert batched == single
    assert len({tuple(s) for s in single}) > 1  # the text depends on the page


def test_batched_gundam_with_padding_equals_one_by_one(v1) -> None:
    """Pages with different tile grids: unequal prompts, left-padded in the batch."""
    model, processor = v1
    pages = [_page(1300, 700, 3), _page(500, 600, 4)]  # 2x1 tiles, untiled
    inputs = processor(pages, [PROMPT] * 2, "gundam", max_tiles=2)
    assert inputs["num_local_patches"] == [2, 0]
    assert int(inputs["attention_mask"][1].sum()) < inputs["attention_mask"].shape[1]
    batched = _greedy(model, inputs, 6)
    single = [_greedy(model, processor([p], [PROMPT], "gundam", max_tiles=2), 6)[0] for p in pages]
    assert batched == single


def test_bf16_model_gets_bf16_pixels(tiny_v1_model: Path) -> None:
    model, processor = load_v1(tiny_v1_model, device="cpu", dtype=torch.bfloat16)
    inputs = processor([_page(900, 1200, 1)], [PROMPT], "gundam")
    assert inputs["pixel_values"].dtype == inputs["pixel_values_local"].dtype == torch.bfloat16
    assert inputs["input_ids"].dtype == torch.long
    assert model.dtype == torch.bfloat16
    out = _greedy(model, inputs, 2)
    assert len(out[0]) == 2


# ------------------------------------------------------------------ broken checkpoints


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_weights_are_an_error_not_random(tiny_v1_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_v1_model, tmp_path / "ckpt")
    shard = folder / "model-00001-of-000001.safetensors"
    tensors = load_file(str(shard))
    del tensors["model.sam_model.neck.2.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.sam_model.neck.2.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(V1LoadError, match=r"missing weights: .*neck\.conv2"):
        load_v1(folder)


def test_truncated_weights_file_is_a_clear_error(tiny_v1_model: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_v1_model, tmp_path / "ckpt")
    shard = folder / "model-00001-of-000001.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(V1LoadError, match="unreadable safetensors"):
        load_v1(folder)


def test_not_a_v1_folder(tiny_v1_model: Path, tmp_path: Path) -> None:
    with pytest.raises(V1LoadError, match=r"no config\.json"):
        load_v1(tmp_path)
    folder = _copy(tiny_v1_model, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"], config["auto_map"] = ["DeepseekOCR2ForCausalLM"], {}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(V1LoadError, match="not a DeepSeek-OCR v1 config"):
        load_v1(folder)


def test_read_shapes_matches_the_builder(tiny_v1_model: Path) -> None:
    shapes = read_shapes(tiny_v1_model)
    assert shapes["model.view_seperator"] == (32,)
    assert shapes["model.layers.1.mlp.experts.3.up_proj.weight"] == (16, 32)
