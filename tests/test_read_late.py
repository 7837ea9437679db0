"""Decode steps whose tokens are read a step late (the next step queued on the device first),
on the tiny DeepSeek-OCR-2 (CPU, fp32): the same tokens as reading them at once, pages
decoded alone included, with fixed-shape steps too, and a step hook that counts tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_deepseek import make_engine, page
from test_refill import cpu_decoder, forced_lengths, mixed_pages, prepared_with

from ocrpress.engines.refill import RefillDecoder
from ocrpress.engines.refill_rows import StepTokens


def decoder(eng, slots: int, read_late: bool, graphs: bool = False, hook=None) -> RefillDecoder:
    return cpu_decoder(eng, slots, step_hook=hook, graphs=graphs, read_late=read_late)


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
    return mixed_pages(tiny_v2_model)


@pytest.mark.parametrize(
    ("slots", "graphs"), [(2, False), (3, True), pytest.param(16, False, marks=pytest.mark.slow)]
)
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
