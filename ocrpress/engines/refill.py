"""Refill decoding: a running set of up to N pages; when one ends its slot takes the next page.

Static batches decode until their longest page: with outputs of 300..1,500 tokens about a
third of the decode slots go to pages that already finished, and one page looping to the limit
holds its whole batch. Here a finished page (EOS, its token budget, or the context cap) leaves
the running set at once, and waiting pages are prefilled (pages of equal prompt length
together, as one batch: the shape grouping still pays for the prefill) and joined to the
running decode. Pages join in groups of at least a quarter of the slots (fewer only when the
input runs out): a prefill call has a large fixed cost (about 0.5 s on an H100 in gundam mode,
against about 0.27 s a page more), and it stalls every running row, so refilling one page at
a time cost more than the idle slots it saved. A prefill call takes at most ``prefill_pages``
pages: the vision stack's memory grows with the pages prefilled at once, the cache's only with
the pages running.

How rows of different lengths share one decode step: each row keeps its own positions (its
keys were rotated at the positions it had when decoded alone) and the cache is left-padded to
a common length with masked columns. Padding keys are masked out exactly, so greedy outputs
are those of decoding each page alone (token for token in fp32; tested). Finished rows are
dropped from the cache, and columns that only padding uses any more are cut off. The cache is
a :class:`.kv_slab.SlabLayer` per layer: a decode step writes its column in place instead of
copying the whole cache, and a finished row's place goes to the last row.

The MoE experts run as ``grouped_mm`` in the prefill (thousands of tokens: one kernel over all
experts) and, on an accelerator, as ``batched_mm`` in decode steps of few rows (each token picks
its experts' weights), as transformers' own ``generate`` switches them. Unlike ``generate``,
steps of more rows than ``decode_experts_rows`` stay on ``grouped_mm``: ``batched_mm`` copies
each (row, expert) pair's weights (~40 MB a row in DeepSeek-OCR-2, one layer at a time), which
costs more than ``grouped_mm``'s reading every expert once when the pairs are more than a few
times the experts (:func:`.refill_items.batched_mm_rows`). Decode steps keep off cuDNN's
attention on CUDA (:func:`.refill_items.decode_attention`): it builds a plan for each new
shape, and a decode step's keys have a new one every step.

Works with transformers' ``DynamicCache`` (``cache.layers[i].keys/values``) and either name of
the cache argument (``cache`` in transformers >= 5.24, ``past_key_values`` before).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from .decode_graphs import FixedStep, fixed_steps_supported
from .ngram import WindowedNoRepeatNGramLogitsProcessor
from .refill_capacity import Capacity
from .refill_items import (
    END,
    DecodeStats,
    ExpertsPhase,
    Poll,
    Prepared,
    StepHook,
    attention_as,
    collate,
    decode_attention,
    step_attention,
)
from .refill_rows import CacheBudget, Parked, Running, StepTokens

log = logging.getLogger("ocrpress")


class RefillDecoder:
    """Greedy decoding of a stream of prepared pages with up to ``slots`` rows running."""

    def __init__(
        self,
        model: Any,
        *,
        slots: int,
        eos_ids: set[int],
        device: str,
        dtype: torch.dtype,
        guard: tuple[int, int] | None,
        whitelist_ids: Iterable[int] = (),
        step_hook: StepHook | None = None,
        prefill_pages: int | None = None,
        decode_experts: dict[str, Any] | None = None,
        decode_experts_rows: int | None = None,
        cache_positions: int | None = None,
        prefill_cudnn: bool = True,
        graphs: bool = False,
        read_late: bool = False,
    ) -> None:
        self.model = model
        self.experts = ExpertsPhase(model, decode_experts, decode_experts_rows)
        self.capacity = Capacity(slots, cache_positions)
        self.prefill_pages = max(1, prefill_pages or self.slots)
        self._holder: Any = None  # the last transformers cache object, to hold rejoining rows
        self._parked_keys: set[int] = set()  # pages parked at least once
        self.device = device
        self._torch_device = torch.device(device)
        self.dtype = dtype
        self.eos_ids = set(eos_ids)
        self.step_hook = step_hook
        self.guard = (
            WindowedNoRepeatNGramLogitsProcessor(
                ngram_size=guard[0],
                window=guard[1],
                prompt_length=0,
                whitelist_token_ids=whitelist_ids,
            )
            if guard and guard[0] > 0 and guard[1] > 0
            else None
        )
        self.window = guard[1] if self.guard and guard else 1
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.attention = decode_attention  # (device) -> context of a decode step's kernels
        # (decode steps' attention, the decoder's own) where they differ: see step_attention.
        self.step_attention = step_attention(model)
        # Prefills on PyTorch's default kernels (cuDNN's on an H100), or on the decode steps'.
        # "Default" leaves the process-wide switch alone: while another decoder in this
        # process runs a decode step, a prefill runs without cuDNN too.
        self.prefill_cudnn = prefill_cudnn
        self.stats = DecodeStats(slots=self.slots)
        # Fixed-shape decode steps, replayed as CUDA graphs on CUDA (see .decode_graphs).
        self.fixed = None
        if graphs and fixed_steps_supported(model):
            self.fixed = FixedStep(model, device, self.cache_arg, capture=True, stats=self.stats)
        elif graphs:
            log.info("decode steps run without CUDA graphs: their attention is not SDPA")
        # Read each step's tokens a step late (see StepTokens): the step held for reading.
        self.read_late = read_late
        self._pending: StepTokens | None = None

    # ---------------------------------------------------------------- public

    @property
    def slots(self) -> int:
        return self.capacity.slots

    @property
    def budget(self) -> CacheBudget:
        return self.capacity.budget

    def resize(self, slots: int, cache_positions: int | None) -> None:
        """Change the rows and the cache's budget from the next admission or buffer on
        (running rows stay)."""
        self.capacity.resize(slots, cache_positions)

    def run(
        self, items: Iterable[Prepared], on_done: Callable[[int, list[int]], None] | None = None
    ) -> dict[int, list[int]]:
        """Generated tokens per page key (EOS included when emitted). ``on_done(key, tokens)``
        is called as each page finishes, so post-processing can overlap decoding."""
        source = iter(items)
        return self.serve(lambda block: next(source, END), on_done)

    def serve(
        self,
        poll: Poll,
        on_done: Callable[[int, list[int]], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[int, list[int]]:
        """:meth:`run` over pages that arrive while others decode: ``poll(block)`` gives the
        next page, None when none is ready yet (only if ``block`` is false: there are rows to
        go on decoding meanwhile), or :data:`END`. Once ``stop()`` is true it returns at the
        next step, leaving running pages unfinished."""
        pending: deque[Prepared] = deque()
        parked: deque[Parked] = deque()
        rows = Running()
        done: dict[int, list[int]] = {}
        exhausted = False
        with torch.inference_mode(), self.experts.restoring(), self._releasing(rows):
            while stop is None or not stop():
                if self._rejoin(rows, parked):
                    continue
                free = 0 if parked else self._room(rows)
                while not exhausted and len(pending) < free:
                    nxt = poll(not rows.keys and not pending)
                    if nxt is END:
                        exhausted = True
                    elif nxt is None:
                        break
                    else:
                        pending.append(nxt)
                if pending and not parked:
                    free = self._room(rows, max(it.prompt_length for it in pending))
                # Wait for a group of free slots while there are rows to keep decoding.
                group = self.capacity.group(rows.width)
                group = min(group, len(pending)) if exhausted else group
                if pending and not parked and (free >= group or not rows.keys):
                    self._admit(rows, [pending.popleft() for _ in range(min(free, len(pending)))])
                    self._retire(rows, done, on_done)
                    continue
                if not rows.keys:
                    if exhausted and not parked:
                        break
                    continue  # nothing running: the next poll blocks, or parked rows rejoin
                self._step(rows, parked)
                self._retire(rows, done, on_done)
        return done

    def _rejoin(self, rows: Running, parked: deque[Parked]) -> bool:
        """Parked rows rejoin before new pages (no prefill, and they are older), each while it
        fits at the width it brings; False if none could."""
        rejoined = False
        while parked and self._room(rows, width := parked[0].mask.shape[1]):
            rows.unpark(parked.popleft(), self._holder, self.device, self._rows(rows, width))
            rejoined = True
        return rejoined

    def _room(self, rows: Running, width: int = 0) -> int:
        """Rows that may join now, rows of up to ``width`` columns among them."""
        return self.capacity.room(len(rows), max(rows.width, width))

    def _rows(self, rows: Running, width: int = 0) -> int:
        """Rows a new cache buffer makes room for."""
        return self.capacity.buffer_rows(max(rows.width, width))

    # ---------------------------------------------------------------- cleanup

    @contextmanager
    def _releasing(self, rows: Running) -> Iterator[None]:
        """On the way out (stopped, failed or done), let the cache's buffers go even if the
        decoder object lives on."""
        try:
            yield
        finally:
            rows.drop([], self._torch_device)
            self._holder = None
            self._pending = None  # a step of rows that ended: its tokens are not wanted
            if self.fixed is not None:
                self.fixed.reset()

    # ---------------------------------------------------------------- prefill and join

    def _admit(self, rows: Running, items: list[Prepared]) -> None:
        groups: dict[int, list[Prepared]] = {}
        for it in items:
            groups.setdefault(it.prompt_length, []).append(it)
        cap = self.prefill_pages
        for group in groups.values():
            for i in range(0, len(group), cap):
                self._prefill(rows, group[i : i + cap])

    def _prefill(self, rows: Running, group: list[Prepared]) -> None:
        self.experts.prefill()
        t0 = time.perf_counter()
        inputs = collate(group, self.device, self.dtype)
        with nullcontext() if self.prefill_cudnn else self.attention(self.device):
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        logits = out.logits[:, -1, :].float()
        del out
        n, length = len(group), group[0].prompt_length
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(n, length, dtype=torch.long, device=self.device)
        positions = torch.full((n,), length, dtype=torch.long, device=self.device)
        history = self._fresh_history(n)
        keys = [it.key for it in group]
        first = self._choose(logits, history, keys, torch.zeros(n, dtype=torch.long))
        history = torch.cat([history[:, 1:], first[:, None]], dim=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        self._holder = cache
        rows.join(cache, kv, mask.long(), positions, history, first, self._rows(rows, length))
        del kv
        if rows.cache is not cache:
            cache.layers = []  # its keys are in the running cache now: let the copies go
        rows.keys += keys
        rows.budgets += [it.budget for it in group]
        rows.tokens += [[t] for t in first.tolist()]  # synchronises: counts as device time
        self.stats.prefills += 1
        self.stats.device_seconds += time.perf_counter() - t0

    def _fresh_history(self, n: int) -> torch.Tensor:
        # Distinct negative fillers per column: no n-gram holding one can equal the prefix.
        fill = -1 - torch.arange(self.window, device=self.device)
        return fill.unsqueeze(0).repeat(n, 1)

    # ---------------------------------------------------------------- decode

    def _choose(
        self,
        scores: torch.Tensor,
        history: torch.Tensor,
        keys: list[int],
        counts: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.guard is not None:
            scores = self.guard(history, scores)
        if self.step_hook is not None and counts is not None:
            scores = self.step_hook(keys, counts, scores)
        return scores.argmax(dim=-1)

    def _make_room(self, rows: Running, parked: deque[Parked]) -> None:
        """Before a step: a new buffer if it needs one (see :meth:`Running.make_room`), the
        shortest rows parked in host memory if the running ones no longer fit the budget."""
        gone = rows.make_room(
            self.budget, lambda: self._rows(rows), self.fixed is not None, self._torch_device
        )
        if gone:
            parked.extend(gone)
            self._parked_keys.update(row.key for row in gone)
            self.stats.parked = len(self._parked_keys)  # pages, not times parked
            log.debug(
                "decode cache full at %d columns: %d pages wait in host memory",
                rows.width,
                len(parked),
            )

    def _step(self, rows: Running, parked: deque[Parked]) -> None:
        t0 = time.perf_counter()
        self._make_room(rows, parked)
        # Rows grow only through a prefill (which runs grouped_mm anyway) or parked rows
        # rejoining, so the setting seldom switches.
        self.experts.step(len(rows.keys))
        assert rows.positions is not None and rows.last is not None
        rows.grow()
        with self.attention(self.device), attention_as(self.model, self.step_attention):
            if self.fixed is not None:
                logits = self.fixed(rows, self.experts.decoding).float()
            else:
                out = self.model(
                    input_ids=rows.last[:, None],
                    attention_mask=rows.mask,
                    position_ids=rows.positions[:, None],
                    use_cache=True,
                    **{self.cache_arg: rows.cache},
                )
                rows.cache = getattr(out, "cache", None) or out.past_key_values
                logits = out.logits[:, -1, :].float()
                del out
        counts = self._counts(rows) if self.step_hook else None
        nxt = self._choose(logits, rows.history, rows.keys, counts)
        assert rows.history is not None
        rows.history = torch.cat([rows.history[:, 1:], nxt[:, None]], dim=1)
        rows.positions = rows.positions + 1
        rows.last = nxt
        held = list(zip(rows.tokens, rows.budgets, strict=True))
        step: StepTokens | None = StepTokens(nxt, held)
        if self.read_late:  # this step is queued: now read the one before it
            step, self._pending = self._pending, StepTokens.start(nxt, held)
        if step is not None:
            self.stats.step_tokens += step.deliver(self.eos_ids)
        self.stats.steps += 1
        self.stats.slot_steps += self.slots
        self.stats.device_seconds += time.perf_counter() - t0

    def _counts(self, rows: Running) -> torch.Tensor:
        """Tokens each row has made, its token still on the way from the last step included."""
        late = self._pending.lists() if self._pending is not None else set()
        return torch.tensor([len(t) + (id(t) in late) for t in rows.tokens])

    def _retire(
        self,
        rows: Running,
        done: dict[int, list[int]],
        on_done: Callable[[int, list[int]], None] | None,
    ) -> None:
        """Drop rows that ended (EOS, budget) from the running set and the cache."""
        eos = self.eos_ids
        keep = []
        for i, (key, toks, budget) in enumerate(
            zip(rows.keys, rows.tokens, rows.budgets, strict=True)
        ):
            if toks[-1] in eos or len(toks) >= budget:
                done[key] = toks
                if on_done is not None:
                    on_done(key, toks)
            else:
                keep.append(i)
        rows.drop(keep, self._torch_device)
