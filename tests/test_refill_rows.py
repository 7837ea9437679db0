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
