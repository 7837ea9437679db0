"""The refill decoder's running set on its own: rows parked in host memory come back with the
keys, values, mask and state they left with, whichever row of the cache they were."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from ocrpress.engines.kv_slab import columns_for
from ocrpress.engines.refill_rows import ADMIT_SHARE, CacheBudget, Running

CPU = torch.device("cpu")
LAYERS, H, D = 2, 2, 3


def join(rows: Running, first_key: int, n: int, width: int, gen: torch.Generator) -> list:
    """Join ``n`` rows of random keys (values: the keys negated), ``width`` columns each."""
    kv = []
    for _ in range(LAYERS):
        k = torch.randn(n, H, width, D, generator=gen)
        kv.append((k, -k))
    keys = list(range(first_key, first_key + n))
    rows.join(
        DynamicCache(),
        kv,
        torch.ones(n, width, dtype=torch.long),
        torch.full((n,), width),
        torch.tensor(keys)[:, None].repeat(1, 4),  # history: the row's key, to tell rows apart
        torch.tensor(keys),
        capacity=8,
    )
    rows.keys += keys
    rows.tokens += [[k] for k in keys]
    rows.budgets += [100 + k for k in keys]
    return kv


def row_state(rows: Running, key: int) -> tuple:
    """A row's visible keys and values per layer, and its state."""
    assert rows.mask is not None and rows.positions is not None
    assert rows.history is not None and rows.last is not None
    i = rows.keys.index(key)
    cols = rows.mask[i].bool()
    kv = [(layer.keys[i][:, cols], layer.values[i][:, cols]) for layer in rows.cache.layers]
    return (
        kv,
        rows.tokens[i],
        rows.budgets[i],
        int(rows.positions[i]),
        rows.history[i].tolist(),
        int(rows.last[i]),
    )


def same(a: tuple, b: tuple) -> bool:
    kv_a, *rest_a = a
    kv_b, *rest_b = b
    tensors = all(
        torch.equal(ka, kb) and torch.equal(va, vb)
        for (ka, va), (kb, vb) in zip(kv_a, kv_b, strict=True)
    )
    return tensors and rest_a == rest_b


def test_a_parked_row_comes_back_as_it_left_from_any_place() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = Running()
    join(rows, 0, 3, 7, gen)
    join(rows, 3, 2, 4, gen)  # narrower rows: left-padded
    before = {k: row_state(rows, k) for k in rows.keys}
    # Park a first row and a narrow one: rows behind them move into their places.
    parked = rows.park([0, 3], CPU)
    assert [p.key for p in parked] == [0, 3] and len(rows) == 3
    assert all(p.kv[0][0].device == CPU for p in parked)
    for k in rows.keys:
        assert same(row_state(rows, k), before[k])
    # Departures meanwhile (rows moving in the buffer) do not touch what was parked.
    rows.drop([1], CPU)
    for row in parked:
        rows.unpark(row, DynamicCache(), "cpu", capacity=8)
    for k in (0, 3):
        assert same(row_state(rows, k), before[k])
    # Into an empty running set too.
    rows.drop([], CPU)
    assert rows.cache is None
    again = Running()
    join(again, 9, 1, 5, gen)
    (last,) = again.park([0], CPU)
    assert again.cache is None
    holder = DynamicCache()
    again.unpark(last, holder, "cpu", capacity=2)
    assert again.cache is holder and again.keys == [9] and again.width == 5


def test_the_budget_counts_rows_of_the_columns_a_window_takes() -> None:
    assert CacheBudget().rows_for(1000) is None
    budget = CacheBudget(10 * columns_for(2000))
    assert budget.rows_for(2000) == 10
    assert budget.rows_for(2000, admitting=True) == int(10 * columns_for(2000) * ADMIT_SHARE) // (
        columns_for(2000)
    )
    assert budget.rows_for(8192) < budget.rows_for(2000, admitting=True) < 10


def step(rows: Running, gen: torch.Generator) -> None:
    """One decode step's bookkeeping: every row attends to a new column of random keys."""
    rows.grow()
    n = len(rows)
    for layer in rows.cache.layers:
        col = torch.randn(n, H, 1, D, generator=gen)
        layer.update(col, -col)


def test_a_full_buffer_makes_room_in_place_for_fixed_shape_steps() -> None:
    """Before a fixed-shape step (which reads every column), a full buffer whose window has
    room on its left and is at most an eighth wider than a new buffer's moves its window in
    place (the same buffer: its graphs stay), even with more than a quarter of it stale; a
    buffer not full but with stale columns is made smaller."""
    gen = torch.Generator().manual_seed(9)
    rows = Running()
    join(rows, 0, 1, 100, gen)  # 164 columns: 100 and a spare of 64
    join(rows, 1, 1, 30, gen)
    first = rows.cache.layers[0]
    while not first.full:
        step(rows, gen)
    before = row_state(rows, 1)
    rows.drop([1], CPU)  # the old row leaves: 70 of the 164 columns are stale
    assert (first.lo, first.width, first.columns) == (70, 94, 164)
    numbers = [layer.buffer for layer in rows.cache.layers]
    assert rows.make_room(CacheBudget(), lambda: 8, True, CPU) == []
    assert [layer.buffer for layer in rows.cache.layers] == numbers
    assert all(layer.lo == 0 for layer in rows.cache.layers)
    assert same(row_state(rows, 1), before)
    step(rows, gen)
    # Not full, but stale past a quarter of the window: a new, smaller buffer.
    join(rows, 2, 1, 20, gen)
    for _ in range(20):
        step(rows, gen)
    rows.drop([1], CPU)
    assert not first.full and first.lo > first.width // 4
    kept = row_state(rows, 2)
    rows.make_room(CacheBudget(), lambda: 8, True, CPU)
    first = rows.cache.layers[0]
    assert first.buffer != numbers[0] and first.lo == 0 and first.columns < 164
    assert same(row_state(rows, 2), kept)
