"""DeepSeek-OCR engine on transformers: DeepSeek-OCR-2 natively, DeepSeek-OCR (v1) via
``ocrpress.engines.deepseek_v1``.

A call works in three stages that overlap:

- :meth:`DeepSeekEngine.prepare` (CPU, thread pool): image views and tiles, normalised
  tensors and prompt ids of one page, pinned when the model is on CUDA;
- refill decoding (:mod:`.refill`, the device): up to ``slots`` pages decode together and a
  page that ends gives its slot to the next prepared page;
- post-processing (CPU, the same pool): token ids to text, grounding blocks, the result.

Decoding is greedy with a windowed no-repeat-n-gram guard; a page that hits its token limit
(``max_new_tokens``, capped at the decoder's context) keeps its text and is marked
``truncated``. Greedy outputs are those of decoding each page alone (exactly so in fp32).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..backoff import BatchLimit, is_oom
from ..document import PageImage, PageResult
from ..modes import TokenPlan, max_positions
from . import EngineError, EngineOptions, PagePlan, Usage
from . import deepseek_static as static
from .deepseek_runtime import (
    auto_batch_size,
    cache_positions,
    load_v1,
    load_v2,
    pick_device,
    pick_dtype,
    prefill_budget,
    prefill_pages,
)
from .deepseek_spec import (  # noqa: F401 - re-exported: the engine module's public names
    DEFAULT_MODEL,
    DTYPE_NAMES,
    NGRAM_WHITELIST,
    PROMPTS,
    REFILL_DEPTH,
    DeepSeekPlanner,
    _resolve_dir,
    eos_ids,
    family_of_config,
    known_token_ids,
    load_config,
    model_available,
    model_family,
    planner,
    prompt_for,
    row_status,
    strong_guard,
    to_result,
)
from .deepseek_stream import Deliver, Feed, PageSource, Stop, serve
from .page_inputs import PreparedFile, make_inputs
from .refill import END, DecodeStats, Prepared, RefillDecoder, StepHook
from .refill_items import batched_mm_rows, decode_experts

log = logging.getLogger("ocrpress")

PREPARE_THREADS = 2


class DeepSeekEngine:
    """DeepSeek-OCR(-2) through transformers, with refill decoding."""

    name = "deepseek"
    #: Optional per-step score hook (see :data:`.refill.StepHook`), applied after the guards,
    #: with the running pages' keys: a seam for benchmarks (forcing output lengths).
    step_hook: Callable[[list[PageImage]], StepHook] | None = None
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
        import torch

        self._torch = torch
        self.device = pick_device(opts.device)
        self.dtype = pick_dtype(opts.dtype, self.device)
        self.attn_implementation = "sdpa"
        if components is not None:
            self.hf_model, self.processor = components
        else:
            folder = _resolve_dir(self.model)
            assert folder is not None  # load_config succeeded
            if not sys.stderr.isatty():
                # transformers' "Loading weights" bar is for terminals, not for logs.
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            load = load_v2 if self.family == "v2" else load_v1
            self.hf_model, self.processor, self.attn_implementation = load(
                str(folder), self.model, self.device, self.dtype
            )
        folder = "" if components is not None else str(_resolve_dir(self.model))
        self.inputs_recipe = self.planner.recipe(folder, str(self.dtype).removeprefix("torch."))
        self.prepared_by_workers = 0  # pages whose inputs a render worker made
        self.tokenizer = self.processor.tokenizer
        self.hf_model.eval()
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<image>")
        self.eos_ids = eos_ids(self.hf_model, self.tokenizer, self.model)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else min(self.eos_ids)
        )
        self.whitelist_ids = known_token_ids(self.tokenizer, NGRAM_WHITELIST)
        worst = max_positions(self.family, self.mode_spec.name, opts.max_tiles)
        budget = prefill_budget(self.device)
        self.prefill_pages = prefill_pages(self.mode_spec, opts.max_tiles, self.dtype, budget)
        # Cache positions the decoder keeps to (None: unbounded, on the CPU), beside one
        # prefill call; the slots are sized for typical pages within it.
        self.cache_positions = cache_positions(self.hf_model, self.device, self.dtype, budget)
        self.slots = opts.batch_size or auto_batch_size(
            self.hf_model, worst, opts, self.cache_positions
        )
        self.max_batch_size = self.slots * REFILL_DEPTH
        self.decode_stats = DecodeStats(slots=self.slots)
        self.live: RefillDecoder | None = None  # the decoder of a stream, while it runs
        # cuDNN attention in prefills (PyTorch's default); False: the decode steps' kernels.
        # A benchmark's switch until a GPU run says which is faster (bench/RESULTS.md).
        self.prefill_cudnn = True
        # Decode steps replayed as CUDA graphs (see .decode_graphs): a benchmark's switch too.
        self.decode_graphs = False
        # Each decode step's tokens read a step late (see .refill_rows.StepTokens): the same.
        self.read_late = False
        self.usage_lock = threading.Lock()
        self._slot_limit = BatchLimit()  # slots lowered after an OOM, grown back like batches
        self._pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="ocrpress-prepare")
        log.info(
            "deepseek engine: model %s (%s), mode %s, device %s, dtype %s, attention %s, "
            "%d decode slots, %d pages per call, %d per prefill, decode cache %s positions",
            self.model,
            self.family,
            self.mode,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.attn_implementation,
            self.slots,
            self.max_batch_size,
            self.prefill_pages,
            "unbounded" if self.cache_positions is None else f"{self.cache_positions:,}",
        )

    # -- protocol -----------------------------------------------------------------------

    def token_plan(self, page: PageImage) -> TokenPlan:
        """Vision tokens, tiles and prompt positions of ``page`` in its mode."""
        return self.planner.token_plan(page)

    def plan(self, page: PageImage) -> PagePlan:
        """Batch pages by prompt length: equal keys prefill together without padding."""
        return self.planner.plan(page)

    def usage(self) -> Usage:
        """Device time and decode-slot counters so far (summed into the run's stats)."""
        s = DecodeStats()
        with self.usage_lock:
            s.add(self.decode_stats)
            if self.live is not None:  # a stream decoding now
                s.add(self.live.stats)
        return Usage(
            s.device_seconds, s.step_tokens, s.slot_steps, self.prepared_by_workers, s.parked
        )

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        """OCR ``batch`` (any prompt lengths) with refill decoding; results in input order."""
        if not batch:
            return []
        capacity = self._slot_limit.cap(self.slots)
        slots = min(capacity, len(batch))
        plans = [self.token_plan(p) for p in batch]
        finished: dict[int, Future[PageResult]] = {}
        todo = iter(enumerate(batch))

        def fail(key: int, error: PageResult | BaseException) -> None:
            # A page that cannot be prepared fails the call, as any error does: the back-off
            # (or the stream that called) runs the pages again apart.
            assert isinstance(error, BaseException)
            raise error

        source = PageSource(self, lambda block: next(todo, END), fail, slots, wait=True)

        def post(key: int, tokens: list[int]) -> None:
            finished[key] = self._pool.submit(
                self._result, batch[key], plans[key], tokens, source.budgets[key]
            )

        decoder = self.decoder(slots, self.step_hook(batch) if self.step_hook else None)
        try:
            decoder.serve(source, on_done=post)
        except Exception as e:
            if is_oom(e):
                self._slot_limit.lower(max(1, slots // 2))
            raise
        finally:
            # Utilisation counts the slots the device has, not just those this call filled:
            # a short call leaves the rest idle.
            decoder.stats.slot_steps = decoder.stats.steps * capacity
            self.decode_stats.add(decoder.stats)
            for _key, fut in source.queue:  # pages prepared ahead of a failure: not needed
                fut.cancel()
        self._slot_limit.succeeded(self.slots)
        return [finished[i].result() for i in range(len(batch))]

    def stream(self, feed: Feed, deliver: Deliver, stop: Stop | None = None) -> None:
        """Decode the pages ``feed`` gives until it ends (or ``stop()``), delivering each
        page's result as it is done: one refill decode across batches
        (see :mod:`.deepseek_stream`)."""
        serve(self, feed, deliver, stop)

    def decoder(self, slots: int, step_hook: StepHook | None) -> RefillDecoder:
        """A refill decoder of ``slots`` rows with this engine's guards and limits."""
        return RefillDecoder(
            self.hf_model,
            slots=slots,
            eos_ids=self.eos_ids,
            device=self.device,
            dtype=self.dtype,
            guard=self._guard or (self.opts.ngram_size, self.opts.ngram_window),
            whitelist_ids=self.whitelist_ids,
            step_hook=step_hook,
            prefill_pages=self.prefill_pages,
            decode_experts=decode_experts(self.hf_model, self.device),
            decode_experts_rows=batched_mm_rows(self.hf_model),
            cache_positions=self.cache_budget(),
            prefill_cudnn=self.prefill_cudnn,
            graphs=self.decode_graphs,
            read_late=self.read_late,
        )

    def cache_budget(self) -> int | None:
        """The decode cache's positions, cut as the slots are after an out-of-memory error
        (the budget is an estimate from free memory at load time); None: no bound."""
        if self.cache_positions is None:
            return None
        return self.cache_positions * self._slot_limit.cap(self.slots) // self.slots

    def close(self) -> None:
        """Free the model (and CUDA memory)."""
        self._pool.shutdown(wait=True)
        self.hf_model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    # -- stages -------------------------------------------------------------------------

    def prepare(self, page: PageImage, key: int = 0) -> Prepared:
        """CPU work of one page: views, tiles, normalised pixels and prompt ids (pinned
        memory when the model is on CUDA, so the copy to the device does not block). A render
        worker may have done it already (:mod:`.page_inputs`): its file is used when it was
        made for this page's mode under this engine's recipe."""
        ref, page.prepared = page.prepared, None
        inputs = None
        if isinstance(ref, PreparedFile):
            if ref.recipe == self.inputs_recipe and ref.mode == self.planner.page_mode(page):
                try:
                    inputs = ref.load()
                    with self.usage_lock:
                        self.prepared_by_workers += 1
                except Exception as e:  # a damaged spool file: prepare it here instead
                    log.debug("cannot read the prepared inputs %s: %s", ref.path, e)
            else:
                ref.discard()
        if inputs is None:
            inputs = make_inputs(self.processor, self.inputs_recipe, page)
        ids = inputs["input_ids"]
        placed = int((ids == self.image_token_id).sum())
        tp = self.token_plan(page)
        if placed != tp.positions:
            log.warning(
                "%s page %d: processor placed %d image tokens, mode arithmetic says %d",
                page.source,
                page.index + 1,
                placed,
                tp.positions,
            )
        if self.device.startswith("cuda"):
            torch = self._torch
            inputs = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in inputs.items()}
        length = int(ids.shape[1])
        return Prepared(key, inputs, length, self.new_token_budget(length))

    def _result(self, page: PageImage, tp: TokenPlan, row: list[int], budget: int) -> PageResult:
        tokens, hit_limit = row_status(row, self.eos_ids, budget)
        at_context = hit_limit and budget < self.opts.max_new_tokens
        return to_result(
            page,
            self.name,
            model=self.model,
            mode=self.planner.page_mode(page),
            plan=tp,
            text=self.tokenizer.decode(tokens, skip_special_tokens=False),
            text_tokens=len(tokens),
            hit_limit=hit_limit,
            grounded=self.grounded,
            notes=[f"stopped at the model's context ({self.context_limit()} positions)"]
            if at_context
            else [],
        )

    # -- limits and guards --------------------------------------------------------------

    def context_limit(self) -> int | None:
        """Positions the decoder has (``max_position_embeddings``); None if unknown."""
        from .deepseek_runtime import text_config

        limit = getattr(text_config(self.hf_model), "max_position_embeddings", None)
        return int(limit) if limit else None

    def new_token_budget(self, prompt_length: int) -> int:
        """``max_new_tokens``, capped so that prompt + output fit the decoder's context
        (8,192 new tokens after a 1,121-token A4 prompt would run past its 8,192 positions)."""
        limit = self.context_limit()
        budget = self.opts.max_new_tokens
        if limit is not None:
            budget = min(budget, limit - prompt_length)
        return max(1, budget)

    def retry_truncated(self, batch: list[PageImage]) -> list[PageResult]:
        """Re-run pages that hit the token limit with a stronger repetition guard.

        Most truncations are loops whose period is longer than the default guard can see
        (window - n = 60 tokens, e.g. repeated table rows); a shorter n-gram over a much longer
        window catches those.
        """
        strong = strong_guard(self.opts.ngram_size, self.opts.ngram_window)
        self._guard = strong
        try:
            results = self.run(batch)
        finally:
            self._guard = None
        for r in results:
            r.notes.append(f"repetition guard n={strong[0]}, window={strong[1]}")
        return results

    def logits_processors(self, prompt_length: int) -> list:
        """The decoding guards of a static ``generate`` call with prompts this long."""
        return static.logits_processors(self, prompt_length)

    def generate_ids(
        self,
        pages: list[PageImage],
        plans: list[TokenPlan] | None = None,
        extra_processors: list[Any] | None = None,
    ) -> list[list[int]]:
        """Generated ids per page from one transformers ``generate`` call (a static batch:
        the reference refill decoding is tested and benchmarked against; see
        :func:`.deepseek_static.generate_ids`)."""
        return static.generate_ids(self, pages, extra_processors)
