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
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..backoff import BatchLimit, is_oom
from ..document import PageImage, PageResult
from ..modes import TokenPlan, get_mode, max_positions
from . import EngineError, EngineOptions, PagePlan, Usage
from .deepseek_runtime import (
    auto_batch_size,
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
from .refill import DecodeStats, Prepared, RefillDecoder, StepHook, decode_experts

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
        self.slots = opts.batch_size or auto_batch_size(
            self.hf_model, self.device, self.dtype, worst, opts, budget
        )
        self.max_batch_size = self.slots * REFILL_DEPTH
        self.decode_stats = DecodeStats(slots=self.slots)
        self._slot_limit = BatchLimit()  # slots lowered after an OOM, grown back like batches
        self._pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="ocrpress-prepare")
        log.info(
            "deepseek engine: model %s (%s), mode %s, device %s, dtype %s, attention %s, "
            "%d decode slots, %d pages per call, %d per prefill",
            self.model,
            self.family,
            self.mode,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.attn_implementation,
            self.slots,
            self.max_batch_size,
            self.prefill_pages,
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
        s = self.decode_stats
        return Usage(s.device_seconds, s.step_tokens, s.slot_steps)

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        """OCR ``batch`` (any prompt lengths) with refill decoding; results in input order."""
        if not batch:
            return []
        capacity = self._slot_limit.cap(self.slots)
        slots = min(capacity, len(batch))
        plans = [self.token_plan(p) for p in batch]
        budgets: dict[int, int] = {}
        finished: dict[int, Future[PageResult]] = {}

        def post(key: int, tokens: list[int]) -> None:
            finished[key] = self._pool.submit(
                self._result, batch[key], plans[key], tokens, budgets[key]
            )

        decoder = RefillDecoder(
            self.hf_model,
            slots=slots,
            eos_ids=self.eos_ids,
            device=self.device,
            dtype=self.dtype,
            guard=self._guard or (self.opts.ngram_size, self.opts.ngram_window),
            whitelist_ids=self.whitelist_ids,
            step_hook=self.step_hook(batch) if self.step_hook is not None else None,
            prefill_pages=self.prefill_pages,
            decode_experts=decode_experts(self.hf_model, self.device),
        )
        try:
            decoder.run(self._prepared(batch, slots, budgets), on_done=post)
        except Exception as e:
            if is_oom(e):
                self._slot_limit.lower(max(1, slots // 2))
            raise
        finally:
            # Utilisation counts the slots the device has, not just those this call filled:
            # a short call leaves the rest idle.
            decoder.stats.slot_steps = decoder.stats.steps * capacity
            self.decode_stats.add(decoder.stats)
        self._slot_limit.succeeded(self.slots)
        return [finished[i].result() for i in range(len(batch))]

    def close(self) -> None:
        """Free the model (and CUDA memory)."""
        self._pool.shutdown(wait=True)
        self.hf_model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    # -- stages -------------------------------------------------------------------------

    def _prepared(
        self, batch: list[PageImage], ahead: int, budgets: dict[int, int]
    ) -> Iterator[Prepared]:
        """Prepared pages in call order, prepared on the thread pool at most ``ahead`` pages
        before the decoder takes them (an A4 gundam page is ~30 MB of bf16 pixels)."""
        queue: deque[Future[Prepared]] = deque()
        todo = iter(enumerate(batch))
        while True:
            while len(queue) < ahead and (nxt := next(todo, None)) is not None:
                queue.append(self._pool.submit(self.prepare, nxt[1], nxt[0]))
            if not queue:
                return
            t0 = time.perf_counter()
            item = queue.popleft().result()
            waited = time.perf_counter() - t0
            if waited > 0.05:
                log.debug("decoder waited %.2f s for page preparation", waited)
            budgets[item.key] = item.budget
            yield item

    def prepare(self, page: PageImage, key: int = 0) -> Prepared:
        """CPU work of one page: views, tiles, normalised pixels and prompt ids (pinned
        memory when the model is on CUDA, so the copy to the device does not block)."""
        image = page.image if page.image.mode == "RGB" else page.image.convert("RGB")
        inputs = dict(self._inputs([image], 1, self.planner.page_mode(page)))
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
        torch = self._torch
        for k, v in inputs.items():
            if torch.is_tensor(v):
                if v.is_floating_point():
                    v = v.to(self.dtype)  # half the bytes to hold and copy in bf16
                inputs[k] = v.pin_memory() if self.device.startswith("cuda") else v
        length = int(ids.shape[1])
        return Prepared(key, inputs, length, self.new_token_budget(length))

    def _inputs(self, images: list, n: int, mode: str) -> Any:
        """Processor outputs in ``mode`` on the CPU (the v1 processor would move them to the
        model)."""
        prompts = [self.prompt] * n
        if self.family == "v1":
            return self.processor(
                images=images,
                prompts=prompts,
                mode=mode,
                min_tiles=self.opts.min_tiles,
                max_tiles=self.opts.max_tiles,
                on_device=False,
            )
        spec = get_mode(self.family, mode)
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

    # -- static batches (the reference the refill decoder is tested and benchmarked against)

    def generate_ids(
        self,
        pages: list[PageImage],
        plans: list[TokenPlan] | None = None,
        extra_processors: list[Any] | None = None,
    ) -> list[list[int]]:
        """Generated token ids per page (EOS and padding included) from one transformers
        ``generate`` call: a static batch that decodes until its longest page.

        All pages should share a prompt length (``plan().batch_key``); otherwise the batch is
        left-padded and, in low precision, outputs may differ from one-page runs.
        """
        from transformers import LogitsProcessorList

        images = [p.image if p.image.mode == "RGB" else p.image.convert("RGB") for p in pages]
        mode = self.planner.page_mode(pages[0])  # one batch key: one mode
        inputs = self._inputs(images, len(pages), mode).to(self.device, dtype=self.dtype)
        prompt_length = inputs["input_ids"].shape[1]
        processors = self.logits_processors(prompt_length) + list(extra_processors or [])
        with self._torch.inference_mode():
            out = self.hf_model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.new_token_budget(prompt_length),
                logits_processor=LogitsProcessorList(processors),
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.pad_id,
            )
        return out[:, prompt_length:].tolist()
