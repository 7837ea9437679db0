"""Tiny random DeepSeek-OCR (v1) checkpoint laid out like ``deepseek-ai/DeepSeek-OCR``.

The folder looks like a miniature of the published repo: ``config.json`` in v1's layout
(``model_type: deepseek_vl_v2``, ``DeepseekOCRForCausalLM``, remote-code ``auto_map``, a
``language_config`` copy, the free-form ``vision_config``), weights under v1's parameter
names (``model.sam_model.blocks.*``, ``model.vision_model.transformer.*`` with fused
``qkv_proj``, ``model.projector.layers``, ``model.view_seperator``, one tensor per MoE
expert, top-level ``lm_head``) in a one-shard safetensors file with an index, and a
byte-level BPE tokenizer saved as ``LlamaTokenizerFast`` with DeepSeek's special tokens.

The tensors are written by name from a shape table, never through transformers' classes, so
loading them proves that ocrpress + transformers read v1's names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
MARKUP_TOKENS = ["<|grounding|>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<td>", "</td>"]
_CORPUS = [
    "Convert the document to markdown.",
    "Free OCR.",
    "Parse the figure.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "title text table figure caption header footer equation image sub_title",
    "<table><tr><td>cell</td></tr></table> # ## $$ x^2 $$",
]

# Toy sizes. Patch 16 and two stride-2 convolutions are kept: they fix the token counts.
TEXT = {"hidden": 32, "layers": 2, "heads": 4, "ffn": 64, "experts": 4, "moe_ffn": 16, "shared": 1}
SAM = {"width": 16, "layers": 2, "heads": 2, "global": [1], "window": 14, "neck": 16}
SAM["down"] = [16, 32]
CLIP = {"width": 32, "layers": 1, "heads": 4, "ffn": 64, "image": 224, "patch": 14}

# deepseek-ai/DeepSeek-OCR's own sizes (its remote code hard-codes the vision ones).
REAL_VOCAB = 129280
REAL_TEXT = {
    "hidden": 1280,
    "layers": 12,
    "heads": 10,
    "ffn": 6848,
    "experts": 64,
    "moe_ffn": 896,
    "shared": 2,
}
REAL_SAM = {
    "width": 768,
    "layers": 12,
    "heads": 12,
    "global": [2, 5, 8, 11],
    "window": 14,
    "neck": 256,
    "down": [512, 1024],
}
REAL_CLIP = {"width": 1024, "layers": 24, "heads": 16, "ffn": 4096, "image": 224, "patch": 14}


def build_tokenizer():
    """Byte-level BPE with BOS/EOS/pad at ids 0/1/2 (as v1), ``<image>`` and markup tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=[BOS, EOS, PAD, "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    # Not "special": decoded text must keep the grounding markup.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )


def v1_config(vocab_size: int) -> dict:
    """config.json in the published v1 layout, at toy sizes."""
    lm = {
        "bos_token_id": 0,
        "eos_token_id": 1,
        "first_k_dense_replace": 1,
        "hidden_size": TEXT["hidden"],
        "intermediate_size": TEXT["ffn"],
        "kv_lora_rank": None,
        "lm_head": True,
        "max_position_embeddings": 8192,
        "moe_intermediate_size": TEXT["moe_ffn"],
        "n_group": 1,
        "n_routed_experts": TEXT["experts"],
        "n_shared_experts": TEXT["shared"],
        "num_attention_heads": TEXT["heads"],
        "num_experts_per_tok": 2,
        "num_hidden_layers": TEXT["layers"],
        "num_key_value_heads": TEXT["heads"],
        "q_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "rm_head": False,
        "topk_group": 1,
        "topk_method": "greedy",
        "use_mla": False,
        "v_head_dim": 0,
        "vocab_size": vocab_size,
    }
    return {
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
            **lm,
            "torch_dtype": "float32",
        },
        "model_type": "deepseek_vl_v2",
        "projector_config": {
            "input_dim": SAM["down"][-1] + CLIP["width"],
            "model_type": "mlp_projector",
            "n_embed": TEXT["hidden"],
            "projector_type": "linear",
        },
        "tile_tag": "2D",
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
        "vision_config": {
            "image_size": 1024,
            "mlp_ratio": 3.7362,
            "model_name": "deeplip_b_l",
            "model_type": "vision",
            "width": {
                "clip-l-14-224": {
                    "heads": CLIP["heads"],
                    "image_size": CLIP["image"],
                    "layers": CLIP["layers"],
                    "patch_size": CLIP["patch"],
                    "width": CLIP["width"],
                },
                "sam_vit_b": {
                    "downsample_channels": SAM["down"],
                    "global_attn_indexes": SAM["global"],
                    "heads": SAM["heads"],
                    "layers": SAM["layers"],
                    "width": SAM["width"],
                },
            },
        },
        **lm,
    }


def v1_shapes(
    vocab_size: int, text: dict = TEXT, sam: dict = SAM, clip: dict = CLIP
) -> dict[str, tuple[int, ...]]:
    """Every tensor of a v1 checkpoint under its v1 name (the real header's 61 patterns)."""
    shapes: dict[str, tuple[int, ...]] = {}
    w, hd = sam["width"], sam["width"] // sam["heads"]
    grid = 1024 // 16
    shapes["model.sam_model.pos_embed"] = (1, grid, grid, w)
    shapes["model.sam_model.patch_embed.proj.weight"] = (w, 3, 16, 16)
    shapes["model.sam_model.patch_embed.proj.bias"] = (w,)
    for i in range(sam["layers"]):
        b = f"model.sam_model.blocks.{i}."
        rel = 2 * (grid if i in sam["global"] else sam["window"]) - 1
        for norm in ("norm1", "norm2"):
            shapes[b + f"{norm}.weight"] = shapes[b + f"{norm}.bias"] = (w,)
        shapes[b + "attn.rel_pos_h"] = shapes[b + "attn.rel_pos_w"] = (rel, hd)
        shapes[b + "attn.qkv.weight"], shapes[b + "attn.qkv.bias"] = (3 * w, w), (3 * w,)
        shapes[b + "attn.proj.weight"], shapes[b + "attn.proj.bias"] = (w, w), (w,)
        shapes[b + "mlp.lin1.weight"], shapes[b + "mlp.lin1.bias"] = (4 * w, w), (4 * w,)
        shapes[b + "mlp.lin2.weight"], shapes[b + "mlp.lin2.bias"] = (w, 4 * w), (w,)
    n = sam["neck"]
    shapes["model.sam_model.neck.0.weight"] = (n, w, 1, 1)
    shapes["model.sam_model.neck.1.weight"] = shapes["model.sam_model.neck.1.bias"] = (n,)
    shapes["model.sam_model.neck.2.weight"] = (n, n, 3, 3)
    shapes["model.sam_model.neck.3.weight"] = shapes["model.sam_model.neck.3.bias"] = (n,)
    shapes["model.sam_model.net_2.weight"] = (sam["down"][0], n, 3, 3)
    shapes["model.sam_model.net_3.weight"] = (sam["down"][1], sam["down"][0], 3, 3)

    c, p = clip["width"], clip["patch"]
    shapes["model.vision_model.embeddings.class_embedding"] = (c,)
    shapes["model.vision_model.embeddings.patch_embedding.weight"] = (c, 3, p, p)  # unused
    shapes["model.vision_model.embeddings.position_embedding.weight"] = (
        (clip["image"] // p) ** 2 + 1,
        c,
    )
    shapes["model.vision_model.pre_layrnorm.weight"] = (c,)
    shapes["model.vision_model.pre_layrnorm.bias"] = (c,)
    for i in range(clip["layers"]):
        b = f"model.vision_model.transformer.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[b + f"{norm}.weight"] = shapes[b + f"{norm}.bias"] = (c,)
        shapes[b + "self_attn.qkv_proj.weight"] = (3 * c, c)
        shapes[b + "self_attn.qkv_proj.bias"] = (3 * c,)
        shapes[b + "self_attn.out_proj.weight"] = (c, c)
        shapes[b + "self_attn.out_proj.bias"] = (c,)
        shapes[b + "mlp.fc1.weight"], shapes[b + "mlp.fc1.bias"] = (clip["ffn"], c), (clip["ffn"],)
        shapes[b + "mlp.fc2.weight"], shapes[b + "mlp.fc2.bias"] = (c, clip["ffn"]), (c,)

    h = text["hidden"]
    shapes["model.projector.layers.weight"] = (h, sam["down"][-1] + c)
    shapes["model.projector.layers.bias"] = (h,)
    shapes["model.image_newline"] = (h,)
    shapes["model.view_seperator"] = (h,)  # sic: v1's spelling
    shapes["model.embed_tokens.weight"] = (vocab_size, h)
    for i in range(text["layers"]):
        b = f"model.layers.{i}."
        shapes[b + "input_layernorm.weight"] = shapes[b + "post_attention_layernorm.weight"] = (h,)
        for proj in "qkvo":
            shapes[b + f"self_attn.{proj}_proj.weight"] = (h, h)
        if i == 0:  # first_k_dense_replace = 1
            shapes[b + "mlp.gate_proj.weight"] = shapes[b + "mlp.up_proj.weight"] = (text["ffn"], h)
            shapes[b + "mlp.down_proj.weight"] = (h, text["ffn"])
            continue
        m = text["moe_ffn"]
        shapes[b + "mlp.gate.weight"] = (text["experts"], h)
        for e in range(text["experts"]):
            shapes[b + f"mlp.experts.{e}.gate_proj.weight"] = (m, h)
            shapes[b + f"mlp.experts.{e}.up_proj.weight"] = (m, h)
            shapes[b + f"mlp.experts.{e}.down_proj.weight"] = (h, m)
        s = m * text["shared"]
        shapes[b + "mlp.shared_experts.gate_proj.weight"] = (s, h)
        shapes[b + "mlp.shared_experts.up_proj.weight"] = (s, h)
        shapes[b + "mlp.shared_experts.down_proj.weight"] = (h, s)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (vocab_size, h)
    return shapes


def _is_norm_weight(name: str) -> bool:
    return name.endswith(".weight") and any(
        key in name for key in ("norm", "neck.1.", "neck.3.", "pre_layrnorm")
    )


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors scaled to keep activations O(1), so the text depends on the pixels.

    (Zero position tables and 0.02-std matrices, a usual init, make every page alike.)
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if _is_norm_weight(name):
            t = torch.ones(shape)
        elif len(shape) >= 2 and "pos" not in name and "embedding" not in name:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=gen) * (1.5 / fan_in**0.5)
        else:  # biases, position tables, class/newline/separator embeddings, token embeddings
            t = torch.randn(shape, generator=gen) * (0.1 if name.endswith("bias") else 0.5)
        out[name] = t.contiguous()
    return out


def build_tiny_v1(path: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny v1 checkpoint into ``path`` and return it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path)
    tok_cfg_file = path / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_file.read_text(encoding="utf-8"))
    tok_cfg["tokenizer_class"] = "LlamaTokenizerFast"  # what v1 publishes
    tok_cfg_file.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False), encoding="utf-8")

    vocab = len(tokenizer)
    config = v1_config(vocab)
    (path / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (path / "processor_config.json").write_text(
        json.dumps(
            {
                "add_special_token": False,
                "candidate_resolutions": [[1024, 1024]],
                "downsample_ratio": 4,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "image_token": "<image>",
                "normalize": True,
                "pad_token": PAD,
                "patch_size": 16,
                "processor_class": "DeepseekVLV2Processor",
                "sft_format": "deepseek",
            },
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    tensors = random_weights(v1_shapes(vocab), seed)
    shard = "model-00001-of-000001.safetensors"  # the real repo's single shard + index
    save_file(tensors, str(path / shard), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict.fromkeys(sorted(tensors), shard)}
    index_file = path / "model.safetensors.index.json"
    index_file.write_text(json.dumps(index, indent=1), encoding="utf-8")
    return path
