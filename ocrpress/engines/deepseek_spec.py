"""DeepSeek-OCR family, torch-free: model lookup, prompts, the planner and the page-status
rule shared by the transformers runtime (``deepseek.py``) and the vLLM engine.

Nothing here imports torch, so the main process of a multi-GPU run (``--devices``) and Ray's
driver can plan batches and fingerprint outputs without it.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from ..document import PageImage, PageResult
from ..grounding import blocks_from_output
from ..modes import (
    DEFAULT_MODE,
    TokenPlan,
    check_tile_range,
    get_mode,
    plan_tokens,
)
from . import TASKS, EngineError, EngineOptions, PagePlan
from .deepseek_v1_config import is_v1_config
from .page_inputs import InputsRecipe

DEFAULT_MODEL = "deepseek-community/DeepSeek-OCR-2"

#: Pages per engine call = decode slots x REFILL_DEPTH: a call's last pages still leave slots
#: idle while they finish, so a call carries several slots' worth of pages to refill from.
REFILL_DEPTH = 4

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


def dtype_name(requested: str) -> str:
    """The torch dtype name of a ``--dtype`` spelling; EngineError for an unknown one."""
    name = DTYPE_NAMES.get(requested.lower())
    if name is None:
        raise EngineError(f"unknown dtype {requested!r} (use bf16, fp16 or fp32)")
    return name


def known_token_ids(tokenizer: Any, tokens: tuple[str, ...]) -> set[int]:
    """Ids of those ``tokens`` the tokenizer has (unknown ones map to nothing, not to unk)."""
    unk = tokenizer.unk_token_id
    ids = (tokenizer.convert_tokens_to_ids(t) for t in tokens)
    return {i for i in ids if isinstance(i, int) and i != unk}


def eos_ids(hf_model: Any, tokenizer: Any, name: str | None) -> set[int]:
    """End-of-sequence ids: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    gen_eos = getattr(hf_model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise EngineError(f"{name!r} defines no end-of-sequence token")
    return ids


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
        self.auto = opts.auto_mode
        try:
            # auto: each page brings its own mode (chosen in the render workers); the
            # costliest, gundam, bounds the context and stands in for a page without one.
            self.mode_spec = get_mode(self.family, "gundam" if self.auto else self.mode)
            check_tile_range(opts.min_tiles, opts.max_tiles)
        except ValueError as e:
            raise EngineError(str(e)) from e

    def recipe(self, folder: str, dtype: str) -> InputsRecipe:
        """The inputs recipe of an engine reading its processor from ``folder`` and running
        in ``dtype`` (a torch dtype's name): what its pages' model inputs depend on."""
        return InputsRecipe(
            family=self.family,
            folder=folder,
            prompt=prompt_for(self.opts.task, self.opts.prompt),
            min_tiles=self.opts.min_tiles,
            max_tiles=self.opts.max_tiles,
            dtype=dtype,
            mode=self.mode_spec.name,
            auto=self.auto,
        )

    def load_recipe(self) -> InputsRecipe | None:
        """The recipe the engine loading this planner's model will have, known before its
        weights load (render workers prepare the first pages by it meanwhile); None when
        the model is not a folder on this machine."""
        from .deepseek_runtime import pick_device, pick_dtype  # imports torch

        folder = _resolve_dir(self.model) if self.model else None
        if folder is None:
            return None
        dtype = pick_dtype(self.opts.dtype, pick_device(self.opts.device))
        return self.recipe(str(folder), str(dtype).removeprefix("torch."))

    def batch_hint(self) -> int | None:
        """The engine's pages a call (its ``max_batch_size``) if known before its weights
        load: with ``--batch-size`` or on the CPU; None on a GPU, whose free memory decides."""
        from .deepseek_runtime import CPU_BATCH_SIZE, pick_device  # imports torch

        slots = self.opts.batch_size
        if not slots and not pick_device(self.opts.device).startswith("cuda"):
            slots = CPU_BATCH_SIZE
        return slots * REFILL_DEPTH if slots else None

    def page_mode(self, page: PageImage) -> str:
        """The mode ``page`` is read in: its own under ``--mode auto``, else the engine's."""
        return (page.mode if self.auto else None) or self.mode_spec.name

    def token_plan(self, page: PageImage) -> TokenPlan:
        """Vision tokens, tiles and prompt positions of ``page`` in its mode."""
        return plan_tokens(
            self.family,
            self.page_mode(page),
            page.width,
            page.height,
            self.opts.min_tiles,
            self.opts.max_tiles,
        )

    def plan(self, page: PageImage) -> PagePlan:
        """Batch pages by mode and prompt length: equal keys mean equal lengths, no padding."""
        tp = self.token_plan(page)
        key: Hashable = (self.page_mode(page), tp.vision_tokens, tp.positions)
        return PagePlan(batch_key=key, vision_tokens=tp.vision_tokens, tiles=tp.tiles)


def planner(opts: EngineOptions) -> DeepSeekPlanner:
    """The engine module's planner hook (see :mod:`ocrpress.devices`)."""
    return DeepSeekPlanner(opts)


# ----------------------------------------------------------------------------- results


def page_status(text: str, hit_limit: bool) -> str:
    """A page that hit its token limit is ``truncated`` (its text kept); no text: ``empty``."""
    if hit_limit:
        return "truncated"
    return "ok" if text.strip() else "empty"


def planned_result(page: PageImage, engine: str, plan: TokenPlan, **fields: Any) -> PageResult:
    """A result for ``page`` with ``plan``'s tiles and vision tokens; other fields as given."""
    return PageResult.for_page(
        page, engine, tiles=plan.tiles, vision_tokens=plan.vision_tokens, **fields
    )


def to_result(
    page: PageImage,
    engine: str,
    *,
    model: str | None,
    mode: str | None,
    plan: TokenPlan,
    text: str,
    text_tokens: int,
    hit_limit: bool,
    grounded: bool,
    notes: list[str] | None = None,
) -> PageResult:
    """The PageResult of one decoded page (blocks parsed from grounded output)."""
    return planned_result(
        page,
        engine,
        plan,
        model=model,
        mode=mode,
        text_tokens=text_tokens,
        status=page_status(text, hit_limit),
        blocks=blocks_from_output(text, page.width, page.height, grounded),
        raw=text,
        notes=list(notes or []),
    )
