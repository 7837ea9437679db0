"""Decode steps of fixed shape, captured once and replayed as CUDA graphs.

A decode step of DeepSeek-OCR-2 is ~1,100 operators (12 layers of attention, router and
experts), each dispatched from Python: on an H100 a step took 14-16 ms at 1..16 rows
(bench/RESULTS.md, session 8), the time to launch it rather than to run it. A CUDA graph
records the step's kernels once and replays them in one launch, but it fixes every shape and
address it saw. So a graphed step:

- runs the rows padded to a bucket (:func:`bucket`: at most the buffer's rows); rows past
  the running ones attend to one column and their tokens are thrown away;
- attends over every column of the cache's buffer, with a 4D mask that holds the window
  (transformers passes 4D masks through as they are: no mask building, whose ``all()`` would
  wait for the device);
- writes its keys at a column held in a device tensor (:meth:`.kv_slab.SlabLayer.fix`).

Graphs are kept per (rows bucket, experts setting) and dropped when the cache gets a new
buffer (when the window or the rows outgrow it, or stale columns pass a quarter of it; a
window moved within its buffer keeps them): their addresses are that buffer's. The
first step of a key runs eagerly on a side stream, which is also the warm-up a capture needs,
and its graph serves from the next step on.

On the CPU the same fixed-shape step runs without capture: tests check its tokens against
pages decoded alone and that its forward never synchronises with the host (which a capture
cannot do). Whether graphs pay on a GPU is for the benchmark to say (``--cuda-graphs``);
the engine's default is off until it does.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import torch

from .deepseek_runtime import text_config
from .refill_items import DecodeStats, step_attention
from .refill_rows import Running

log = logging.getLogger("ocrpress")


@dataclass
class _Inputs:
    """One bucket's fixed inputs (and, once captured, its graph and its output)."""

    ids: torch.Tensor  # (rows, 1)
    positions: torch.Tensor  # (rows, 1)
    mask: torch.Tensor  # (rows, 1, 1, columns) bool: True where a row attends
    column: torch.Tensor  # (1,) the column this step writes
    graph: Any = None
    logits: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def empty(cls, rows: int, columns: int, device: torch.device) -> _Inputs:
        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(
            zeros(rows, 1), zeros(rows, 1), zeros(rows, 1, 1, columns, dtype=torch.bool), zeros(1)
        )

    def load(self, rows: Running, lo: int, hi: int) -> None:
        """This step's inputs: each running row's token, position and window (whose last
        column, ``hi``, the step writes)."""
        assert rows.last is not None and rows.positions is not None and rows.mask is not None
        n = len(rows)
        self.ids[:n, 0].copy_(rows.last)
        self.positions[:n, 0].copy_(rows.positions)
        self.mask.zero_()
        self.mask[:n, 0, 0, lo : hi + 1].copy_(rows.mask)
        # A row that attends to nothing gives NaN; padding rows attend to column 0 instead.
        self.mask[n:, 0, 0, 0] = True
        self.column.fill_(hi)


def bucket(n: int, capacity: int) -> int:
    """Rows a fixed-shape step of ``n`` running rows computes, at most the buffer's: the
    next power of two up to an eighth of the buffer, then the next multiple of that eighth.
    Padding rows cost attention and experts like running ones, and a running set refilled in
    groups of a quarter of the slots spends most steps between three quarters and full: steps
    of an eighth waste at most ~12% there, powers of two up to ~25%; each size a buffer meets
    is one more graph to capture."""
    step = max(1, capacity // 8)
    if n <= step:
        return min(capacity, 1 << max(0, n - 1).bit_length())
    return min(capacity, -(-n // step) * step)


#: Why graphs are off for this process (a capture failed), or None. Once set no decoder
#: captures again: a failed capture can leave CUDA's allocator or the graphs made before it
#: unsafe to use, so the engine goes on with eager steps rather than try again each batch.
_capture_failure: str | None = None


def capture_failure() -> str | None:
    """The error of the capture that turned graphs off in this process, if one did."""
    return _capture_failure


def fixed_steps_supported(model: Any) -> bool:
    """Whether the decode steps' attention takes a 4D mask as it is: SDPA and eager do, and
    the steps of a decoder loaded with a flash attention run on SDPA
    (:func:`.refill_items.step_attention`); others (flex, paged) are not tried."""
    switch = step_attention(model)
    steps = switch[0] if switch else getattr(text_config(model), "_attn_implementation", None)
    return steps in ("sdpa", "eager")


class FixedStep:
    """Decode steps over the cache's whole buffer with fixed-shape inputs; on CUDA (when
    ``capture``), each (rows bucket, experts setting) captured as a graph and replayed.
    Called inside the decoder's switch of the step's attention (``RefillDecoder._step``):
    a decoder loaded with a flash attention gets its SDPA there."""

    def __init__(
        self, model: Any, device: str, cache_arg: str, capture: bool, stats: DecodeStats
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.cache_arg = cache_arg
        self.capture = capture and self.device.type == "cuda"
        self.stats = stats  # the decoder's: counts the graphs captured
        self._buffers: tuple[int, ...] = ()  # the cache's buffers the graphs were made for
        self._inputs: dict[tuple[int, Any], _Inputs] = {}
        self._pool: Any = None  # one memory pool for the graphs alive: they never run at once
        self._stream: Any = None  # the warm-ups' and captures' stream (one, for the pool)

    def reset(self) -> None:
        """Let the graphs, their inputs and their memory go (a new buffer, or decoding ended)."""
        self._inputs.clear()
        self._buffers = ()
        self._pool = None  # a pool whose graphs are all gone is not to be handed out again

    def __call__(self, rows: Running, setting: Any) -> torch.Tensor:
        """Logits (rows, vocab) of one decode step of ``rows``, whose mask already holds the
        step's column; ``setting``: the experts setting (part of a graph's key)."""
        layers = rows.cache.layers
        first = layers[0]
        buffers = tuple(layer.buffer for layer in layers)
        if buffers != self._buffers:  # a new buffer: the graphs point into the old one
            self.reset()
            self._buffers = buffers
        n = len(rows)
        size = bucket(n, first.capacity)
        key = (size, setting)
        inputs = self._inputs.get(key)
        if inputs is None:
            inputs = self._inputs[key] = _Inputs.empty(size, first.columns, self.device)
        inputs.load(rows, first.lo, first.hi)
        for layer in layers:
            layer.fix(size, inputs.column)
        try:
            if inputs.graph is not None:
                inputs.graph.replay()
                assert inputs.logits is not None
                logits = inputs.logits
            elif self.capture and _capture_failure is None:
                logits = self._capture(inputs, rows.cache)
            else:
                logits = self._forward(inputs, rows.cache)
        except BaseException:
            for layer in layers:
                layer.unfix()
            raise
        for layer in layers:
            layer.advance()
        return logits[:n, -1, :]

    def _forward(self, inputs: _Inputs, cache: Any) -> torch.Tensor:
        out = self.model(
            input_ids=inputs.ids,
            attention_mask=inputs.mask,
            position_ids=inputs.positions,
            use_cache=True,
            **{self.cache_arg: cache},
        )
        return out.logits

    def _capture(self, inputs: _Inputs, cache: Any) -> torch.Tensor:
        """This step run eagerly on the capture stream (the warm-up a capture needs; the
        step's writes are the same whether run once or again), then captured for the next
        ones. ``torch.cuda.graph`` would also empty the allocator's caches at every capture
        (the prefill's memory, the pinned pages): ``capture_begin`` does not."""
        global _capture_failure
        with torch.cuda.device(self.device):
            main = torch.cuda.current_stream()
            stream = self._stream = self._stream or torch.cuda.Stream()
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                logits = self._forward(inputs, cache)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            pool = () if self._pool is None else (self._pool,)
            try:
                with torch.cuda.stream(stream):
                    # thread_local: the engine's preparation threads pin host memory
                    # meanwhile, which a process-wide capture would count as their error.
                    graph.capture_begin(*pool, capture_error_mode="thread_local")
                    try:
                        inputs.logits = self._forward(inputs, cache)
                    except BaseException:
                        # The forward's error names what could not be captured; ending
                        # the broken capture raises one of its own that would hide it.
                        with suppress(Exception):
                            graph.capture_end()
                        raise
                    graph.capture_end()
            except Exception as exc:  # any failure: this step's eager result stands
                _capture_failure = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "decode steps go on without CUDA graphs (for this process): capture failed: %s",
                    _capture_failure,
                )
                self.reset()
                return logits
            finally:
                main.wait_stream(stream)
        self._pool = self._pool or graph.pool()
        inputs.graph = graph
        self.stats.captures += 1
        return logits
