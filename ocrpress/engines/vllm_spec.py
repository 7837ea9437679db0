"""vLLM's side of DeepSeek-OCR, without vLLM: what it can run, what it is asked, what it answers.

The :class:`~ocrpress.engines.vllm.VllmEngine` is a thin shell around these pure functions:
which checkpoints vLLM has a native class for, which modes and tile ranges its processor
honours (and whether the installed release's processor constants still match), the prompt
dicts, ``SamplingParams`` and ``LLM`` keyword arguments of a run, and the rules that turn a
``RequestOutput`` into a PageResult. Nothing here imports vLLM (or torch), so all of it is
tested without a GPU, and against vLLM's real classes where vLLM is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..document import PageImage, PageResult
from ..modes import ModeSpec, TokenPlan, get_mode
from . import EngineError
from .deepseek_spec import dtype_name, planned_result, to_result

#: The original DeepSeek release: vLLM's native class reads its config and weight layout.
DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR-2"

#: config.json architectures -> family, for the checkpoints vLLM has a native class for.
ARCHITECTURES = {"DeepseekOCRForCausalLM": "v1", "DeepseekOCR2ForCausalLM": "v2"}

#: Modes and tile range vLLM's processor honours (its placeholder count is fixed to gundam).
VLLM_MODES = {"v1": ("gundam",), "v2": ("gundam",)}
VLLM_TILES = (2, 6)

#: vLLM's n-gram guard (shipped with its DeepSeek-OCR model).
# FQCN in vLLM's "<module>:<type>" syntax: a string keeps this module importable without vLLM.
NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"


def vllm_family(config: dict[str, Any]) -> str:
    """Family "v1"/"v2" of a config.json that vLLM can run natively; EngineError otherwise."""
    for arch in config.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if config.get("model_type") == "deepseek_ocr2":
        # The transformers conversion renames every weight; vLLM's class reads the original.
        raise EngineError(
            "this is the transformers conversion of DeepSeek-OCR-2, which vLLM has no native "
            f"class for; use the original release {DEFAULT_MODEL!r} with --engine vllm, or "
            "this checkpoint with --engine deepseek"
        )
    archs = ", ".join(config.get("architectures") or []) or config.get("model_type")
    raise EngineError(
        f"{archs!r} is not a DeepSeek-OCR checkpoint vLLM can run natively "
        f"(expected architectures {' or '.join(ARCHITECTURES)})"
    )


def check_mode(family: str, mode: str, min_tiles: int, max_tiles: int) -> ModeSpec:
    """The mode's spec if vLLM can honour it with these tiles; EngineError naming why not."""
    try:
        spec = get_mode(family, mode)
    except ValueError as e:
        raise EngineError(str(e)) from e
    allowed = VLLM_MODES[family]
    if mode not in allowed:
        raise EngineError(
            f"--engine vllm cannot honour mode {mode!r}: vLLM's DeepSeek-OCR processor counts "
            f"image placeholders for {'/'.join(allowed)} only (its sizes are module constants "
            "that mm_processor_kwargs do not reach), so other modes would mismatch the image "
            f"embeddings. Use --mode {allowed[0]}, or --engine deepseek for {mode!r}"
        )
    if spec.tiled and (min_tiles, max_tiles) != VLLM_TILES:
        raise EngineError(
            f"--engine vllm tiles pages with {VLLM_TILES[0]}..{VLLM_TILES[1]} tiles only "
            f"(vLLM's processor fixes the range); got {min_tiles}..{max_tiles}. Use the "
            "default tile range, or --engine deepseek"
        )
    return spec


def check_processor_constants(family: str, spec: ModeSpec, constants: dict[str, Any]) -> None:
    """EngineError unless vLLM's processor constants are the sizes of ``spec``.

    ``constants`` holds BASE_SIZE, IMAGE_SIZE, CROP_MODE, MIN_CROPS and MAX_CROPS as read from
    the installed vLLM: a release that changes them would silently change the mode.
    """
    expected = {
        "BASE_SIZE": spec.base_size,
        "IMAGE_SIZE": spec.tile_size,
        "CROP_MODE": spec.tiled,
        "MIN_CROPS": VLLM_TILES[0],
        "MAX_CROPS": VLLM_TILES[1],
    }
    wrong = {k: constants.get(k) for k, v in expected.items() if constants.get(k) != v}
    if wrong:
        raise EngineError(
            f"this vLLM's DeepSeek-OCR processor ({family}) uses {wrong}, not the "
            f"{spec.name!r} mode ocrpress expects ({expected}); ocrpress supports vLLM "
            "releases whose processor runs gundam with 2..6 tiles"
        )


def build_request(page: PageImage, prompt: str) -> dict[str, Any]:
    """One vLLM prompt dict for ``page``: the text prompt with ``<image>`` and the RGB image."""
    image = page.image if page.image.mode == "RGB" else page.image.convert("RGB")
    return {"prompt": prompt, "multi_modal_data": {"image": image}}


def sampling_kwargs(
    max_new_tokens: int,
    ngram_size: int,
    ngram_window: int,
    whitelist_token_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams``: greedy, markup kept, n-gram guard on.

    ``extra_args`` drive vLLM's ``NGramPerReqLogitsProcessor``; with ``ngram_size`` or
    ``ngram_window`` <= 0 the guard is off (the processor skips requests without
    ``ngram_size``).
    """
    if max_new_tokens < 1:
        raise EngineError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    kwargs: dict[str, Any] = {
        "temperature": 0.0,
        "max_tokens": max_new_tokens,
        # <|ref|>/<|det|> may be special tokens in a tokenizer: the parser needs them.
        "skip_special_tokens": False,
    }
    if ngram_size > 0 and ngram_window > 0:
        kwargs["extra_args"] = {
            "ngram_size": ngram_size,
            "window_size": ngram_window,
            "whitelist_token_ids": sorted(set(whitelist_token_ids)),
        }
    return kwargs


def llm_kwargs(
    model: str,
    *,
    dtype: str | None = None,
    max_num_seqs: int | None = None,
    ngram: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``; ``extra`` (``EngineOptions.extra["vllm"]``) wins."""
    kwargs: dict[str, Any] = {
        "model": model,
        "dtype": "auto",
        # One image per prompt; pages never repeat, so caches would only cost memory.
        "limit_mm_per_prompt": {"image": 1},
        "enable_prefix_caching": False,
        "mm_processor_cache_gb": 0,
    }
    if dtype is not None:
        kwargs["dtype"] = dtype_name(dtype)
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    if ngram:
        kwargs["logits_processors"] = [NGRAM_PROCESSOR]
    kwargs.update(extra or {})
    return kwargs


def result_from_output(
    page: PageImage,
    output: Any,
    plan: TokenPlan,
    *,
    model: str | None,
    mode: str | None,
    eos_token_ids: Sequence[int] = (),
    grounded: bool = True,
    engine: str = "vllm",
) -> PageResult:
    """Turn one ``vllm.RequestOutput`` into a PageResult (same rules as the deepseek engine).

    ``finish_reason`` "length" -> truncated (text kept); "stop" -> ok, or empty if no text;
    anything else (abort, error) -> error. ``text_tokens`` counts generated tokens without the
    closing EOS, as the transformers engine does.
    """

    def failed(error: str, **fields: Any) -> PageResult:
        return planned_result(
            page, engine, plan, model=model, mode=mode, status="error", error=error, **fields
        )

    completions = getattr(output, "outputs", None) or []
    if not completions:
        return failed("vLLM returned no completion for this page")
    out = completions[0]
    tokens = list(out.token_ids)
    if tokens and out.finish_reason == "stop" and tokens[-1] in set(eos_token_ids):
        tokens = tokens[:-1]
    text = out.text or ""
    if out.finish_reason not in ("length", "stop"):
        return failed(
            f"vLLM finished the request with reason {out.finish_reason!r}",
            text_tokens=len(tokens),
            raw=text,
        )
    return to_result(
        page,
        engine,
        model=model,
        mode=mode,
        plan=plan,
        text=text,
        text_tokens=len(tokens),
        hit_limit=out.finish_reason == "length",
        grounded=grounded,
    )
