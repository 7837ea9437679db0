"""Refill scheduling on the tiny DeepSeek-OCR-2 model (CPU, fp32): pages join a running decode
in groups, and a prefill call takes a bounded number of pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from spies import before_each_call
from test_deepseek import make_engine, page

from ocrpress.engines.refill import RefillDecoder


def forced_lengths(targets: dict[int, int], eos_ids: set[int]):
    """A step hook that ends the call's ``i``-th page after exactly ``targets[i]`` tokens."""
    eos, others = min(eos_ids), sorted(eos_ids)

    def for_batch(pages):
        want = torch.tensor([targets[k] for k in range(len(pages))])  # by place in the call

        def hook(keys: list[int], counts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            done = want[keys] <= counts
            scores = scores.clone()
            scores[:, others] = -float("inf")
            forced = torch.full_like(scores, -float("inf"))
            forced[:, eos] = 0.0
            return torch.where(done[:, None], forced, scores)

        return hook

    return for_batch


def alone_tokens(eng, pages: list, budgets: list[int]) -> list[list[int]]:
    """Each page's tokens decoded alone by transformers' generate, cut at its budget."""
    alone = []
    for p, budget in zip(pages, budgets, strict=True):
        row = eng.generate_ids([p])[0][:budget]
        eos = [i for i, t in enumerate(row) if t in eng.eos_ids]
        alone.append(row[: eos[0] + 1] if eos else row)
    return alone


def prepared_with(eng, pages: list, budgets: list[int]) -> list:
    """The pages prepared, each with its own token budget."""
    prepared = [eng.prepare(p, i) for i, p in enumerate(pages)]
    for it, budget in zip(prepared, budgets, strict=True):
        it.budget = budget
    return prepared


def mixed_pages(model: Path) -> tuple[Any, list, list[int], list[list[int]]]:
    """(engine, pages, budgets, each page's tokens decoded alone): five gundam pages of three
    prompt lengths with budgets of 40..150 tokens, which decode long."""
    from test_deepseek import SMALL_PAGE

    eng = make_engine(model, mode="gundam", max_tiles=2, max_new_tokens=150, ngram_size=0)
    sizes = [SMALL_PAGE, (1000, 700), (700, 1000), SMALL_PAGE, (1000, 700)]
    pages = [page(i, s) for i, s in enumerate(sizes)]
    budgets = [150, 40, 90, 130, 70]
    alone = alone_tokens(eng, pages, budgets)
    assert sum(len(t) for t in alone) > 300, "pages should decode long"
    return eng, pages, budgets, alone


def cpu_decoder(eng, slots: int, positions: int | None = None, **options: Any) -> RefillDecoder:
    """A CPU decoder without n-gram guard; ``options``: more of the decoder's arguments."""
    return RefillDecoder(
        eng.hf_model,
        slots=slots,
        eos_ids=eng.eos_ids,
        device="cpu",
        dtype=torch.float32,
        guard=None,
        cache_positions=positions,
        **options,
    )


@pytest.fixture
def prefill_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pages in each prefill call, in call order."""
    sizes: list[int] = []
    before_each_call(
        monkeypatch, RefillDecoder, "_prefill", lambda self, rows, group: sizes.append(len(group))
    )
    return sizes


def test_pages_join_in_groups_of_a_quarter_of_the_slots(
    tiny_v2_model: Path, prefill_sizes: list[int]
) -> None:
    eng = make_engine(tiny_v2_model, mode="small", batch_size=8, max_new_tokens=40)
    lengths = [3, 9, 5, 14, 7, 11, 4, 16, 6, 12, 8, 10, 13]
    targets = dict(enumerate(lengths))
    eng.step_hook = forced_lengths(targets, eng.eos_ids)
    results = eng.run([page(i % 6) for i in range(len(lengths))])
    # Each page emitted exactly its forced tokens then EOS: nobody was cut short by a refill.
    assert [r.text_tokens for r in results] == lengths
    assert prefill_sizes[0] == 8  # the first call fills every slot
    later = prefill_sizes[1:]
    assert sum(prefill_sizes) == len(lengths)
    # Refills wait for 2 free slots (8 // 4); only the input's last pages may come alone.
    assert all(n >= 2 for n in later[:-1]), prefill_sizes
    assert len(later) <= (len(lengths) - 8 + 1) // 2 + 1


def test_a_prefill_call_takes_at_most_prefill_pages(
    tiny_v2_model: Path, prefill_sizes: list[int]
) -> None:
    eng = make_engine(tiny_v2_model, mode="small", batch_size=5, max_new_tokens=6)
    pages = [page(i) for i in range(5)]
    alone = [eng.run([p])[0].raw for p in pages]
    prefill_sizes.clear()
    eng.prefill_pages = 2
    results = eng.run(pages)
    assert prefill_sizes == [2, 2, 1]  # five equal-length pages, two at a time
    assert [r.raw for r in results] == alone  # chunked prefill changes no token


def test_prefill_pages_follow_the_vision_memory_of_the_mode(tiny_v2_model: Path) -> None:
    """Tiled modes prefill fewer pages per call than untiled ones, within the budget."""
    from ocrpress.engines.deepseek_runtime import (
        SLACK,
        prefill_pages,
        vision_bytes_per_page,
    )
    from ocrpress.modes import get_mode

    budget = 16 * 2**30
    small, gundam = get_mode("v2", "small"), get_mode("v2", "gundam")
    n_small = prefill_pages(small, 6, torch.bfloat16, budget)
    n_gundam = prefill_pages(gundam, 6, torch.bfloat16, budget)
    assert n_gundam < n_small
    for mode, n in ((small, n_small), (gundam, n_gundam)):
        per_page = vision_bytes_per_page(mode, 6, torch.bfloat16) * SLACK
        assert n * per_page <= budget < (n + 1) * per_page
    assert prefill_pages(gundam, 6, torch.bfloat16, 1) == 1  # never zero


def test_auto_batch_size_counts_cache_beside_one_prefill(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, the cache may use free memory less a margin and one prefill call (whose
    budget is a quarter of free memory at most); decode slots are rows of typical pages in
    it, not of the context's worst case. On the CPU: no bound, a fixed number of slots."""
    from types import SimpleNamespace

    from ocrpress.engines import deepseek_runtime as rt
    from ocrpress.engines.kv_slab import columns_for

    free = 80 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, free))
    text = SimpleNamespace(
        num_hidden_layers=12,
        num_key_value_heads=10,
        hidden_size=1280,
        num_attention_heads=10,
        head_dim=128,
        max_position_embeddings=8192,
    )
    model = SimpleNamespace(config=SimpleNamespace(text_config=text))
    budget = rt.prefill_budget("cuda")
    assert budget == min(rt.PREFILL_BUDGET, free // 4)
    per_position = 2 * 12 * 10 * 128 * 2 * rt.SLACK  # bf16 keys and values
    positions = rt.cache_positions(model, "cuda", torch.bfloat16, budget)
    assert positions == int((0.9 * free - 2 * 2**30 - budget) // per_position)
    assert rt.cache_positions(model, "cuda", torch.bfloat16, 0) > positions
    assert rt.cache_positions(model, "cpu", torch.float32, budget) is None

    long = SimpleNamespace(max_new_tokens=8192)
    slots = rt.auto_batch_size(model, 1121, long, positions)
    assert slots == min(rt.MAX_AUTO_BATCH, positions // columns_for(1121 + rt.TYPICAL_NEW_TOKENS))
    worst_case = positions // columns_for(8192)  # what sizing for the context would give
    assert slots > worst_case
    quarter = positions // 4  # below the cap: ~2.5x the worst case's slots in gundam mode
    assert rt.auto_batch_size(model, 1121, long, quarter) > 2 * (quarter // columns_for(8192))
    short = SimpleNamespace(max_new_tokens=200)
    assert rt.auto_batch_size(model, 1121, short, positions // 5) == (
        positions // 5 // columns_for(1321)
    )
    assert rt.auto_batch_size(model, 1121, long, None) == rt.CPU_BATCH_SIZE


def test_the_engine_hands_its_cache_budget_to_the_decoder(tiny_v2_model: Path) -> None:
    eng = make_engine(tiny_v2_model, mode="small", batch_size=4)
    assert eng.cache_positions is None  # the CPU: host memory, no bound
    eng.cache_positions = 12_344
    assert eng.decoder(4, None).budget.positions == 12_344
    # After an out-of-memory error the budget (an estimate) is cut as the slots are.
    eng._slot_limit.lower(2)
    assert eng.decoder(2, None).budget.positions == 6_172


def test_decode_steps_switch_the_experts_on_accelerators_only(tiny_v2_model: Path) -> None:
    """As transformers' generate does: grouped_mm stays for the CPU and for prefills; decode
    steps on an accelerator use batched_mm; models without switchable experts are left alone."""
    from types import SimpleNamespace

    from ocrpress.engines.refill_items import decode_experts

    eng = make_engine(tiny_v2_model, mode="small")
    model = eng.hf_model
    assert "grouped_mm" in model.get_experts_implementation().values()
    assert decode_experts(model, "cpu") is None
    switched = decode_experts(model, "cuda:0")
    assert switched is not None and set(switched.values()) == {"batched_mm"}
    assert decode_experts(SimpleNamespace(), "cuda") is None
    eager = SimpleNamespace(get_experts_implementation=lambda: {"": "eager"})
    assert decode_experts(eager, "cuda") is None


def test_batched_mm_only_while_the_pairs_are_few(tiny_v2_model: Path) -> None:
    """batched_mm copies a weight matrix per (row, expert) pair: it is chosen for at most as many
    rows as make the pairs no more than three times the experts (64 experts, 6 a token: 32
    rows; on an H100 the two settings crossed between 32 and 64 rows)."""
    from types import SimpleNamespace

    from ocrpress.engines.refill_items import batched_mm_rows

    eng = make_engine(tiny_v2_model, mode="small")
    text = eng.hf_model.config.text_config
    assert batched_mm_rows(eng.hf_model) == 3 * text.n_routed_experts // text.num_experts_per_tok
    published = SimpleNamespace(
        config=SimpleNamespace(
            text_config=SimpleNamespace(n_routed_experts=64, num_experts_per_tok=6)
        )
    )
    assert batched_mm_rows(published) == 32
    flat = SimpleNamespace(config=SimpleNamespace(num_experts=8, num_experts_per_tok=32))
    assert batched_mm_rows(flat) == 1
    assert batched_mm_rows(SimpleNamespace(config=SimpleNamespace())) is None


def test_decode_steps_run_batched_mm_and_prefills_grouped_mm(tiny_v2_model: Path) -> None:
    """With the switch forced on the CPU: every prefill forward sees grouped_mm, every decode
    step batched_mm, the tokens are those of the unswitched decoder, and the model is left as
    it was, also when decoding fails."""
    eng = make_engine(tiny_v2_model, mode="small", batch_size=3, max_new_tokens=10)
    model = eng.hf_model
    pages = [page(i) for i in range(5)]

    seen: list[tuple[int, str]] = []

    def record(_module, _args, kwargs):
        impl = model.config.text_config._experts_implementation
        seen.append((kwargs["input_ids"].shape[1], impl))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    prepared = [eng.prepare(p, i) for i, p in enumerate(pages)]

    def decoder(hook=None, switch=True, rows=None) -> RefillDecoder:
        return RefillDecoder(
            model,
            slots=3,
            eos_ids=eng.eos_ids,
            device="cpu",
            dtype=torch.float32,
            guard=(eng.opts.ngram_size, eng.opts.ngram_window),
            whitelist_ids=eng.whitelist_ids,
            decode_experts={"": "batched_mm", "text_config": "batched_mm"} if switch else None,
            decode_experts_rows=rows,
            step_hook=hook,
        )

    try:
        reference = decoder(switch=False).run(prepared)
        assert {impl for _, impl in seen} == {"grouped_mm"}
        seen.clear()
        tokens = decoder().run(prepared)
        assert model.config.text_config._experts_implementation == "grouped_mm"
        steps = [impl for n, impl in seen if n == 1]
        prefills = [impl for n, impl in seen if n > 1]
        assert steps and set(steps) == {"batched_mm"}
        assert prefills and set(prefills) == {"grouped_mm"}
        assert tokens == reference and len(tokens) == 5

        # With a row cap, steps of more rows stay on grouped_mm; the tokens do not change.
        seen.clear()
        record_rows: list[int] = []
        handle_rows = model.register_forward_pre_hook(
            lambda _m, _a, kw: record_rows.append(kw["input_ids"].shape[0]), with_kwargs=True
        )
        try:
            assert decoder(rows=2).run(prepared) == reference
        finally:
            handle_rows.remove()
        by_rows = {
            (rows, impl) for (n, impl), rows in zip(seen, record_rows, strict=True) if n == 1
        }
        assert {impl for rows, impl in by_rows if rows > 2} == {"grouped_mm"}
        assert {impl for rows, impl in by_rows if rows <= 2} == {"batched_mm"}

        def fail(keys, counts, scores):
            if counts.max() > 3:
                raise RuntimeError("boom")
            return scores

        with pytest.raises(RuntimeError, match="boom"):
            decoder(fail).run(prepared)
        assert model.config.text_config._experts_implementation == "grouped_mm"
    finally:
        handle.remove()


def test_decode_steps_keep_off_cudnn_attention(tiny_v2_model: Path) -> None:
    """cuDNN attention builds a plan for every new shape, and a decode step's keys change shape
    every step (~90 ms a step on an H100 instead of ~16): on CUDA the decode steps run with
    every SDPA kernel but cuDNN's, prefills with PyTorch's default, and the tokens do not
    change (on the CPU, where the switch selects nothing, this only shows the decoder is
    unharmed). On the CPU nothing is switched."""
    from ocrpress.engines.refill_items import decode_attention

    with decode_attention("cpu"):
        assert torch.backends.cuda.cudnn_sdp_enabled()
    with decode_attention("cuda:0"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()
    # The switch is process-wide: steps overlapping on two threads (two engines) keep cuDNN
    # off until the last ends, then the setting found before comes back.
    first, second = decode_attention("cuda"), decode_attention("cuda:1")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    second.__exit__(None, None, None)
    assert torch.backends.cuda.cudnn_sdp_enabled()

    eng = make_engine(tiny_v2_model, mode="small", batch_size=3, max_new_tokens=8)
    assert eng.decoder(3, None).attention is decode_attention  # what a CUDA engine applies
    prepared = [eng.prepare(page(i), i) for i in range(4)]
    seen: list[tuple[int, bool]] = []
    handle = eng.hf_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(
            (kw["input_ids"].shape[1], torch.backends.cuda.cudnn_sdp_enabled())
        ),
        with_kwargs=True,
    )

    def decoder(as_on_cuda: bool) -> RefillDecoder:
        d = eng.decoder(3, None)
        if as_on_cuda:  # the policy the decoder applies on a CUDA device
            d.attention = lambda _device: decode_attention("cuda")
        return d

    try:
        reference = decoder(False).run(prepared)
        assert {cudnn for _, cudnn in seen} == {True}
        seen.clear()
        assert decoder(True).run(prepared) == reference
        steps = {cudnn for n, cudnn in seen if n == 1}
        prefills = {cudnn for n, cudnn in seen if n > 1}
        assert steps == {False} and prefills == {True}
        # The engine's switch (a benchmark's, for now): prefills on the decode steps' kernels.
        seen.clear()
        eng.prefill_cudnn = False
        assert decoder(True).run(prepared) == reference
        assert {cudnn for _, cudnn in seen} == {False}
    finally:
        handle.remove()
    assert torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.parametrize("in_place", [pytest.param(True, marks=pytest.mark.slow), False])
def test_long_decodes_through_cache_reallocations_match_pages_alone(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch, in_place: bool
) -> None:
    """Five pages of three prompt lengths with budgets of 40..150 tokens on two slots: rows
    leave and join many times and a decode step finds no spare column in the in-place
    cache. It moves the window left within its buffer (``in_place``) or, when the buffer
    cannot be kept, takes a new one; each page's tokens are still those transformers'
    generate gives it alone."""
    eng, pages, budgets, alone = mixed_pages(tiny_v2_model)
    prepared = prepared_with(eng, pages, budgets)
    decoder = cpu_decoder(eng, slots=2)
    from ocrpress.engines.kv_slab import SlabLayer

    if not in_place:
        monkeypatch.setattr(SlabLayer, "recycle", lambda *a, **k: False)
    grown: list[int] = []  # reallocations because a step found no spare column
    before_each_call(
        monkeypatch, SlabLayer, "_reallocate", lambda *a, **k: grown.append(k.get("extra", 0))
    )
    shifted: list[int] = []  # windows moved left in their buffer instead
    before_each_call(monkeypatch, SlabLayer, "_shift_left", lambda layer: shifted.append(1))
    tokens = decoder.run(prepared)
    assert [tokens[i] for i in range(5)] == alone
    layers = eng.hf_model.config.text_config.num_hidden_layers
    by_step = sum(1 for extra in grown if extra)
    if in_place:
        assert len(shifted) >= layers
    else:
        assert not shifted and by_step >= layers


def test_pages_tensors_join_the_same_whether_copied_one_by_one_or_after_a_cat() -> None:
    """On CUDA each page's pinned tensor is copied without blocking and the batch is joined on
    the device (a host-side cat makes a pageable tensor whose copy blocks); both ways give the
    same batch, in the model's dtype for floating tensors only."""
    from ocrpress.engines.refill_items import joined

    pixels = [torch.randn(1, 3, 4, 4) for _ in range(3)]
    ids = [torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9, 10]])]
    for pinned in (False, True):
        batch = joined(pixels, "cpu", torch.bfloat16, pinned)
        assert batch.dtype == torch.bfloat16 and batch.shape == (3, 3, 4, 4)
        assert torch.equal(batch, torch.cat(pixels).to(torch.bfloat16))
        tokens = joined(ids, "cpu", torch.bfloat16, pinned)
        assert tokens.dtype == torch.long and tokens.tolist() == [[5, 6, 7], [8, 9, 10]]
    one = joined(pixels[:1], "cpu", torch.float32, True)
    assert torch.equal(one, pixels[0])


def test_num_local_patches_stays_a_host_list_for_pages_with_and_without_tiles() -> None:
    """The model reads it with ``tolist`` (to split the tiles by page): a host list, so that
    reading it does not wait for the device copies queued before it."""
    from ocrpress.engines.refill_items import Prepared, collate

    def item(key: int, tiles: int) -> Prepared:
        inputs = {
            "input_ids": torch.tensor([[1, 2, 3]]),
            "pixel_values": torch.zeros(1, 3, 2, 2),
            "num_local_patches": torch.tensor([tiles]),
            "pixel_values_local": torch.ones(tiles, 3, 2, 2) if tiles else None,
        }
        return Prepared(key, inputs, 3, 8)

    batch = collate([item(0, 2), item(1, 0), item(2, 3)], "cpu", torch.float32)
    assert batch["num_local_patches"] == [2, 0, 3]
    assert batch["pixel_values_local"].shape == (5, 3, 2, 2)
    assert batch["pixel_values"].shape == (3, 3, 2, 2)
    assert collate([item(0, 0)], "cpu", torch.float32)["num_local_patches"] == [0]


def test_rows_past_the_cache_budget_wait_in_host_memory_and_resume_exactly(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a cache budget, the decoder runs the rows it holds at their current width: as a
    long row widens the cache past the budget, the shortest rows move to host memory and later
    rejoin (here one rejoins a running set of another width). No buffer is ever allocated
    past the budget, and every page's tokens are those it gets decoded alone."""
    from test_deepseek import SMALL_PAGE

    from ocrpress.engines import refill_rows
    from ocrpress.engines.kv_slab import SlabLayer

    # Rows join up to the whole budget (not 90% of it), so that their growth must park some.
    monkeypatch.setattr(refill_rows, "ADMIT_SHARE", 1.0)
    eng = make_engine(tiny_v2_model, mode="gundam", max_tiles=2, max_new_tokens=150, ngram_size=0)
    wide = (1000, 700)  # a 554-token prompt; SMALL_PAGE's is 266
    sizes = [wide, SMALL_PAGE, SMALL_PAGE, SMALL_PAGE, wide, SMALL_PAGE, SMALL_PAGE]
    budgets = [150, 60, 140, 130, 150, 100, 150]
    pages = [page(i, s) for i, s in enumerate(sizes)]
    alone = alone_tokens(eng, pages, budgets)
    prepared = prepared_with(eng, pages, budgets)

    rejoined: list[int] = []  # rows running when a parked row rejoined
    before_each_call(
        monkeypatch, refill_rows.Running, "unpark", lambda self, *a: rejoined.append(len(self))
    )
    allocated: list[int] = []
    realloc = SlabLayer._reallocate

    def spy(self: SlabLayer, *a, **k) -> None:
        realloc(self, *a, **k)
        allocated.append(self.allocated)

    monkeypatch.setattr(SlabLayer, "_reallocate", spy)
    positions = 2300
    decoder = cpu_decoder(eng, slots=4, positions=positions)
    tokens = decoder.run(prepared)
    assert [tokens[i] for i in range(len(pages))] == alone
    assert len(rejoined) >= decoder.stats.parked >= 1  # a page may be parked twice
    assert any(n > 0 for n in rejoined), rejoined  # joined a running set, not an empty one
    assert allocated and max(allocated) <= positions

    # A budget below one row's needs still decodes, one row at a time.
    small = prepared_with(eng, pages[:2], budgets[:2])
    assert cpu_decoder(eng, slots=4, positions=100).run(small) == {0: alone[0], 1: alone[1]}


def test_an_engine_with_a_cache_budget_gives_the_same_pages_and_counts_the_parked(
    tiny_v2_model: Path,
) -> None:
    """Through the engine: with a cache budget too small for its four slots of long pages,
    pages are parked (counted in its usage and in the run's statistics) and every page's text
    is that of the unbounded run."""
    from ocrpress.stats import RunStats

    lengths = [75, 70, 72, 74, 73, 71, 76, 69]
    texts = {}
    for positions in (None, 500):
        eng = make_engine(tiny_v2_model, mode="small", batch_size=4, max_new_tokens=80)
        eng.step_hook = forced_lengths(dict(enumerate(lengths)), eng.eos_ids)
        eng.cache_positions = positions
        results = eng.run([page(i % 6) for i in range(len(lengths))])
        assert [r.text_tokens for r in results] == lengths
        texts[positions] = [r.text for r in results]
        stats = RunStats()
        stats.add_usage(eng.usage())
        parked = stats.to_dict()["pages_parked"]
        assert (parked > 0) if positions else parked == 0
    assert texts[500] == texts[None]
