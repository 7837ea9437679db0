"""Semantics of the windowed no-repeat-n-gram guard on crafted token sequences."""

from __future__ import annotations

import random

import pytest
import torch

from ocrpress.engines.ngram import WindowedNoRepeatNGramLogitsProcessor

VOCAB = 50


def banned(
    proc: WindowedNoRepeatNGramLogitsProcessor, rows: list[list[int]], vocab: int = VOCAB
) -> list[set[int]]:
    """Token ids the processor bans for each row of ``rows`` (equal lengths)."""
    ids = torch.tensor(rows, dtype=torch.long)
    scores = torch.zeros(len(rows), vocab)
    out = proc(ids, scores)
    return [set(torch.nonzero(torch.isinf(r)).flatten().tolist()) for r in out]


def reference(tokens: list[int], n: int, window: int, prompt: int, whitelist: set[int]) -> set[int]:
    """Direct transcription of the rule, one row, pure Python."""
    gen = tokens[prompt:]
    if len(gen) < n:
        return set()
    prefix = gen[len(gen) - n + 1 :]
    out = set()
    for i in range(max(0, len(gen) - window), len(gen) - n + 1):
        gram = gen[i : i + n]
        if gram[:-1] == prefix and gram[-1] not in whitelist:
            out.add(gram[-1])
    return out


def test_bans_the_token_that_repeats_an_ngram() -> None:
    proc = WindowedNoRepeatNGramLogitsProcessor(ngram_size=3, window=90, prompt_length=0)
    # "1 2 3 ... 1 2" -> writing 3 would repeat "1 2 3"
    assert banned(proc, [[1, 2, 3, 4, 5, 1, 2]]) == [{3}]
    # no earlier "5 9 *" -> nothing banned
    assert banned(proc, [[1, 2, 3, 4, 5, 9]]) == [set()]


def test_several_continuations_are_all_banned() -> None:
    proc = WindowedNoRepeatNGramLogitsProcessor(ngram_size=2, window=90, prompt_length=0)
    assert banned(proc, [[7, 1, 7, 2, 7, 3, 7]]) == [{1, 2, 3}]


def test_window_edge() -> None:
    # Sequence of length 10; "1 2 3" starts at index 0.
    seq = [1, 2, 3, 10, 11, 12, 13, 14, 1, 2]
    # window 10 covers index 0: banned
    p10 = WindowedNoRepeatNGramLogitsProcessor(ngram_size=3, window=10, prompt_length=0)
    assert banned(p10, [seq]) == [{3}]
    # window 9 starts at index 1: the n-gram "1 2 3" has left the window
    p9 = WindowedNoRepeatNGramLogitsProcessor(ngram_size=3, window=9, prompt_length=0)
    assert banned(p9, [seq]) == [set()]


def test_window_smaller_than_ngram_bans_nothing() -> None:
    proc = WindowedNoRepeatNGramLogitsProcessor(ngram_size=4, window=3, prompt_length=0)
    assert banned(proc, [[5, 5, 5, 5, 5, 5, 5]]) == [set()]


def test_prompt_is_excluded() -> None:
    # The prompt holds "1 2 3"; the generated part ends in "1 2".
    seq = [1, 2, 3, 9, 1, 2]
    from_prompt = WindowedNoRepeatNGramLogitsProcessor(ngram_size=3, window=90, prompt_length=4)
    assert banned(from_prompt, [seq]) == [set()]
    everything = WindowedNoRepeatNGramLogitsProcessor(ngram_size=3, window=90, prompt_length=0)
    assert banned(everything, [seq]) == [{3}]


def test_prompt_length_inferred_from_first_call() -> None:
    proc = WindowedNoRepeatNGramLogitsProcessor(ngram_size=2, window=90)
    assert banned(proc, [[4, 4, 4, 4]]) == [set()]  # first call: all prompt
    assert proc.prompt_length == 4
    assert banned(proc, [[4, 4, 4, 4, 6, 7, 6]]) == [{7}]


def test_whitelisted_tokens_are_never_banned() -> None:
    td, end_td = 40, 41
    seq = [td, 5, end_td, td, 5]  # a repeated table cell: "<td> 5 </td> <td> 5"
    plain = WindowedNoRepeatNGramLogitsProcessor(ngram_size=3, window=90, prompt_length=0)
    assert banned(plain, [seq]) == [{end_td}]
    white = WindowedNoRepeatNGramLogitsProcessor(
        ngram_size=3, window=90, prompt_length=0, whitelist_token_ids={td, end_td}
    )
    assert banned(white, [seq]) == [set()]
    # n-grams without whitelisted tokens are still guarded
    assert banned(white, [[1, 2, 3, td, 1, 2]]) == [{3}]


def test_a_looping_table_is_stopped() -> None:
    """Rows "<tr><td> 7 </td><td> 8 </td></tr>" repeating: every 4-gram holds a cell tag, yet
    the guard stops the loop (DeepSeek exempts tags only as the banned next token)."""
    tr, end_tr, td, end_td, other = 30, 31, 40, 41, 49
    row = [tr, td, 7, end_td, td, 8, end_td, end_tr]
    guard = WindowedNoRepeatNGramLogitsProcessor(
        ngram_size=4, window=90, prompt_length=0, whitelist_token_ids={td, end_td}
    )
    # after "</tr> <tr> <td>" the loop would write 7 again: banned
    assert banned(guard, [row * 3 + [tr, td]]) == [{7}]
    # ... but a cell tag as the next token never is
    assert banned(guard, [row * 3 + [tr, td, 7]]) == [set()]
    # A greedy "model" that always prefers to continue the loop, else writes `other`.
    seq = row * 2
    for _ in range(40):
        scores = torch.zeros(1, VOCAB)
        scores[0, other] = 0.5
        scores[0, row[len(seq) % len(row)]] = 1.0
        seq.append(int(guard(torch.tensor([seq]), scores).argmax()))
    assert other in seq[len(row) * 2 :], "the table loop was never broken"


def test_batch_rows_are_independent() -> None:
    proc = WindowedNoRepeatNGramLogitsProcessor(ngram_size=3, window=90, prompt_length=2)
    rows = [
        [0, 0, 1, 2, 3, 1, 2],  # bans 3
        [0, 0, 1, 2, 4, 1, 2],  # bans 4
        [0, 0, 9, 8, 7, 6, 5],  # bans nothing
    ]
    assert banned(proc, rows) == [{3}, {4}, set()]


def test_other_scores_are_untouched() -> None:
    proc = WindowedNoRepeatNGramLogitsProcessor(ngram_size=2, window=90, prompt_length=0)
    scores = torch.randn(1, VOCAB)
    out = proc(torch.tensor([[3, 8, 3]]), scores.clone())
    keep = torch.ones(VOCAB, dtype=torch.bool)
    keep[8] = False
    assert torch.equal(out[0, keep], scores[0, keep])
    assert out[0, 8] == -float("inf")


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_on_random_sequences(seed: int) -> None:
    rng = random.Random(seed)
    n, window = rng.choice([(2, 7), (3, 12), (4, 30)])
    prompt = rng.randint(0, 5)
    whitelist = {0, 1} if seed % 2 else set()
    rows = [[rng.randint(0, 5) for _ in range(prompt + rng.randint(40, 60))] for _ in range(4)]
    width = min(len(r) for r in rows)
    rows = [r[:width] for r in rows]
    proc = WindowedNoRepeatNGramLogitsProcessor(
        ngram_size=n, window=window, prompt_length=prompt, whitelist_token_ids=whitelist
    )
    got = banned(proc, rows, vocab=6)
    want = [reference(r, n, window, prompt, whitelist) for r in rows]
    assert got == want
    assert any(want), "test sequences should exercise at least one ban"


def test_invalid_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        WindowedNoRepeatNGramLogitsProcessor(ngram_size=0)
    with pytest.raises(ValueError):
        WindowedNoRepeatNGramLogitsProcessor(window=0)
