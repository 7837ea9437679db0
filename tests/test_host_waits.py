"""Where the refill decoder makes the host wait for the device, outside the model's own
forward: once a step for its tokens and once a prefill for its first ones, and nowhere else
(rows leaving, the cache's window cut, rows parked). On a GPU each other wait would stall a
step queued ahead (tokens read a step late) until the host launched the next one.

Run on the CPU, where nothing waits: a spy sees the operators that would (``nonzero``,
``item``, copies to the host) and every ``tolist`` with the function that asked for it."""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from test_decode_graphs import SyncSpy
from test_deepseek import SMALL_PAGE, make_engine, page
from test_refill import prepared_with
from test_refill_budget import LAYERS
from test_refill_budget import decoder as echo_decoder
from test_refill_budget import page as echo_page

from ocrpress.engines import kv_slab, refill, refill_rows
from ocrpress.engines.kv_slab import SlabLayer
from ocrpress.engines.refill import RefillDecoder
from ocrpress.engines.refill_rows import Running


@contextmanager
def host_reads(model: Any) -> Iterator[tuple[SyncSpy, Counter[str]]]:
    """(the spy, ``tolist`` calls by the function that made them) while the decoder runs,
    the model's forward left out (its own waits are transformers')."""
    spy = SyncSpy()
    spy.on = True
    calls: Counter[str] = Counter()
    tolist = torch.Tensor.tolist
    forward = model.forward
    collate = refill.collate

    def counted(self: torch.Tensor) -> Any:
        if spy.on:
            frame = sys._getframe(1)
            while frame.f_code.co_name.startswith("<"):  # a comprehension: its function's
                frame = frame.f_back
            calls[frame.f_code.co_name] += 1
        return tolist(self)

    def unwatched(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            spy.on = False
            try:
                return fn(*args, **kwargs)
            finally:
                spy.on = True

        return call

    model.forward = unwatched(forward)
    # A prefill's inputs go the other way, host to device (without blocking on CUDA: pinned
    # pages), which the CPU cannot tell from a copy to the host.
    refill.collate = unwatched(collate)
    torch.Tensor.tolist = counted  # type: ignore[method-assign]
    try:
        with spy:
            yield spy, calls
    finally:
        torch.Tensor.tolist = tolist  # type: ignore[method-assign]
        refill.collate = collate
        del model.forward


@contextmanager
def departures() -> Iterator[list[tuple[int, int]]]:
    """(rows moved into the places of rows that left, window columns cut) per departure and
    cache layer."""
    seen: list[tuple[int, int]] = []
    original = SlabLayer.keep

    def spy(self: SlabLayer, order: list[int], start: int, moves: Any) -> None:
        seen.append((0 if moves is None else len(moves[0]), start))
        return original(self, order, start, moves)

    SlabLayer.keep = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        SlabLayer.keep = original  # type: ignore[method-assign]


@pytest.mark.parametrize("graphs", [False, True])
def test_the_host_waits_once_a_step_and_once_a_prefill(tiny_v2_model: Path, graphs: bool) -> None:
    """Pages of mixed sizes and budgets on three slots, with the n-gram guard and tokens
    read a step late: rows leave from the middle (the last rows move into their places) and
    the window is cut; the only host reads are the steps' tokens and the prefills' first."""
    eng = make_engine(tiny_v2_model, mode="gundam", max_tiles=2, max_new_tokens=60)
    sizes = [SMALL_PAGE, (1000, 700), (700, 1000), SMALL_PAGE, (1000, 700), SMALL_PAGE]
    budgets = [60, 12, 35, 50, 8, 25]
    prepared = prepared_with(eng, [page(i, s) for i, s in enumerate(sizes)], budgets)
    decoder = RefillDecoder(
        eng.hf_model,
        slots=3,
        eos_ids=eng.eos_ids,
        device="cpu",
        dtype=torch.float32,
        guard=(4, 20),
        graphs=graphs,
        read_late=True,
    )
    with departures() as gone, host_reads(eng.hf_model) as (spy, calls):
        tokens = decoder.run(prepared)
    assert len(tokens) == len(prepared)
    assert any(moved for moved, _ in gone), "rows should leave from the middle of the set"
    assert any(cut for _, cut in gone), "the window should lose columns no row uses"
    assert spy.ops > 100 and spy.syncs == []
    # The last step's tokens are never read: its rows had all ended.
    assert calls == {"deliver": decoder.stats.steps - 1, "_prefill": decoder.stats.prefills}


def parked_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows parked at each parking, from now on."""
    parked: list[int] = []
    park = Running.park

    def counting(self: Running, which: list[int], device: torch.device) -> Any:
        parked.append(len(which))
        return park(self, which, device)

    monkeypatch.setattr(Running, "park", counting)
    return parked


def test_rows_parked_and_rejoined_copy_their_keys_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a cache budget that parks rows: choosing the rows to park and cutting them out
    read host copies of the mask's shape; what crosses between host and device is the parked
    rows' keys and values and nothing else."""
    rnd = random.Random(5)
    pages = [echo_page(k, rnd.choice([10, 40]), rnd.randint(20, 160), rnd) for k in range(12)]
    decoder = echo_decoder(6, 700, read_late=True)
    parked = parked_rows(monkeypatch)
    crossings: Counter[str] = Counter()
    # Where parked rows cross: the cache layer's copy to the host, the running set's copy
    # back (kv_slab's own device_copy also carries the departures' row indices).
    for module, name in ((kv_slab, "host_copy"), (refill_rows, "device_copy")):
        original = getattr(module, name)

        def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            crossings[_name] += 1
            return _original(*args)

        monkeypatch.setattr(module, name, counted)
    with host_reads(decoder.model) as (spy, calls):
        decoder.run(pages)
    assert sum(parked) > 0, "the budget should park rows"
    # Keys and values (a copy each, per layer) to the host and back, and nothing else: on
    # CUDA through pinned memory, queued without waiting (the copies the spy would see as
    # waits, to pageable memory, are gone).
    assert not spy.syncs
    copies = 2 * LAYERS * sum(parked)
    assert crossings == {"host_copy": copies, "device_copy": copies}
    # The last step's tokens are never read: its rows had all ended.
    assert calls == {"deliver": decoder.stats.steps - 1, "_prefill": decoder.stats.prefills}


def spans_hold(rows: Running) -> None:
    """The host's spans say what the mask does: each row's mask is 0 left of its span and 1
    at its first column (the prefills' masks have no padding), and the widest span is the
    window."""
    assert rows.mask is not None
    mask = rows.mask.bool()
    width = mask.shape[1]
    assert len(rows.spans) == len(rows) and max(rows.spans) == width
    for i, span in enumerate(rows.spans):
        assert not mask[i, : width - span].any() and mask[i, width - span]


@pytest.mark.parametrize("first", [0, pytest.param(4, marks=pytest.mark.slow)])
def test_spans_follow_the_mask_through_joins_departures_and_parking(
    monkeypatch: pytest.MonkeyPatch, first: int
) -> None:
    """Random pages, slots and budgets (tokens read at once or a step late): before every
    step the spans say what the mask does, in runs where the window is cut and rows are
    parked, both in some."""
    checked = []
    grow = Running.grow

    def checking(self: Running) -> None:
        spans_hold(self)  # before each step: after every join, departure and parking
        checked.append(len(self))
        grow(self)

    monkeypatch.setattr(Running, "grow", checking)
    parked = parked_rows(monkeypatch)
    runs = []
    for seed in range(first, first + 4):  # each four seeds have a run with both
        rnd = random.Random(100 + seed)
        pages = [
            echo_page(k, rnd.choice([10, 30, 150]), rnd.randint(1, 200), rnd)
            for k in range(rnd.randint(4, 24))
        ]
        slots, positions = rnd.randint(2, 8), rnd.choice([None, 3000, 6000])
        decoder = echo_decoder(slots, positions, read_late=seed % 2 == 1)
        parked.clear()
        with departures() as gone:
            assert len(decoder.run(pages)) == len(pages)
        runs.append((any(cut for _, cut in gone), sum(parked) > 0))
    assert checked and (True, True) in runs
