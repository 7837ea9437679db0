"""The refill decoder's in-place key/value cache layer against a plain reference: random joins,
steps and departures give the same keys and values wherever the mask lets attention look, and
a step does not copy the cache."""

from __future__ import annotations

import random

import torch

from ocrpress.engines.kv_slab import (
    MAX_SPARE_COLUMNS,
    SlabLayer,
    keep_indices,
    swap_remove_order,
)

CPU = torch.device("cpu")

H, D = 2, 3


class Reference:
    """The same rows kept the obvious way: dense tensors, left padding, torch.cat."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys.clone()
        self.mask = torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool)

    def step(self, col: torch.Tensor) -> None:
        self.keys = torch.cat([self.keys, col], dim=2)
        self.mask = torch.cat([self.mask, torch.ones(len(self.mask), 1, dtype=torch.bool)], 1)

    def add(self, keys: torch.Tensor) -> None:
        old, new = self.keys.shape[2], keys.shape[2]
        width = max(old, new)

        def pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        self.keys = torch.cat([pad(self.keys, width - old, 2), pad(keys, width - new, 2)])
        mask = torch.ones(keys.shape[0], new, dtype=torch.bool)
        self.mask = torch.cat([pad(self.mask, width - old, 1), pad(mask, width - new, 1)])

    def keep(self, order: list[int]) -> int:
        idx = torch.tensor(order)
        self.keys = self.keys.index_select(0, idx)
        self.mask = self.mask.index_select(0, idx)
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self.keys, self.mask = self.keys[:, :, start:], self.mask[:, start:]
        return start


def same_where_visible(layer: SlabLayer, ref: Reference) -> None:
    assert layer.keys.shape == ref.keys.shape
    visible = ref.mask[:, None, :, None].expand_as(ref.keys)
    assert torch.equal(layer.keys[visible], ref.keys[visible])
    assert torch.equal(layer.values[visible], -ref.keys[visible])  # values: the keys negated
    assert torch.isfinite(layer.keys).all() and torch.isfinite(layer.values).all()


def rows_of(n: int, width: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, H, width, D, generator=gen) + 1.0  # never zero: padding stands out


def test_random_joins_steps_and_departures_match_the_reference() -> None:
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    for _trial in range(20):
        first = rows_of(rng.randint(1, 4), rng.randint(1, 40), gen)
        layer = SlabLayer(first, -first, rows=rng.randint(1, 6))
        ref = Reference(first)
        for _op in range(60):
            roll = rng.random()
            n = layer.keys.shape[0]
            if roll < 0.6:
                col = rows_of(n, 1, gen)
                layer.update(col, -col)
                ref.step(col)
            elif roll < 0.65:  # as the decoder does before a step that finds no spare
                layer.recycle(layer.capacity, read_whole=rng.random() < 0.5)
            elif roll < 0.8:
                new = rows_of(rng.randint(1, 3), rng.randint(1, 80), gen)
                layer.add(new, -new, rows=rng.randint(0, 8))
                ref.add(new)
            elif n > 1:
                keep = sorted(rng.sample(range(n), rng.randint(1, n - 1)))
                order = swap_remove_order(n, keep)
                assert sorted(order) == keep
                start = ref.keep(order)
                layer.keep(order, start, keep_indices(order, CPU)[1])
            same_where_visible(layer, ref)


def test_a_step_writes_in_place_until_the_spare_columns_run_out() -> None:
    """200 steps on a 100-column cache: a handful of reallocations, not one copy a step; the
    spare columns stay within their bounds."""
    gen = torch.Generator().manual_seed(1)
    first = rows_of(4, 100, gen)
    layer = SlabLayer(first, -first, rows=4)
    buffers = {layer._k.data_ptr()}
    for _ in range(200):
        col = rows_of(4, 1, gen)
        layer.update(col, -col)
        buffers.add(layer._k.data_ptr())
    assert layer.width == 300
    wide = SlabLayer(rows_of(1, 4000, gen), rows_of(1, 4000, gen), rows=1)
    assert wide._k.shape[2] - wide.width == MAX_SPARE_COLUMNS
    assert len(buffers) <= 4  # 64 spare columns at this width: 164, 228, 292 columns
    assert layer.get_seq_length() == 300


def test_departures_move_only_the_last_rows() -> None:
    gen = torch.Generator().manual_seed(2)
    first = rows_of(6, 10, gen)
    layer = SlabLayer(first, -first, rows=6)
    before = layer._k.data_ptr()
    order = swap_remove_order(6, [0, 2, 3, 5])
    assert order == [0, 5, 2, 3]  # row 5 fills the place of row 1; rows 0, 2, 3 stay
    idx, moves = keep_indices(order, CPU)
    assert idx.tolist() == order and moves is not None
    assert (moves[0].tolist(), moves[1].tolist()) == ([1], [5])
    layer.keep(order, 0, moves)
    assert layer._k.data_ptr() == before
    assert torch.equal(layer.keys, first[order])
    assert swap_remove_order(3, [0, 1, 2]) == [0, 1, 2]
    assert keep_indices([0, 1, 2], CPU)[1] is None
    assert swap_remove_order(4, [3]) == [3]


def test_joins_within_the_slots_reuse_the_buffer() -> None:
    """``add`` sized for the decoder's slots: rows joining later (each narrower than the
    window) are written into free rows of the same buffer."""
    gen = torch.Generator().manual_seed(3)
    first = rows_of(1, 50, gen)
    layer = SlabLayer(first, -first, rows=1)
    new = rows_of(1, 30, gen)
    layer.add(new, -new, rows=6)  # a second row: the buffer grows, to the six slots
    buffer = layer._k.data_ptr()
    for _ in range(4):
        new = rows_of(1, 40, gen)
        layer.add(new, -new, rows=6)
    assert layer._k.data_ptr() == buffer and layer.keys.shape[0] == 6
    assert torch.equal(layer.keys[-1, :, -40:], new[0])


def test_a_full_buffer_of_the_right_size_moves_its_window_in_place() -> None:
    """``recycle``: once rows that left free enough columns on the window's left, the window
    moves to column 0 of the same buffer (same memory, same buffer number: graphs captured
    on it stay valid) and the keys stay where the mask lets attention look. Refused, with
    nothing moved, for other rows, too few columns, or (for steps that read every column) a
    buffer much wider than a new one."""
    gen = torch.Generator().manual_seed(4)
    first = rows_of(4, 1000, gen)
    layer = SlabLayer(first, -first, rows=4)
    ref = Reference(first)
    while not layer.full:
        col = rows_of(4, 1, gen)
        layer.update(col, -col)
        ref.step(col)
    order = swap_remove_order(4, [1, 2, 3])
    assert not layer.recycle(layer.capacity)  # 1,128 columns: no room left of the window
    # The row that leaves is the oldest: its columns go, the others' keys stay.
    ref.mask[1:, :200] = False
    start = ref.keep(order)
    layer.keep(order, start, keep_indices(order, CPU)[1])
    assert layer.lo == 200 and layer.full
    ptr, number, width = layer._k.data_ptr(), layer.buffer, layer.width
    assert not layer.recycle(layer.capacity + 1)  # other rows: a new buffer
    assert not layer.recycle(layer.capacity, extra=201)  # a spare this buffer cannot give
    assert layer.lo == 200
    assert layer.recycle(layer.capacity, read_whole=True)
    assert (layer._k.data_ptr(), layer.buffer, layer.lo, layer.width) == (ptr, number, 0, width)
    same_where_visible(layer, ref)
    col = rows_of(3, 1, gen)
    layer.update(col, -col)  # written in place, in the same buffer
    ref.step(col)
    assert layer._k.data_ptr() == ptr
    same_where_visible(layer, ref)
    # A window that shrank far below its buffer: steps that read every column want a new one.
    order = swap_remove_order(3, [2])
    ref.mask[:, :-100] = False
    start = ref.keep(order)
    layer.keep(order, start, keep_indices(order, CPU)[1])
    assert not layer.recycle(layer.capacity, read_whole=True)
    assert layer.recycle(layer.capacity)  # eager steps read the window only: kept
    same_where_visible(layer, ref)


def test_one_row_of_one_head_moves_in_chunks_that_never_overlap() -> None:
    """With one row of one head the window's columns are one dense block of memory, where
    torch refuses a copy whose source overlaps its destination (on CUDA such a copy would
    race): the move is made of chunks of at most ``lo`` columns, and every key arrives."""
    first = torch.arange(1000.0).reshape(1, 1, 1000, 1) + 1.0
    layer = SlabLayer(first, -first, rows=1)
    while not layer.full:
        col = torch.full((1, 1, 1, 1), float(layer.hi + 1))
        layer.update(col, -col)
    layer.keep([0], 200, None)  # the first 200 columns go: the window is 200..1128
    expected = layer.keys.clone()
    assert layer.recycle(1, read_whole=True) and layer.lo == 0
    assert torch.equal(layer.keys, expected) and torch.equal(layer.values, -expected)
    assert torch.equal(layer.keys[0, 0, :, 0], torch.arange(201.0, 1129.0))
