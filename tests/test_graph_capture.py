"""CUDA graph capture in the refill decoder's fixed-shape steps, with CUDA's calls faked on
the CPU (tiny DeepSeek-OCR-2, fp32): graphs kept per rows bucket and cache buffer and
replayed after, kept through a window moved within their buffer, and a failed capture
turning graphs off for the process with the forward's error reported."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from test_decode_graphs import FORWARD, decoder, long_pages
from test_deepseek import make_engine
from test_refill import mixed_pages, prepared_with

from ocrpress.engines.decode_graphs import FixedStep
from ocrpress.engines.refill import RefillDecoder


class FakeCudaGraph:
    """``torch.cuda.CUDAGraph`` on the CPU, for the decoder's real capture code: the forward
    under capture runs (a CPU stream does not record), and a replay runs it again after
    checking that the cache's buffers are those of the capture. ``fail``: capture_end raises,
    as CUDA does when a captured operator was not allowed; ``fail_forward``: the forward
    under capture raises, and capture_end then raises an error of its own, as CUDA's does
    for a capture a failed operator invalidated."""

    fail: ClassVar[bool] = False
    fail_forward: ClassVar[bool] = False
    made: ClassVar[list[FakeCudaGraph]] = []
    capturing: ClassVar[FakeCudaGraph | None] = None

    def __init__(self) -> None:
        self.pools: tuple = ()
        self.call: tuple | None = None
        self.buffers: tuple[int, ...] = ()
        self.replays = 0
        self.broken = False  # a forward raised under this capture
        FakeCudaGraph.made.append(self)

    def capture_begin(self, *pool: Any, capture_error_mode: str) -> None:
        assert capture_error_mode == "thread_local"  # other threads pin memory meanwhile
        self.pools = pool
        FakeCudaGraph.capturing = self

    def capture_end(self) -> None:
        FakeCudaGraph.capturing = None
        if self.broken:
            raise RuntimeError("the operation failed due to a previous error during capture")
        if FakeCudaGraph.fail:
            raise RuntimeError("operation not permitted when stream is capturing")

    def pool(self) -> tuple[int, int]:
        return (id(self), 0)

    def replay(self) -> None:
        assert self.call is not None
        step, inputs, cache = self.call
        assert tuple(layer.buffer for layer in cache.layers) == self.buffers
        self.replays += 1
        inputs.logits = FORWARD(step, inputs, cache)


class _Stream:
    def wait_stream(self, other: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> type[FakeCudaGraph]:
    """The CUDA calls of a capture, faked for the CPU; a graph remembers the forward it saw."""

    from ocrpress.engines import decode_graphs

    def forward(self: FixedStep, inputs: Any, cache: Any) -> torch.Tensor:
        graph = FakeCudaGraph.capturing
        if graph is not None:
            if FakeCudaGraph.fail_forward:
                graph.broken = True
                raise RuntimeError("CUDA error: operation not permitted: cudaMemcpy when capturing")
            graph.call = (self, inputs, cache)
            graph.buffers = tuple(layer.buffer for layer in cache.layers)
        return FORWARD(self, inputs, cache)

    monkeypatch.setattr(FixedStep, "_forward", forward)
    monkeypatch.setattr(torch.cuda, "device", lambda _device: nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda _stream: nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _Stream())
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeCudaGraph)
    monkeypatch.setattr(decode_graphs, "_capture_failure", None)
    monkeypatch.setattr(FakeCudaGraph, "fail", False)
    monkeypatch.setattr(FakeCudaGraph, "fail_forward", False)
    monkeypatch.setattr(FakeCudaGraph, "made", [])
    return FakeCudaGraph


def capturing(eng, slots: int) -> RefillDecoder:
    d = decoder(eng, slots=slots, graphs=True)
    assert d.fixed is not None
    d.fixed.capture = True  # as on CUDA
    return d


def test_graphs_are_kept_per_bucket_and_dropped_with_their_buffer(
    tiny_v2_model: Path, fake_cuda: type[FakeCudaGraph]
) -> None:
    """Each (rows bucket, experts setting) is captured once per cache buffer and replayed
    after; a new buffer (rows joining past it, or the window reaching its last column) means
    new captures, never a replay into the old buffer, and a fresh memory pool (a pool whose
    graphs are all gone is not handed out again); the tokens do not change."""
    eng = make_engine(tiny_v2_model, mode="gundam", max_tiles=2, max_new_tokens=150, ngram_size=0)
    pages, budgets = long_pages(eng)
    reference = decoder(eng, slots=2, graphs=False).run(prepared_with(eng, pages, budgets))
    fixed = capturing(eng, slots=2)
    assert fixed.run(prepared_with(eng, pages, budgets)) == reference
    graphs = fake_cuda.made
    replays = sum(g.replays for g in graphs)
    assert fixed.stats.captures == len(graphs) >= 3  # buckets 1 and 2, and new buffers
    assert replays + len(graphs) == fixed.stats.steps
    assert replays > 5 * len(graphs)
    keys = [(g.buffers, g.call[1].ids.shape[0]) for g in graphs if g.call]
    assert len(keys) == len(graphs) and len(set(keys)) == len(keys)
    first_of: dict[tuple[int, ...], FakeCudaGraph] = {}
    for g in graphs:  # a buffer's first graph gets a new pool, later ones share it
        first = first_of.setdefault(g.buffers, g)
        assert g.pools == (() if first is g else (first.pool(),))
    assert len(first_of) >= 2
    assert fixed.fixed is not None and not fixed.fixed._inputs  # let go when decoding ended


def test_graphs_outlive_a_window_moved_within_their_buffer(
    tiny_v2_model: Path, fake_cuda: type[FakeCudaGraph], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full buffer of the right size makes room by moving its window to its first column
    (:meth:`.kv_slab.SlabLayer.recycle`): its graphs stay, a graph captured before the move
    is replayed after it, and the tokens do not change. (Spare columns of 16 make the move
    happen on these short pages.)"""
    from ocrpress.engines import kv_slab

    monkeypatch.setattr(kv_slab, "MIN_SPARE_COLUMNS", 16)
    monkeypatch.setattr(kv_slab, "MAX_SPARE_COLUMNS", 16)
    eng, pages, budgets, alone = mixed_pages(tiny_v2_model)
    before_move: list[dict[int, int]] = []  # each move: replays so far, per graph
    shift = kv_slab.SlabLayer._shift_left

    def moved(layer: kv_slab.SlabLayer) -> None:
        before_move.append({id(g): g.replays for g in fake_cuda.made})
        shift(layer)

    monkeypatch.setattr(kv_slab.SlabLayer, "_shift_left", moved)
    fixed = capturing(eng, slots=2)
    tokens = fixed.run(prepared_with(eng, pages, budgets))
    assert [tokens[i] for i in range(5)] == alone
    assert before_move
    graphs = {id(g): g for g in fake_cuda.made}
    assert any(graphs[g].replays > n for g, n in before_move[-1].items())
    keys = [(g.buffers, g.call[1].ids.shape[0]) for g in fake_cuda.made if g.call]
    assert len(keys) == len(fake_cuda.made) == fixed.stats.captures == len(set(keys))


def test_a_failed_capture_turns_graphs_off_for_the_process(
    tiny_v2_model: Path, fake_cuda: type[FakeCudaGraph], caplog: pytest.LogCaptureFixture
) -> None:
    """CUDA refuses a capture that met an operator it cannot record: that step's eager
    result stands, one warning says why, no graph is kept, and no decoder of the process
    tries again (a failed capture can leave the allocator unsafe to capture with)."""
    from ocrpress.engines.decode_graphs import capture_failure

    eng = make_engine(tiny_v2_model, mode="gundam", max_tiles=2, max_new_tokens=150, ngram_size=0)
    pages, budgets = long_pages(eng)
    reference = decoder(eng, slots=2, graphs=False).run(prepared_with(eng, pages, budgets))
    fake_cuda.fail = True
    with caplog.at_level("WARNING", logger="ocrpress"):
        first = capturing(eng, slots=2)
        assert first.run(prepared_with(eng, pages, budgets)) == reference
        second = capturing(eng, slots=2)
        assert second.run(prepared_with(eng, pages, budgets)) == reference
    assert len(fake_cuda.made) == 1 and fake_cuda.made[0].replays == 0
    assert first.stats.captures == second.stats.captures == 0
    failure = capture_failure()
    assert failure and "not permitted" in failure
    warnings = [r for r in caplog.records if "without CUDA graphs" in r.getMessage()]
    assert len(warnings) == 1


def test_a_failed_capture_names_the_forwards_error(
    tiny_v2_model: Path, fake_cuda: type[FakeCudaGraph]
) -> None:
    """When the forward fails under capture, the failure reported is the forward's (what
    could not be captured), not the error CUDA raises on ending the broken capture; the
    step's eager result stands and the tokens do not change."""
    from ocrpress.engines.decode_graphs import capture_failure

    eng = make_engine(tiny_v2_model, mode="gundam", max_tiles=2, max_new_tokens=150, ngram_size=0)
    pages, budgets = long_pages(eng)
    reference = decoder(eng, slots=2, graphs=False).run(prepared_with(eng, pages, budgets))
    fake_cuda.fail_forward = True
    d = capturing(eng, slots=2)
    assert d.run(prepared_with(eng, pages, budgets)) == reference
    assert d.stats.captures == 0 and fake_cuda.made[0].broken
    failure = capture_failure()
    assert failure and "cudaMemcpy when capturing" in failure, failure
    assert "previous error" not in failure
