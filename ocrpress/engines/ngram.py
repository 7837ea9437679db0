"""Windowed no-repeat-n-gram guard against the repetition loops of DeepSeek-OCR decoding.

transformers' ``no_repeat_ngram_size`` looks at the whole sequence (prompt included) and has
neither a window nor a whitelist; DeepSeek's own guard (n=30, window 90, ``<td>``/``</td>``
exempt as the banned token) needs both, so this is a small LogitsProcessor of its own,
vectorised over the batch so that it adds no host-device synchronisation per step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import LogitsProcessor


class WindowedNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Ban a token that would repeat an n-gram seen in the last ``window`` generated tokens.

    Only generated tokens count: the first ``prompt_length`` columns of ``input_ids`` are the
    prompt (image placeholders repeat by design). A ``whitelist_token_ids`` token is never
    banned, as in DeepSeek's own guard: a table may always open or close a cell, but an n-gram
    that merely *contains* ``<td>`` still bans its other continuations, so a table whose rows
    repeat forever is stopped. Each batch row is judged on its own tokens.

    ``prompt_length=None`` takes the width of ``input_ids`` at the first call as the prompt
    length; use a fresh instance per ``generate`` call then. Left padding keeps all rows'
    generated tokens in the same columns, so one prompt length serves a padded batch too.
    """

    def __init__(
        self,
        ngram_size: int = 30,
        window: int = 90,
        prompt_length: int | None = None,
        whitelist_token_ids: Iterable[int] = (),
    ) -> None:
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.ngram_size = ngram_size
        self.window = window
        self.prompt_length = prompt_length
        self.whitelist_token_ids = sorted(set(whitelist_token_ids))
        self._whitelist: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        n = self.ngram_size
        generated = input_ids[:, self.prompt_length :]
        length = generated.shape[1]
        if length < n:  # need a full earlier n-gram and a prefix of n-1 tokens
            return scores
        recent = generated[:, max(0, length - self.window) :]
        if recent.shape[1] < n:
            return scores
        grams = recent.unfold(1, n, 1)  # (batch, k, n): every n-gram inside the window
        prefix = generated[:, length - n + 1 :]  # (batch, n-1): the n-gram being formed
        match = (grams[:, :, :-1] == prefix[:, None, :]).all(dim=-1)
        if self.whitelist_token_ids:
            if self._whitelist is None or self._whitelist.device != input_ids.device:
                self._whitelist = torch.tensor(self.whitelist_token_ids, device=input_ids.device)
            match &= ~torch.isin(grams[:, :, -1], self._whitelist)
        vocab = scores.shape[-1]
        # Unmatched n-grams point at a spare column so that every scatter writes True
        # (scatter with duplicate indices and mixed values is nondeterministic).
        targets = torch.where(match, grams[:, :, -1], vocab)
        banned = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, targets, True)
        return scores.masked_fill(banned[:, :vocab], -float("inf"))
