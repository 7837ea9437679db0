"""Fixed-shape decode steps (what a CUDA graph replays), on the tiny DeepSeek-OCR-2 (CPU,
fp32): the same tokens as pages decoded alone, no wait for the device inside a step, and the
same operators on the same memory at every step of a rows bucket (what a replay assumes).
The captures themselves, with CUDA's calls faked: tests/test_graph_capture.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from test_deepseek import SMALL_PAGE, make_engine, page
from test_refill import alone_tokens, cpu_decoder, mixed_pages, prepared_with
from torch.utils._python_dispatch import TorchDispatchMode

from ocrpress.engines.decode_graphs import FixedStep, bucket
from ocrpress.engines.refill import RefillDecoder
from ocrpress.engines.refill_items import decode_experts

# Operators that make the host wait for the device: a CUDA graph cannot capture them. Those
# after the first line wait only on CUDA (the size of their output is a device value), so a
# CPU run cannot see the wait itself, only the operator. The spy errs on the strict side
# (a ``repeat_interleave`` given ``output_size`` does not wait, nor does a boolean index
# that becomes ``masked_fill``): it may flag what does not wait, not miss what does.
SYNCING = {"_local_scalar_dense", "is_nonzero", "item", "nonzero", "equal", "tolist"} | {
    "masked_select",
    "bincount",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
}


def waits_on_cuda(name: str, overload: str, args: tuple) -> bool:
    """Overloads whose output size is a device value: ``repeat_interleave`` by a tensor of
    repeats, and indexing by a boolean (or byte) mask (a ``nonzero`` inside)."""
    if name == "repeat_interleave":
        return overload in ("Tensor", "self_Tensor")
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    return False


class SyncSpy(TorchDispatchMode):
    """Operators run while ``on``, and those of them that read a device value on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.ops = 0
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            self.ops += 1
            name = func.overloadpacket.__name__
            out_device = kwargs.get("device") if kwargs else None
            # A copy to the host is ``to`` itself under inference mode, ``_to_copy`` outside.
            to_host = name in ("_to_copy", "to") and str(out_device) == "cpu"
            if name in SYNCING or to_host or waits_on_cuda(name, func._overloadname, args):
                self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def test_the_spy_sees_waits_that_only_cuda_has() -> None:
    """Operators whose output size is a device value wait on CUDA, not on the CPU: the spy
    names them; their fixed-size kin it lets pass."""
    x, keep = torch.arange(6.0), torch.tensor([True, False] * 3)
    spy = SyncSpy()
    spy.on = True
    with spy:
        x[keep], x.repeat_interleave(torch.tensor([1, 2] * 3)), keep.long().bincount()
        x.masked_select(keep), x[x > 2].sum(), torch.unique(x)
        waits = list(spy.syncs)
        spy.syncs.clear()
        x[torch.tensor([0, 2])], x.repeat_interleave(2), torch.histc(x, bins=3), x.sort()
        x.index_put_((torch.tensor([1]),), torch.tensor([9.0])), x.double()
    assert len(waits) == 6 and {"masked_select", "bincount"} <= set(waits)
    assert spy.syncs == [] and spy.ops > 6


def decoder(eng, slots: int, graphs: bool, experts: dict | None = None) -> RefillDecoder:
    """A CPU decoder; ``experts``: the decode steps' experts setting (as on a GPU)."""
    return cpu_decoder(eng, slots, graphs=graphs, decode_experts=experts)


#: The fixed-shape step's own forward (tests replace it with spies that call it).
FORWARD = FixedStep._forward


def long_pages(eng) -> tuple[list, list[int]]:
    """Pages of three tile grids and their budgets (up to 140 tokens)."""
    sizes = [SMALL_PAGE, (1000, 700), (700, 1000), SMALL_PAGE]
    return [page(i, s) for i, s in enumerate(sizes)], [140, 30, 100, 60]


@contextmanager
def step_sizes() -> Iterator[list[tuple[int, int]]]:
    """(rows running, rows computed) of each fixed-shape step while it is open."""
    seen: list[tuple[int, int]] = []
    original = FixedStep.__call__

    def spy(self: FixedStep, rows: Any, setting: Any) -> torch.Tensor:
        seen.append((len(rows), bucket(len(rows), rows.cache.layers[0].capacity)))
        return original(self, rows, setting)

    FixedStep.__call__ = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        FixedStep.__call__ = original  # type: ignore[method-assign]


def test_buckets_grow_by_powers_of_two_then_by_an_eighth_of_the_buffer() -> None:
    rows = (1, 2, 3, 5, 8, 9, 16, 17, 33, 97, 100, 113, 128)
    assert [bucket(n, 128) for n in rows] == [1, 2, 4, 8, 8, 16, 16, 32, 48, 112, 112, 128, 128]
    assert [bucket(n, 3) for n in (1, 2, 3)] == [1, 2, 3]
    assert bucket(5, 6) == 5 and bucket(7, 7) == 7 and bucket(40, 40) == 40  # small: exact
    assert all(n <= bucket(n, c) <= c for c in range(1, 70) for n in range(1, c + 1))


@pytest.mark.parametrize("slots", [3, pytest.param(16, marks=pytest.mark.slow)])
def test_fixed_shape_steps_give_the_tokens_of_pages_decoded_alone(
    tiny_v2_model: Path, slots: int
) -> None:
    """Pages of three prompt lengths and mixed budgets: on three slots rows join and leave
    (steps of 1..3 rows, the buffer's rows exactly), on sixteen all run at once and steps of
    3 and 5 rows compute padding rows too (sizes 4 and 6); the window moves inside the buffer
    and the buffer is regrown when a step finds no spare column. Every page's tokens are
    those generate gives it alone."""
    eng, pages, budgets, alone = mixed_pages(tiny_v2_model)
    fixed = decoder(eng, slots=slots, graphs=True)
    assert fixed.fixed is not None and not fixed.fixed.capture  # no capture on the CPU
    with step_sizes() as seen:
        tokens = fixed.run(prepared_with(eng, pages, budgets))
    assert [tokens[i] for i in range(5)] == alone
    assert {n for n, _ in seen} >= {1, 2, 3}  # rows left (and, on three slots, joined)
    padded = {n: size for n, size in seen if size > n}
    assert padded == ({} if slots == 3 else {3: 4, 5: 6})


def test_pages_joining_into_padding_rows_keep_their_tokens(tiny_v2_model: Path) -> None:
    """More pages than slots (sixteen): pages join into rows that padding used a step
    before. Every page's tokens are those it gets decoded alone."""
    import random

    eng = make_engine(tiny_v2_model, mode="small", max_new_tokens=80, ngram_size=0)
    rng = random.Random(3)
    pages = [page(i % 8, (560 + 40 * (i // 8), 620)) for i in range(22)]
    budgets = [rng.randint(8, 80) for _ in pages]
    alone = alone_tokens(eng, pages, budgets)
    fixed = decoder(eng, slots=16, graphs=True)
    with step_sizes() as seen:
        tokens = fixed.run(prepared_with(eng, pages, budgets))
    assert [tokens[i] for i in range(len(pages))] == alone
    joins_into_padding = [
        (before, after)
        for (before, size), (after, _) in itertools.pairwise(seen)
        if after > before and size > before
    ]
    assert joins_into_padding


def test_a_fixed_shape_step_never_waits_for_the_device(tiny_v2_model: Path) -> None:
    """A CUDA graph cannot capture a step that reads a device value on the host. The eager
    step does (transformers builds its mask from the 2D one and asks ``all()``: the spy sees
    it, so it would see one in the fixed step too); the fixed step does not, with the experts
    on ``grouped_mm`` (the CPU's) or on ``batched_mm`` (a GPU's for steps of few rows)."""
    eng = make_engine(tiny_v2_model, mode="small", max_new_tokens=12, ngram_size=0)
    prepared = [eng.prepare(page(i), i) for i in range(3)]
    spy = SyncSpy()
    eager_decoder = decoder(eng, slots=3, graphs=False)
    fixed_decoder = decoder(eng, slots=3, graphs=True)
    batched = decode_experts(eng.hf_model, "cuda")
    assert batched and "batched_mm" in batched.values()
    batched_decoder = decoder(eng, slots=3, graphs=True, experts=batched)
    forward = eng.hf_model.forward

    def watched(*args: Any, **kwargs: Any) -> Any:
        decoding = kwargs["input_ids"].shape[1] == 1
        spy.on = decoding
        try:
            return forward(*args, **kwargs)
        finally:
            spy.on = False

    eng.hf_model.forward = watched
    try:
        with spy:
            eager = eager_decoder.run(prepared)
            assert spy.ops and spy.syncs, "the spy should see the eager step's mask check"
            spy.ops, spy.syncs = 0, []
            fixed = fixed_decoder.run(prepared)
            assert spy.ops > 100 and spy.syncs == []
            spy.ops = 0
            batched_decoder.run(prepared)
    finally:
        del eng.hf_model.forward
    assert spy.ops > 100 and spy.syncs == []
    assert fixed == eager


def test_graphs_only_for_attention_that_takes_a_4d_mask(tiny_v2_model: Path) -> None:
    """Fixed-shape steps need attention that takes a 4D mask as it is: SDPA and eager. A
    decoder loaded with flash attention 2 (ocrpress's choice when flash-attn is installed)
    runs its decode steps on SDPA (tests/test_attention.py), so it may have them; one on
    another implementation (flex attention here) keeps its steps eager."""
    from types import SimpleNamespace

    from ocrpress.engines.decode_graphs import fixed_steps_supported

    def model(attention: str) -> Any:
        config = SimpleNamespace(text_config=SimpleNamespace(_attn_implementation=attention))
        return SimpleNamespace(config=config, forward=lambda input_ids, cache=None: None)

    eng = make_engine(tiny_v2_model, mode="small", max_new_tokens=4)
    assert fixed_steps_supported(eng.hf_model)  # SDPA
    assert fixed_steps_supported(model("eager"))
    assert fixed_steps_supported(model("flash_attention_2"))
    assert not fixed_steps_supported(model("flex_attention"))
    assert not fixed_steps_supported(SimpleNamespace())  # a stand-in without a config
    flex = RefillDecoder(
        model("flex_attention"),
        slots=2,
        eos_ids={0},
        device="cpu",
        dtype=torch.float32,
        guard=None,
        graphs=True,
    )
    assert flex.fixed is None
    assert decoder(eng, slots=2, graphs=True).fixed is not None


class OpRecorder(TorchDispatchMode):
    """Each operator of a forward with what a CUDA graph would freeze: its non-tensor
    arguments, and of each tensor its shape, strides and dtype, and where it lies if it is
    one of ``fixed`` (the step's inputs and the cache's buffers; others are temporaries)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple] | None = None
        self.fixed: dict[int, str] = {}

    def describe(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            where = self.fixed.get(a.untyped_storage().data_ptr(), "tmp")
            offset = a.storage_offset() if where != "tmp" else None
            return (tuple(a.shape), a.stride(), str(a.dtype), where, offset)
        if isinstance(a, (list, tuple)):
            return tuple(self.describe(x) for x in a)
        return repr(a)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.ops is not None:
            described = (self.describe(args), self.describe(sorted((kwargs or {}).items())))
            self.ops.append((str(func), *described))
        return func(*args, **(kwargs or {}))


def test_a_bucket_s_steps_run_the_same_operators_on_the_same_memory(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a replay repeats is what the capture saw: within one (buffer, bucket), every
    step's forward runs the same operators with the same shapes, the same non-tensor
    arguments and the same places in the fixed tensors (a Python value that changes from step
    to step, such as the window's column, would show here); the column comes from a tensor."""
    eng = make_engine(tiny_v2_model, mode="gundam", max_tiles=2, max_new_tokens=150, ngram_size=0)
    pages, budgets = long_pages(eng)
    recorder = OpRecorder()
    steps: dict[tuple, list[list[tuple]]] = {}

    def forward(self: FixedStep, inputs: Any, cache: Any) -> torch.Tensor:
        layers = cache.layers
        recorder.fixed = {
            t.untyped_storage().data_ptr(): name
            for name, t in vars(inputs).items()
            if isinstance(t, torch.Tensor) and name != "logits"
        }
        for i, layer in enumerate(layers):
            recorder.fixed[layer._k.untyped_storage().data_ptr()] = f"k{i}"
            recorder.fixed[layer._v.untyped_storage().data_ptr()] = f"v{i}"
        recorder.ops = []
        try:
            return FORWARD(self, inputs, cache)
        finally:
            key = (tuple(layer.buffer for layer in layers), inputs.ids.shape[0])
            steps.setdefault(key, []).append(recorder.ops)
            recorder.ops = None

    monkeypatch.setattr(FixedStep, "_forward", forward)
    with recorder:
        decoder(eng, slots=2, graphs=True).run(prepared_with(eng, pages, budgets))
    assert sum(len(runs) >= 5 for runs in steps.values()) >= 2
    for runs in steps.values():
        assert len(runs[0]) > 100
        for later in runs[1:]:
            assert later == runs[0]
