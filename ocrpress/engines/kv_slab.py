"""A key/value cache layer for the refill decoder that a decode step writes into in place.

transformers' ``DynamicLayer`` appends a step's keys with ``torch.cat``: every decode step
copies the whole cache, twice the bytes that attention itself reads. With 96 pages of ~2,000
positions (61 KB a position in DeepSeek-OCR-2) that is ~24 GB of copying a step, several ms
on an H100. A :class:`SlabLayer` keeps its rows in a buffer with spare columns and rows:

- a decode step writes its one column (``update``) and attention reads a view;
- finished rows leave by moving the last rows into their places (``keep``): the copying is
  that of the rows moved, not of the cache; columns no row uses any more are dropped by
  moving the window's left edge;
- new rows, right-aligned with the running ones, are written into free rows (``add``).

When the window reaches the buffer's last column, it moves back to the first column in place
if rows that left freed enough columns on its left (:meth:`SlabLayer.recycle`: one copy of the
live cache, no allocation, and the buffer keeps its addresses, which CUDA graphs captured on
it point to); otherwise, or when rows outgrow it, the buffer is reallocated (one copy). Spare
columns are a quarter of the window, from 64 to 128: a fixed-shape step reads every column,
spare ones too, so a smaller spare costs less a step and more buffers (bench/cache_schedule.py
counts both over a long job). Its size, rows x
columns, is the refill decoder's to bound (:meth:`SlabLayer.regrow`, the ``rows`` of
:meth:`SlabLayer.add`; :func:`columns_for` says the columns a window takes). Unused rows and
columns hold zeros or old keys, never uninitialised memory: padding is masked, and a masked
NaN would still poison attention.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

MIN_SPARE_COLUMNS = 64
MAX_SPARE_COLUMNS = 128

#: A buffer that fixed-shape steps read whole is kept (:meth:`SlabLayer.recycle`) while its
#: columns are at most this share of the window more than a new buffer's would be: each
#: column kept costs every step, each new buffer costs the graphs' captures again
#: (bench/cache_schedule.py counts both).
RECYCLE_EXTRA = 0.125


_BUFFERS = itertools.count(1)  # a buffer's number: addresses can come back, numbers cannot


def columns_for(width: int) -> int:
    """Columns of a buffer made for a window of ``width``: the window and its spare."""
    return width + max(MIN_SPARE_COLUMNS, min(MAX_SPARE_COLUMNS, width // 4))


def swap_remove_order(rows: int, keep: list[int]) -> list[int]:
    """The rows that stay, as old indices in their new places: rows that stay where they are
    keep their place, and the last ones fill the places of rows that left (so only those
    move). ``keep`` is sorted."""
    m = len(keep)
    kept = set(keep)
    holes = [p for p in range(m) if p not in kept]
    tails = [j for j in keep if j >= m]
    order = list(range(m))
    for hole, tail in zip(holes, tails, strict=True):
        order[hole] = tail
    return order


def device_indices(values: list[int], device: torch.device) -> torch.Tensor:
    """``values`` as a long tensor on ``device`` without making the host wait: on CUDA the
    copy goes through pinned memory, since one from pageable memory waits until the device
    has run everything queued before it (a decode step queued ahead, tokens read late)."""
    t = torch.tensor(values, dtype=torch.long)
    return device_copy(t.pin_memory() if device.type == "cuda" else t, device)


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in host memory, made without the host waiting: on CUDA into pinned
    memory, queued on the current stream (a copy to pageable memory waits for everything
    queued before it, a decode step read late among it). Only the device reads it back
    (:func:`device_copy`), queued after this copy on the same stream, so nothing waits for
    it. On the CPU a copy too: the buffer's rows move when rows leave."""
    if t.is_cuda:
        # PyTorch's host allocator records the copy's stream for the pinned block, so the
        # block is not handed out again before the copy is done.
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return host.copy_(t, non_blocking=True)
    return t.clone()


def device_copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor (pinned, for CUDA: :func:`host_copy`'s, :func:`device_indices`') on
    ``device`` without the host waiting: pinned memory lets the copy be queued, and PyTorch's
    host allocator records the copy's stream, so the block is not reused before it is done.
    Already on ``device`` (the CPU): ``t`` itself."""
    if t.device == device:
        return t
    return t.to(device, non_blocking=device.type == "cuda")


Moves = tuple[torch.Tensor, torch.Tensor]  # (destination rows, source rows) on the device


def keep_indices(order: list[int], device: torch.device) -> tuple[torch.Tensor, Moves | None]:
    """``order`` on the device, and (destination rows, source rows) of the rows that move
    under it (None: none), in one copy (on CUDA each pinned block is one more page-locked
    allocation until the allocator has cached it)."""
    moves = [(p, j) for p, j in enumerate(order) if p != j]
    m, k = len(order), len(moves)
    packed = device_indices(order + [p for p, _ in moves] + [j for _, j in moves], device)
    return packed[:m], ((packed[m : m + k], packed[m + k :]) if k else None)


class SlabLayer(DynamicLayer):
    """One layer's keys and values (rows, heads, columns, head dim) in a preallocated buffer;
    ``keys``/``values`` are views of its live window ``[lo, hi)`` of rows ``[0, n)``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: int) -> None:
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self.n = 0
        self.lo = self.hi = 0
        self.buffer = 0  # the number of the current buffer (see _BUFFERS)
        self.shifts = 0  # windows moved to this buffer's first column (recycle)
        self._fixed: tuple[int, torch.Tensor] | None = None
        self._k = self._v = keys.new_zeros(0)
        self._reallocate(keys.shape[2], max(rows, keys.shape[0]), like=keys)
        self.lo = 0  # the first rows' keys make the window
        self._write_rows(keys, values)

    # ---------------------------------------------------------------- views

    def _views(self) -> None:
        self.keys = self._k[: self.n, :, self.lo : self.hi]
        self.values = self._v[: self.n, :, self.lo : self.hi]

    @property
    def width(self) -> int:
        return self.hi - self.lo

    @property
    def full(self) -> bool:
        """No spare column left: the next decode step moves the window or reallocates."""
        return self.hi >= self._k.shape[2]

    @property
    def capacity(self) -> int:
        """Rows the buffer holds, running or not."""
        return self._k.shape[0]

    @property
    def columns(self) -> int:
        """Columns the buffer holds (the window and its spare)."""
        return self._k.shape[2]

    @property
    def allocated(self) -> int:
        """Positions (rows x columns) the buffer holds, live or not."""
        return self._k.shape[0] * self._k.shape[2]

    def row(self, i: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``i``'s keys and values from window column ``start`` on, copied to the host
        without waiting (:func:`host_copy`)."""
        cols = slice(start, None)
        return host_copy(self.keys[i : i + 1, :, cols]), host_copy(self.values[i : i + 1, :, cols])

    # ---------------------------------------------------------------- transformers' API

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the step's columns in place (reallocating only when the buffer is full); in a
        fixed-shape step, write them at the fixed column and give the whole buffer."""
        if self._fixed is not None:
            rows, column = self._fixed
            keys, values = self._k[:rows], self._v[:rows]
            keys.index_copy_(2, column, key_states)
            values.index_copy_(2, column, value_states)
            return keys, values
        new = key_states.shape[2]
        if self.hi + new > self._k.shape[2] and not self.recycle(self.capacity, extra=new):
            self._reallocate(self.width, self._k.shape[0], extra=new)
        self._k[: self.n, :, self.hi : self.hi + new].copy_(key_states)
        self._v[: self.n, :, self.hi : self.hi + new].copy_(value_states)
        self.hi += new
        self._views()
        return self.keys, self.values

    # ---------------------------------------------------------------- fixed-shape steps

    def fix(self, rows: int, column: torch.Tensor) -> None:
        """Make the next ``update`` one of a fixed-shape step (a CUDA graph's): it writes its
        column at ``column`` (a one-element device tensor, so that a replayed graph reads it)
        in rows ``[0, rows)``, and attention reads every column of those rows (the caller's
        mask covers the window). :meth:`advance` ends it."""
        # Checked here, on the host: on the device an index past the buffer is a fatal error.
        assert self.hi < self._k.shape[2] and 0 < self.n <= rows <= self._k.shape[0]
        self._fixed = (rows, column)

    def advance(self) -> None:
        """After a fixed-shape step that wrote column ``hi``: the window takes it in."""
        self._fixed = None
        self.hi += 1
        self._views()

    def unfix(self) -> None:
        """After a fixed-shape step that failed: the window stays as it was."""
        self._fixed = None

    # ---------------------------------------------------------------- refill's operations

    def keep(self, order: list[int], start: int, moves: Moves | None) -> None:
        """Keep rows ``order`` (old indices, in their new places; see
        :func:`swap_remove_order`) and drop the window's first ``start`` columns; ``moves``
        is the moves of :func:`keep_indices` of ``order`` (made once for all layers)."""
        if moves is not None:
            dst, src = moves
            for buf in (self._k, self._v):
                window = buf[:, :, self.lo : self.hi]
                window.index_copy_(0, dst, window.index_select(0, src))
        self.n = len(order)
        self.lo += start
        self._views()

    def add(self, keys: torch.Tensor, values: torch.Tensor, rows: int = 0) -> None:
        """Join rows whose keys end where the running rows' do; the shorter side is left-padded
        (the caller masks the padding). A new buffer, if one is needed, has room for ``rows``
        rows (the decoder's slots, or fewer within its memory: more rows do not mean a new
        buffer at every join)."""
        need = max(self.width, keys.shape[2])
        total = self.n + keys.shape[0]
        if total > self._k.shape[0] or self.hi - need < 0:
            self._reallocate(need, max(total, rows))
        self.lo = min(self.lo, self.hi - need)
        self._write_rows(keys, values)

    def recycle(self, rows: int, extra: int = 0, read_whole: bool = False) -> bool:
        """Make spare columns in this buffer instead of a new one, if it holds ``rows`` rows
        and has columns for the window and a full spare (at least ``extra``): the window
        moves to the first column, in place. No memory is allocated, and the buffer keeps its
        addresses, so CUDA graphs captured on it stay valid. ``read_whole``: steps read every
        column (fixed-shape ones), so a buffer much wider than a new one would be
        (:data:`RECYCLE_EXTRA`) is not kept. False, and nothing done, if not kept."""
        width = self.width
        want = max(columns_for(width), width + extra)
        wide = read_whole and self.columns > want + int(width * RECYCLE_EXTRA)
        if rows != self.capacity or self.columns < want or wide:
            return False
        self._shift_left()
        return True

    def regrow(self, rows: int) -> None:
        """A new buffer with spare columns for the window and room for ``rows`` rows (at least
        those running): the decoder's move before a step that would find the buffer full, so
        that it, not the step, decides the rows the new buffer holds."""
        self._reallocate(self.width, max(rows, self.n))

    # Rows and columns are the refill decoder's to change (keep, add): transformers' own
    # reshaping calls would leave the buffer and its views out of step.
    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("SlabLayer: rows and columns change through keep/add")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("SlabLayer: rows and columns change through keep/add")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("SlabLayer: rows and columns change through keep/add")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("SlabLayer: rows and columns change through keep/add")

    # ---------------------------------------------------------------- buffer

    def _write_rows(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        g, width = keys.shape[0], keys.shape[2]
        rows = slice(self.n, self.n + g)
        # Columns left of the new rows' keys hold another row's old keys or zeros: masked.
        self._k[rows, :, self.hi - width : self.hi].copy_(keys)
        self._v[rows, :, self.hi - width : self.hi].copy_(values)
        self.n += g
        self._views()

    def _shift_left(self) -> None:
        """Move the window to column 0 of its buffer, in chunks of at most ``lo`` columns,
        left to right: no chunk's source overlaps its destination, and a chunk writes only
        where an earlier chunk has already been read (one stream runs them in order)."""
        shift, width = self.lo, self.width
        if shift == 0:
            return
        for buf in (self._k, self._v):
            live = buf[: self.n]
            for a in range(0, width, shift):
                b = min(a + shift, width)
                live[:, :, a:b].copy_(live[:, :, shift + a : shift + b])
        self.lo, self.hi = 0, width
        self.shifts += 1
        self._views()

    def _reallocate(
        self, width: int, rows: int, like: torch.Tensor | None = None, extra: int = 0
    ) -> None:
        """A new buffer of ``rows`` rows holding the live window right-aligned at column
        ``width`` (room on its left for wider rows to join), with spare columns on its right
        (at least ``extra``)."""
        src = self._k if like is None else like
        spare = max(columns_for(width) - width, extra)
        shape = (rows, src.shape[1], width + spare, src.shape[3])
        k = src.new_zeros(shape)
        v = src.new_zeros(shape)
        live = self.width
        if self.n and live:
            k[: self.n, :, width - live : width].copy_(self.keys)
            v[: self.n, :, width - live : width].copy_(self.values)
        self._k, self._v = k, v
        self.buffer = next(_BUFFERS)
        self.shifts = 0
        self.lo, self.hi = width - live, width
        self._views()
