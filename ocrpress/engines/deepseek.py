"""DeepSeek-OCR engine on transformers: DeepSeek-OCR-2 natively, DeepSeek-OCR (v1) via
``ocrpress.engines.deepseek_v1``.

Pages are batched by prompt length (the plan's ``batch_key``), so a batch needs no padding and
greedy outputs are the same batched or one page at a time (exactly so in fp32). Decoding is
greedy with a windowed no-repeat-n-gram guard; a page that hits ``max_new_tokens`` keeps its
text and is marked ``truncated``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from ..document import PageImage, PageResult
from ..grounding import blocks_from_output
from ..modes import (
    DEFAULT_MODE,
    TokenPlan,
    check_tile_range,
    get_mode,
    max_positions,
    plan_tokens,
)
from . import TASKS, EngineError, EngineOptions, PagePlan

log = logging.getLogger("ocrpress")

DEFAULT_MODEL = "deepseek-community/DeepSeek-OCR-2"

PROMPTS = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "text": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
}

# Table-cell tags repeat legitimately (empty cells, uniform rows): exempt from the n-gram guard.
NGRAM_WHITELIST = ("<td>", "</td>")

#: --dtype spellings -> torch dtype names (shared with the vLLM engine).
DTYPE_NAMES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}

CPU_BATCH_SIZE = 4
MAX_AUTO_BATCH = 128


# ----------------------------------------------------------------------------- model lookup


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def _resolve_dir(model: str) -> Path | None:
    """Folder holding ``model``'s config.json: a local folder or a Hub cache snapshot."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local if (local / "config.json").is_file() else None
    if _looks_like_path(model):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid repo id (HFValidationError)
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_available(model: str) -> bool:
    """True if ``model`` is a local folder with config.json or a Hub id in the local cache.

    Never touches the network.
    """
    return _resolve_dir(model) is not None


def _missing_model_message(model: str) -> str:
    local = Path(model).expanduser()
    if local.is_dir():
        return (
            f"model folder {str(local)!r} has no config.json; pass --model PATH to a "
            "checkpoint folder (config.json, weights, tokenizer and processor files)"
        )
    if _looks_like_path(model):
        return f"model folder {model!r} does not exist; pass --model PATH to a checkpoint folder"
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        HF_HUB_CACHE = "the Hugging Face cache"
    return (
        f"model {model!r} was looked for as a local folder and in the Hugging Face cache "
        f"({HF_HUB_CACHE}) and was not found. Download it with `hf download {model}` "
        f"(or `huggingface-cli download {model}`), set HF_HOME to the cache that holds it, "
        "or pass --model PATH to a local checkpoint folder"
    )


def load_config(model: str) -> dict[str, Any]:
    """config.json of ``model`` as a dict; EngineError if the model is missing."""
    folder = _resolve_dir(model)
    if folder is None:
        raise EngineError(_missing_model_message(model))
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read {folder / 'config.json'}: {e}") from e


def family_of_config(config: dict[str, Any]) -> str:
    """Family "v1" (DeepSeek-OCR) or "v2" (DeepSeek-OCR-2) for a config.json dict."""
    if config.get("model_type") == "deepseek_ocr2":
        return "v2"
    from .deepseek_v1 import is_v1_config  # lazily: it imports torch

    if is_v1_config(config):
        return "v1"
    if config.get("model_type") == "deepseek_vl_v2":
        raise EngineError(
            "this checkpoint is a remote-code DeepSeek release that transformers cannot load "
            f"natively; for DeepSeek-OCR-2 use {DEFAULT_MODEL!r} (the transformers conversion)"
        )
    raise EngineError(
        f"model_type {config.get('model_type')!r} is not a DeepSeek-OCR model "
        "(expected DeepSeek-OCR-2 'deepseek_ocr2' or a DeepSeek-OCR v1 checkpoint)"
    )


def model_family(model: str) -> str:
    """Family "v1" or "v2", read from ``model``'s config.json (local or cached; no network)."""
    return family_of_config(load_config(model))


# ----------------------------------------------------------------------------- helpers


def prompt_for(task: str, prompt: str | None = None) -> str:
    """The model prompt for ``task``; a custom ``prompt`` gets ``<image>`` prepended if absent."""
    if prompt:
        return prompt if "<image>" in prompt else "<image>\n" + prompt
    if task not in PROMPTS:
        raise EngineError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    return PROMPTS[task]


def _pick_device(requested: str | None) -> str:
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _pick_dtype(requested: str | None, device: str):
    import torch

    if requested is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    name = DTYPE_NAMES.get(requested.lower())
    if name is None:
        raise EngineError(f"unknown dtype {requested!r} (use bf16, fp16 or fp32)")
    return getattr(torch, name)


def _flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def row_status(tokens: list[int], eos_ids: set[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """Cut a generated row at its first EOS; returns (text tokens, hit the token limit)."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i], False
    return tokens, len(tokens) >= max_new_tokens


def strong_guard(ngram_size: int, window: int) -> tuple[int, int]:
    """The (n, window) used when retrying a truncated page: shorter n-grams, 4x the window."""
    n = max(10, (ngram_size or 30) * 2 // 3)
    return n, max(4 * (window or 90), 512)


# ----------------------------------------------------------------------------- planning


class DeepSeekPlanner:
    """Mode, token plans and batch keys from config.json alone: no weights are loaded.

    The engine plans with it, and so does the main process of a multi-GPU run (``--devices``),
    which must batch pages without holding a model.
    """

    name = "deepseek"

    def __init__(self, opts: EngineOptions, *, family: str | None = None) -> None:
        self.opts = opts
        if family is None:
            self.model: str | None = opts.model or DEFAULT_MODEL
            self.family = family_of_config(load_config(self.model))
        else:  # a model already in memory (benchmarks): the caller names its family
            self.model = opts.model or "in-memory"
            self.family = family
        self.mode: str | None = opts.mode or DEFAULT_MODE[self.family]
        try:
            self.mode_spec = get_mode(self.family, self.mode)
            check_tile_range(opts.min_tiles, opts.max_tiles)
        except ValueError as e:
            raise EngineError(str(e)) from e

    def token_plan(self, page: PageImage) -> TokenPlan:
        """Vision tokens, tiles and prompt positions of ``page`` in this mode."""
        return plan_tokens(
            self.family,
            self.mode_spec.name,
            page.width,
            page.height,
            self.opts.min_tiles,
            self.opts.max_tiles,
        )

    def plan(self, page: PageImage) -> PagePlan:
        """Batch pages by prompt length: equal keys mean equal lengths and no padding."""
        tp = self.token_plan(page)
        key: Hashable = (tp.vision_tokens, tp.positions)
        return PagePlan(batch_key=key, vision_tokens=tp.vision_tokens, tiles=tp.tiles)


def planner(opts: EngineOptions) -> DeepSeekPlanner:
    """The engine module's planner hook (see :mod:`ocrpress.devices`)."""
    return DeepSeekPlanner(opts)


# ----------------------------------------------------------------------------- engine


class DeepSeekEngine:
    """DeepSeek-OCR(-2) through transformers ``generate``, one call per batch."""

    name = "deepseek"
    #: Optional ``(pages, prompt_length) -> [LogitsProcessor]`` applied after the decoding
    #: guards: a seam for benchmarks and experiments (e.g. forcing output lengths), not a
    #: user option.
    logits_hook: Callable[[list[PageImage], int], list[Any]] | None = None
    #: (n, window) of the repetition guard while retrying truncated pages; None: opts' values.
    _guard: tuple[int, int] | None = None

    def __init__(
        self,
        opts: EngineOptions,
        *,
        components: tuple[Any, Any] | None = None,
        family: str = "v2",
    ) -> None:
        """Load ``opts.model`` (default: DeepSeek-OCR-2) or, with ``components=(model,
        processor)``, use a model already in memory (benchmarks; ``family`` names its kind and
        the model must already sit on ``opts.device`` in ``opts.dtype``)."""
        self.opts = opts
        self.planner = DeepSeekPlanner(opts, family=None if components is None else family)
        self.model: str | None = self.planner.model
        self.family = self.planner.family
        self.mode: str | None = self.planner.mode
        self.mode_spec = self.planner.mode_spec
        self.prompt = prompt_for(opts.task, opts.prompt)
        # Grounded prompts answer with <|ref|>/<|det|> blocks; others with plain text.
        self.grounded = "<|grounding|>" in self.prompt
        if opts.max_new_tokens < 1:
            raise EngineError(f"max_new_tokens must be >= 1, got {opts.max_new_tokens}")

        try:
            import torch
        except ImportError as e:  # pragma: no cover - torch is a dependency
            raise EngineError("the deepseek engine needs torch and transformers") from e
        self._torch = torch
        self.device = _pick_device(opts.device)
        self.dtype = _pick_dtype(opts.dtype, self.device)
        self.attn_implementation = "sdpa"
        if components is not None:
            self.hf_model, self.processor = components
        else:
            folder = _resolve_dir(self.model)
            assert folder is not None  # load_config succeeded
            load = self._load_v2 if self.family == "v2" else self._load_v1
            if not sys.stderr.isatty():
                # transformers' "Loading weights" bar is for terminals, not for logs.
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            self.hf_model, self.processor = load(str(folder))
        self.tokenizer = self.processor.tokenizer
        self.hf_model.eval()
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<image>")
        self.eos_ids = self._eos_ids()
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else min(self.eos_ids)
        )
        self.whitelist_ids = self._token_ids(NGRAM_WHITELIST)
        self.max_batch_size = opts.batch_size or self._auto_batch_size()
        log.info(
            "deepseek engine: model %s (%s), mode %s, device %s, dtype %s, attention %s, "
            "batch size %d",
            self.model,
            self.family,
            self.mode,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.attn_implementation,
            self.max_batch_size,
        )

    # -- loading ------------------------------------------------------------------------

    def _load_v2(self, folder: str):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        attempts: list[Any] = ["sdpa"]
        if self.device.startswith("cuda") and _flash_attn_installed():
            # Full-model flash attention is refused (SAM uses relative-position bias); the
            # per-part setting gives the decoder flash attention and keeps SDPA elsewhere.
            attempts.insert(
                0, {"text_config": "flash_attention_2", "vision_config": "sdpa", "": "sdpa"}
            )
        model = None
        for i, attn in enumerate(attempts):
            try:
                model = AutoModelForImageTextToText.from_pretrained(
                    folder,
                    dtype=self.dtype,
                    attn_implementation=attn,
                    local_files_only=True,
                )
            except (ValueError, ImportError) as e:
                if i + 1 == len(attempts):
                    raise EngineError(f"cannot load {self.model!r}: {e}") from e
                log.warning("flash attention unavailable for the decoder (%s); using SDPA", e)
                continue
            except OSError as e:
                raise EngineError(f"cannot load {self.model!r}: {e}") from e
            if isinstance(attn, dict):
                self.attn_implementation = "flash_attention_2 (text) + sdpa (vision)"
            break
        # No device_map: that would make accelerate a dependency.
        model = model.to(self.device)
        try:
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot load the processor of {self.model!r}: {e}") from e
        processor.tokenizer.padding_side = "left"
        return model, processor

    def _load_v1(self, folder: str):
        from .deepseek_v1 import V1LoadError, load_v1

        try:
            return load_v1(folder, device=self.device, dtype=self.dtype)
        except V1LoadError as e:
            raise EngineError(f"cannot load {self.model!r}: {e}") from e

    def _token_ids(self, tokens: tuple[str, ...]) -> set[int]:
        ids = set()
        unk = self.tokenizer.unk_token_id
        for t in tokens:
            i = self.tokenizer.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != unk:
                ids.add(i)
        return ids

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(self.hf_model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(gen_eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if not ids:
            raise EngineError(f"{self.model!r} defines no end-of-sequence token")
        return ids

    def _auto_batch_size(self) -> int:
        if not self.device.startswith("cuda"):
            return CPU_BATCH_SIZE
        torch = self._torch
        free, _total = torch.cuda.mem_get_info(torch.device(self.device))
        worst = max_positions(self.family, self.mode_spec.name, self.opts.max_tiles)
        decode = self._kv_bytes_per_token() * (worst + self.opts.max_new_tokens)
        # Prefill peak: SAM's SDPA path materialises a (heads, HW, HW) relative-position bias
        # per view (0.4 GB for a 1024-px view in bf16), for all views of the batch at once.
        spec = self.mode_spec
        itemsize = self.dtype.itemsize
        patches = (spec.base_size // 16) ** 2
        vision = 12 * patches * patches * itemsize
        if spec.tile_size:
            tile_patches = (spec.tile_size // 16) ** 2
            vision += self.opts.max_tiles * 12 * tile_patches * tile_patches * itemsize
        per_page = max(decode, vision) * 1.25  # allocator slack; the pipeline halves on OOM
        budget = 0.9 * free - 2 * 2**30
        return max(1, min(MAX_AUTO_BATCH, int(budget // per_page)))

    def _kv_bytes_per_token(self) -> int:
        cfg = self.hf_model.config
        text = getattr(cfg, "text_config", None) or getattr(cfg, "language_config", None) or cfg
        layers = getattr(text, "num_hidden_layers", 12)
        heads = getattr(text, "num_key_value_heads", None) or getattr(
            text, "num_attention_heads", 10
        )
        head_dim = getattr(text, "head_dim", None) or (
            getattr(text, "hidden_size", 1280) // getattr(text, "num_attention_heads", 10)
        )
        return 2 * layers * heads * head_dim * self.dtype.itemsize

    # -- protocol -----------------------------------------------------------------------

    def token_plan(self, page: PageImage) -> TokenPlan:
        """Vision tokens, tiles and prompt positions of ``page`` in this engine's mode."""
        return self.planner.token_plan(page)

    def plan(self, page: PageImage) -> PagePlan:
        """Batch pages by prompt length: equal keys mean equal lengths and no padding."""
        return self.planner.plan(page)

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        """OCR ``batch``: one ``generate`` call per prompt length (one in total when the
        pipeline batches by ``plan().batch_key``). Results come back in input order."""
        groups: dict[Hashable, list[int]] = {}
        plans = [self.token_plan(p) for p in batch]
        for i, tp in enumerate(plans):
            groups.setdefault((tp.vision_tokens, tp.positions), []).append(i)
        results: list[PageResult | None] = [None] * len(batch)
        for idx in groups.values():
            out = self._generate([batch[i] for i in idx], [plans[i] for i in idx])
            for i, r in zip(idx, out, strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Free the model (and CUDA memory)."""
        self.hf_model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    # -- generation ---------------------------------------------------------------------

    def _inputs(self, images: list, n: int):
        prompts = [self.prompt] * n
        if self.family == "v1":
            return self.processor(
                images=images,
                prompts=prompts,
                mode=self.mode_spec.name,
                min_tiles=self.opts.min_tiles,
                max_tiles=self.opts.max_tiles,
            )
        spec = self.mode_spec
        kwargs: dict[str, Any] = {"size": {"height": spec.base_size, "width": spec.base_size}}
        if spec.tile_size is None:
            # Untiled: the processor resizes the global view to tile_size when not cropping,
            # and counts tokens from size: both must be the view size.
            kwargs.update(crop_to_patches=False, tile_size=spec.base_size)
        else:
            kwargs.update(
                crop_to_patches=True,
                tile_size=spec.tile_size,
                min_patches=self.opts.min_tiles,
                max_patches=self.opts.max_tiles,
            )
        return self.processor(images=images, text=prompts, return_tensors="pt", **kwargs)

    def retry_truncated(self, batch: list[PageImage]) -> list[PageResult]:
        """Re-run pages that hit the token limit with a stronger repetition guard.

        Most truncations are loops whose period is longer than the default guard can see
        (window - n = 60 tokens, e.g. repeated table rows); a shorter n-gram over a much longer
        window catches those.
        """
        size, window = self.opts.ngram_size, self.opts.ngram_window
        strong = strong_guard(size, window)
        self._guard = strong
        try:
            results = self.run(batch)
        finally:
            self._guard = None
        for r in results:
            r.notes.append(f"repetition guard n={strong[0]}, window={strong[1]}")
        return results

    def logits_processors(self, prompt_length: int) -> list:
        """The decoding guards for a batch whose prompts are ``prompt_length`` long."""
        from .ngram import WindowedNoRepeatNGramLogitsProcessor

        size, window = self._guard or (self.opts.ngram_size, self.opts.ngram_window)
        if size <= 0 or window <= 0:
            return []
        return [
            WindowedNoRepeatNGramLogitsProcessor(
                ngram_size=size,
                window=window,
                prompt_length=prompt_length,
                whitelist_token_ids=self.whitelist_ids,
            )
        ]

    def context_limit(self) -> int | None:
        """Positions the decoder has (``max_position_embeddings``); None if unknown."""
        cfg = self.hf_model.config
        text = getattr(cfg, "text_config", None) or getattr(cfg, "language_config", None) or cfg
        limit = getattr(text, "max_position_embeddings", None)
        return int(limit) if limit else None

    def new_token_budget(self, prompt_length: int) -> int:
        """``max_new_tokens``, capped so that prompt + output fit the decoder's context
        (8,192 new tokens after a 1,121-token A4 prompt would run past its 8,192 positions)."""
        limit = self.context_limit()
        budget = self.opts.max_new_tokens
        if limit is not None:
            budget = min(budget, limit - prompt_length)
        return max(1, budget)

    def generate_ids(
        self, pages: list[PageImage], plans: list[TokenPlan] | None = None
    ) -> list[list[int]]:
        """Generated token ids per page (EOS and padding included) from one ``generate`` call.

        All pages should share a prompt length (``plan().batch_key``); otherwise the batch is
        left-padded and, in low precision, outputs may differ from one-page runs.
        """
        return self._generate_rows(pages, plans)[0]

    def _generate_rows(
        self, pages: list[PageImage], plans: list[TokenPlan] | None
    ) -> tuple[list[list[int]], int]:
        from transformers import LogitsProcessorList

        torch = self._torch
        plans = plans or [self.token_plan(p) for p in pages]
        images = [p.image if p.image.mode == "RGB" else p.image.convert("RGB") for p in pages]
        inputs = self._inputs(images, len(pages)).to(self.device, dtype=self.dtype)
        input_ids = inputs["input_ids"]
        real = (input_ids == self.image_token_id).sum(dim=1).tolist()
        for page, tp, n in zip(pages, plans, real, strict=True):
            if n != tp.positions:
                log.warning(
                    "%s page %d: processor placed %d image tokens, mode arithmetic says %d",
                    page.source,
                    page.index + 1,
                    n,
                    tp.positions,
                )
        prompt_length = input_ids.shape[1]
        processors = self.logits_processors(prompt_length)
        if self.logits_hook is not None:
            processors += self.logits_hook(pages, prompt_length)
        with torch.inference_mode():
            out = self.hf_model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.new_token_budget(prompt_length),
                logits_processor=LogitsProcessorList(processors),
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.pad_id,
            )
        return out[:, prompt_length:].tolist(), prompt_length

    def _generate(self, pages: list[PageImage], plans: list[TokenPlan]) -> list[PageResult]:
        rows, prompt_length = self._generate_rows(pages, plans)
        budget = self.new_token_budget(prompt_length)
        return [
            self._result(page, tp, row, budget)
            for page, tp, row in zip(pages, plans, rows, strict=True)
        ]

    def _result(self, page: PageImage, tp: TokenPlan, row: list[int], max_new: int) -> PageResult:
        tokens, hit_limit = row_status(row, self.eos_ids, max_new)
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        if hit_limit:
            status = "truncated"
        elif not text.strip():
            status = "empty"
        else:
            status = "ok"
        return PageResult.for_page(
            page,
            self.name,
            model=self.model,
            mode=self.mode,
            tiles=tp.tiles,
            vision_tokens=tp.vision_tokens,
            text_tokens=len(tokens),
            status=status,
            blocks=blocks_from_output(text, page.width, page.height, self.grounded),
            raw=text,
            notes=[f"stopped at the model's context ({self.context_limit()} positions)"]
            if hit_limit and max_new < self.opts.max_new_tokens
            else [],
        )
