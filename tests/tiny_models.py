"""Tiny random-weight DeepSeek-OCR-2 checkpoint for CPU tests (built in code, no download).

The checkpoint has the real architecture (SAM -> Qwen2-style encoder with 768/1024 query
tables -> MoE decoder) at toy sizes, a byte-level BPE tokenizer with DeepSeek's special
tokens, and the real processor, all written with ``save_pretrained`` so that tests load it
back by path through exactly the code users run.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Prompt vocabulary the tokenizer is trained on, so prompts tokenize into few tokens.
_CORPUS = [
    "Convert the document to markdown.",
    "Free OCR.",
    "Parse the figure.",
    "Describe this image in detail.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "title text table figure caption header footer equation image sub_title",
    "<table><tr><td>cell</td></tr></table> # ## $$ x^2 $$",
]

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
# Tokens the model must emit and the engine must see in decoded text: not "special", so
# decoding keeps them.
MARKUP_TOKENS = ["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<td>", "</td>", "<|grounding|>"]


def build_tokenizer(vocab_size: int = 400):
    """Byte-level BPE tokenizer with DeepSeek-style special tokens (BOS prepended)."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )


def tiny_v2_config(tokenizer, **text_overrides):
    """A DeepseekOcr2Config at toy sizes whose special ids match ``tokenizer``."""
    from transformers import DeepseekOcr2Config

    enc_hidden = 32
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "moe_intermediate_size": 16,
        # The config has no default for this and the decoder indexes it per layer.
        "mlp_layer_types": ["dense", "sparse"],
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text.update(text_overrides)
    return DeepseekOcr2Config(
        vision_config={
            "sam_config": {
                "hidden_size": 16,
                "output_channels": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "global_attn_indexes": [1],
                "window_size": 14,
                "downsample_channels": [16, enc_hidden],
            },
            "encoder_config": {
                "vocab_size": 8,  # the encoder embeds no tokens
                "hidden_size": enc_hidden,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 2048,
            },
        },
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )


def build_tiny_v2(path: str | Path, *, seed: int = 0, std: float = 0.5) -> Path:
    """Write a tiny random DeepSeek-OCR-2 checkpoint (config, weights, tokenizer, processor)."""
    from transformers import (
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2Processor,
        GenerationConfig,
    )
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
        DeepseekOcr2ImageProcessorPil,
    )

    path = Path(path)
    tokenizer = build_tokenizer()
    config = tiny_v2_config(tokenizer)
    torch.manual_seed(seed)
    model = DeepseekOcr2ForConditionalGeneration(config).eval()
    # The default init (std 0.02, zero SAM position tables) makes every page produce the same
    # text; wide weights make generations depend on the pixels. Norm weights stay at 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 or name.endswith(("pos_embed", "view_separator")):
                p.normal_(0.0, std / max(1.0, p.shape[-1] ** 0.5) * 4)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(path)
    processor = DeepseekOcr2Processor(
        image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer
    )
    processor.save_pretrained(path)
    return path
