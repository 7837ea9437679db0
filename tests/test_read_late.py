"""Decode steps whose tokens are read a step late (the next step queued on the device first),
on the tiny DeepSeek-OCR-2 (CPU, fp32): the same tokens as reading them at once, pages
decoded alone included, with fixed-shape steps too, and a step hook that counts tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_deepseek import SMALL_PAGE, make_engine, page
from test_refill import alone_tokens, forced_lengths, prepared_with

from ocrpress.engines.refill import RefillDecoder
from ocrpress.engines.refill_rows import StepTokens


def decoder(eng, slots: int, read_late: bool, graphs: bool = False, hook=None) -> RefillDecoder:
    return RefillDecoder(
        eng.hf_model,
        slots=slots,
        eos_ids=eng.eos_ids,
        device="cpu",
        dtype=torch.float32,
        guard=None,
        step_hook=hook,
        graphs=graphs,
        read_late=read_late,
    )


def test_a_late_step_adds_nothing_to_a_page_that_ended() -> None:
    """A row that ended (EOS, or its budget) before the step's tokens are read takes no token
    from it; the others take theirs."""
    eos = {0}
    ended_by_eos, ended_by_budget, running = [5, 0], [5, 6, 7], [5, 6]
    step = StepTokens.start(
        torch.tensor([9, 8, 7]), [(ended_by_eos, 100), (ended_by_budget, 3), (running, 100)]
    )
    assert step.lists() == {id(ended_by_eos), id(ended_by_budget), id(running)}
    assert step.deliver(eos) == 1
    assert ended_by_eos == [5, 0] and ended_by_budget == [5, 6, 7] and running == [5, 6, 7]


@pytest.fixture(scope="module")
def mixed(tiny_v2_model: Path) -> tuple:
    """(engine, pages, budgets, each page's tokens decoded alone): three prompt lengths,
    budgets of 40..150 tokens."""
    eng = make_engine(tiny_v2_model, mode="gundam", max_tiles=2, max_new_tokens=150, ngram_size=0)
    sizes = [SMALL_PAGE, (1000, 700), (700, 1000), SMALL_PAGE, (1000, 700)]
    pages = [page(i, s) for i, s in enumerate(sizes)]
    budgets = [150, 40, 90, 130, 70]
    return eng, pages, budgets, alone_tokens(eng, pages, budgets)


@pytest.mark.parametrize(("slots", "graphs"), [(2, False), (3, True), (16, False)])
def test_tokens_read_a_step_late_are_those_of_pages_decoded_alone(
    mixed: tuple, slots: int, graphs: bool
) -> None:
    """A page that ended is retired a step late, and the token its extra step made is
    dropped; each page's tokens are still those it gets decoded alone. Every page costs at
    most one step more, and the counted step tokens are the tokens the pages kept."""
    eng, pages, budgets, alone = mixed
    at_once = decoder(eng, slots, read_late=False, graphs=graphs)
    late = decoder(eng, slots, read_late=True, graphs=graphs)
    first = at_once.run(prepared_with(eng, pages, budgets))
    assert [first[i] for i in range(5)] == alone
    tokens = late.run(prepared_with(eng, pages, budgets))
    assert [tokens[i] for i in range(5)] == alone
    kept = sum(len(t) - 1 for t in alone)  # a page's first token comes from its prefill
    assert at_once.stats.step_tokens == late.stats.step_tokens == kept
    assert at_once.stats.steps < late.stats.steps <= at_once.stats.steps + len(pages)
    assert late._pending is None  # the last step's unread tokens let go


def test_a_step_hook_counts_the_token_still_on_its_way(tiny_v2_model: Path) -> None:
    """A benchmark's hook ends pages at exact lengths from the counts it is given: read a
    step late, a row's count includes the token of the step not yet read, so the pages end
    where they do when tokens are read at once."""
    eng = make_engine(tiny_v2_model, mode="small", max_new_tokens=60, ngram_size=0)
    pages = [page(i) for i in range(6)]
    targets = {i: t for i, t in enumerate([5, 17, 9, 30, 12, 3])}
    hook = forced_lengths(targets, eng.eos_ids)(pages)
    budgets = [60] * 6
    at_once = decoder(eng, 3, read_late=False, hook=hook).run(prepared_with(eng, pages, budgets))
    late = decoder(eng, 3, read_late=True, hook=hook).run(prepared_with(eng, pages, budgets))
    assert late == at_once
    assert [len(at_once[i]) for i in range(6)] == [targets[i] + 1 for i in range(6)]
