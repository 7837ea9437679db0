"""The refill decoder's running set (per-row state and the cache) and the moves that change
which rows run: join, drop, and park in host memory when the cache's memory runs short.

Why parking: the cache is one buffer of rows x columns, padded to the longest running row, so
one page looping to the model's context makes every row that long. Sizing the decode slots for
that worst case (8,192 positions a page) leaves most of the GPU's memory unused on real pages
(~2,000 positions in gundam mode at ~900 tokens). With a :class:`CacheBudget` the decoder runs
as many rows as the memory holds at the width they have *now*; when the window grows past it,
the shortest rows move their keys and values to host memory (:meth:`Running.park`) and rejoin,
exactly where they stopped, once there is room: the kept keys are the same numbers, so a
parked page's tokens are those it gets decoded alone (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .kv_slab import SlabLayer, columns_for, device_copy, keep_indices, swap_remove_order

#: Rows join only while the cache stays within this share of its budget; rows are parked only
#: past the whole budget, so a row that joined has room to grow before anyone is parked.
ADMIT_SHARE = 0.9


@dataclass(frozen=True)
class CacheBudget:
    """Positions (rows x columns; every layer alike) the cache's buffers may hold; ``None``:
    no bound (on the CPU, and when the engine cannot tell)."""

    positions: int | None = None

    def rows_for(self, width: int, admitting: bool = False) -> int | None:
        """Rows a buffer for a window of ``width`` may hold (None: no bound); ``admitting``
        leaves the headroom rows joining must leave for those running to grow."""
        if self.positions is None:
            return None
        share = ADMIT_SHARE if admitting else 1.0
        return int(self.positions * share) // columns_for(max(1, width))


@dataclass
class StepTokens:
    """A decode step's tokens on their way to the host, to be read a step late: the next
    step is queued on the device before the host waits for this one, so the device does not
    sit idle while the host reads tokens, retires rows and launches the next step. Each
    row's list and budget are held as they were at the step; a list that has ended (EOS, or
    its budget) takes no more tokens, so a row that ended is retired a step late and the
    token its extra step made is dropped."""

    tokens: torch.Tensor  # (rows,) on the device
    rows: list[tuple[list[int], int]]  # (token list, budget) of each row at the step
    host: torch.Tensor | None = None  # pinned copy (CUDA)
    ready: Any = None  # CUDA event: the copy is done

    @classmethod
    def start(cls, tokens: torch.Tensor, rows: list[tuple[list[int], int]]) -> StepTokens:
        """Begin the copy to the host without waiting for it."""
        if not tokens.is_cuda:
            return cls(tokens, rows)
        # On the tokens' device: the copy runs on its stream, and an event recorded on
        # another device's stream (a device thread's default is cuda:0) would be done at once.
        with torch.cuda.device(tokens.device):
            host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            host.copy_(tokens, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(tokens.device))
        return cls(tokens, rows, host, ready)

    def lists(self) -> set[int]:
        """The ids of the token lists this step has a token for."""
        return {id(toks) for toks, _ in self.rows}

    def deliver(self, eos: set[int]) -> int:
        """Append each row's token (waiting for the copy) unless its list has ended; the
        tokens appended."""
        if self.ready is not None:
            self.ready.synchronize()
        values = (self.host if self.host is not None else self.tokens).tolist()
        added = 0
        for (toks, budget), t in zip(self.rows, values, strict=True):
            if toks[-1] not in eos and len(toks) < budget:
                toks.append(t)
                added += 1
        return added


@dataclass
class Parked:
    """A row waiting in host memory: everything it needs to go on decoding."""

    key: int
    tokens: list[int]
    budget: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (1, heads, columns, dim), host
    mask: torch.Tensor  # (1, columns)
    position: torch.Tensor  # (1,)
    history: torch.Tensor  # (1, window)
    last: torch.Tensor  # (1,)


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@dataclass
class Running:
    """The running set: one entry per row of the cache."""

    keys: list[int] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    positions: torch.Tensor | None = None  # (rows,) next position id
    mask: torch.Tensor | None = None  # (rows, cache length): 0 for padding
    history: torch.Tensor | None = None  # (rows, window) last tokens, for the n-gram guard
    cache: Any = None
    last: torch.Tensor | None = None  # (rows,) token to feed next
    # Per row, the columns from its first own column to the window's right end: the mask's
    # shape kept on the host, so that rows leaving or parked read no device value (each such
    # read waits for the device to finish the steps queued ahead). Left of its span a row's
    # mask is 0; the widest span is the window.
    spans: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def width(self) -> int:
        """The cache's columns (0 with no rows)."""
        return 0 if self.mask is None else self.mask.shape[1]

    def join(
        self,
        holder: Any,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        mask: torch.Tensor,
        positions: torch.Tensor,
        history: torch.Tensor,
        last: torch.Tensor,
        capacity: int,
    ) -> None:
        """Add rows whose per-layer keys and values are ``kv``, right-aligned with the running
        ones (the shorter side left-padded and masked). ``holder``: a transformers cache
        object to hold the layers if no row runs; ``capacity``: rows a new buffer makes room
        for. The caller appends keys, tokens and budgets."""
        self.spans += [mask.shape[1]] * mask.shape[0]
        if self.cache is None:
            holder.layers = [SlabLayer(k, v, capacity) for k, v in kv]
            self.cache, self.mask, self.positions = holder, mask, positions
            self.history, self.last = history, last
            return
        assert self.mask is not None and self.positions is not None
        assert self.history is not None and self.last is not None
        old, new = self.mask.shape[1], mask.shape[1]
        width = max(old, new)
        for mine, (k, v) in zip(self.cache.layers, kv, strict=True):
            mine.add(k, v, rows=capacity)
        self.mask = torch.cat(
            [_pad_left(self.mask, width - old, 1), _pad_left(mask, width - new, 1)]
        )
        assert self.cache.layers[0].width == self.mask.shape[1]
        self.positions = torch.cat([self.positions, positions])
        self.history = torch.cat([self.history, history])
        self.last = torch.cat([self.last, last])

    def grow(self) -> None:
        """Before a decode step: every row attends to the column the step writes."""
        assert self.mask is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        self.spans = [s + 1 for s in self.spans]

    def drop(self, keep: list[int], device: torch.device) -> None:
        """Keep rows ``keep`` (sorted) only; columns no kept row uses are cut off."""
        if len(keep) == len(self.keys):
            return
        if not keep:
            if self.cache is not None:
                self.cache.layers = []  # the holder may be reused: let the buffers go now
            self.__dict__.update(Running().__dict__)
            return
        # The last rows take the places of those that left: only they move in the cache.
        order = swap_remove_order(len(self.keys), keep)
        idx, moves = keep_indices(order, device)
        self.keys = [self.keys[i] for i in order]
        self.tokens = [self.tokens[i] for i in order]
        self.budgets = [self.budgets[i] for i in order]
        self.spans = [self.spans[i] for i in order]
        assert self.mask is not None and self.positions is not None
        assert self.history is not None and self.last is not None
        # Columns only dropped rows used: cut them off.
        start = self.width - max(self.spans)
        self.mask = self.mask.index_select(0, idx)[:, start:]
        for layer in self.cache.layers:
            layer.keep(order, start, moves)
        assert self.cache.layers[0].width == self.mask.shape[1]
        self.positions = self.positions.index_select(0, idx)
        self.history = self.history.index_select(0, idx)
        self.last = self.last.index_select(0, idx)

    def make_room(
        self,
        budget: CacheBudget,
        capacity: Callable[[], int],
        compact: bool,
        device: torch.device,
    ) -> list[Parked]:
        """Before a step: spare columns if the buffer has none left (the window moved within
        it, or a new buffer), or, when ``compact``, a smaller buffer if the columns left of
        the window, which rows that left used, pass a quarter of it (a fixed-shape step
        reads every column). Within ``budget``: if the running rows no longer fit at their
        width, the shortest are parked (and returned). ``capacity()``: the rows the buffer
        makes room for (a buffer of other rows is not kept), asked after any parking.
        Unbounded and not ``compact``, nothing is done: the step itself makes room, keeping
        the rows it has."""
        first = self.cache.layers[0]
        stale = compact and first.lo > first.width // 4
        if not (first.full or stale) or (budget.positions is None and not compact):
            return []
        gone: list[Parked] = []
        fit = budget.rows_for(first.width)
        if fit is not None and len(self) > max(1, fit):
            gone = self.park(self.shortest(len(self) - max(1, fit)), device)
        rows = capacity()
        # A full buffer of the right size makes room in place (its graphs stay valid: whether
        # it is still the right size is recycle's to say); one that is not full but has stale
        # columns is made smaller.
        for layer in self.cache.layers:  # every layer has the same shape: the same choice
            if not (layer.full and layer.recycle(rows, read_whole=compact)):
                layer.regrow(rows)
        return gone

    def shortest(self, count: int) -> list[int]:
        """The ``count`` rows with the fewest positions (the cheapest to move)."""
        lengths = self.spans  # a row's positions and its span grow together
        return sorted(sorted(range(len(lengths)), key=lengths.__getitem__)[:count])

    def park(self, which: list[int], device: torch.device) -> list[Parked]:
        """Move rows ``which`` (sorted) to host memory and out of the running set."""
        assert self.mask is not None and self.positions is not None
        assert self.history is not None and self.last is not None
        parked = []
        for i in which:
            start = self.width - self.spans[i]  # the row's first column (left of it: padding)
            parked.append(
                Parked(
                    key=self.keys[i],
                    tokens=self.tokens[i],
                    budget=self.budgets[i],
                    kv=[layer.row(i, start) for layer in self.cache.layers],
                    # Copies: a view would keep the running set's whole tensors alive.
                    mask=self.mask[i : i + 1, start:].clone(),
                    position=self.positions[i : i + 1].clone(),
                    history=self.history[i : i + 1].clone(),
                    last=self.last[i : i + 1].clone(),
                )
            )
        gone = set(which)
        self.drop([i for i in range(len(self.keys)) if i not in gone], device)
        return parked

    def unpark(self, row: Parked, holder: Any, device: str, capacity: int) -> None:
        """Rejoin a parked row where it stopped."""
        where = torch.device(device)
        kv = [(device_copy(k, where), device_copy(v, where)) for k, v in row.kv]
        self.join(holder, kv, row.mask, row.position, row.history, row.last, capacity)
        self.keys.append(row.key)
        self.tokens.append(row.tokens)
        self.budgets.append(row.budget)
