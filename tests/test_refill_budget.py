"""The refill decoder under a cache budget, on a stand-in model whose every token depends on
all the (token, position) pairs its row can see: random prompt and output lengths, slots and
budgets, tokens read at once or a step late. Rows parked and rejoined must give each page the
tokens it gets decoded alone, and no cache buffer of more than one row may outgrow the
budget."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from transformers.cache_utils import DynamicCache

from ocrpress.engines.kv_slab import SlabLayer
from ocrpress.engines.refill import RefillDecoder
from ocrpress.engines.refill_items import Prepared

VOCAB, LAYERS, EOS = 1000, 2, 0


class Echo(torch.nn.Module):
    """Keys are (token, position) pairs; the next token is a hash of the visible ones, and EOS
    once the position reaches the row's first prompt token (its planned length)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
    ) -> SimpleNamespace:
        n, length = input_ids.shape
        prefill = past_key_values is None
        cache = DynamicCache() if prefill else past_key_values
        pos = torch.arange(length).expand(n, length) if prefill else position_ids
        assert pos is not None
        k = torch.stack([input_ids.double(), pos.double()], -1)[:, None]
        for i in range(LAYERS):
            if prefill:
                cache.update(k, -k, i)
            else:
                cache.layers[i].update(k, -k)
        keys = cache.layers[LAYERS - 1].keys
        seen = attention_mask.bool()
        assert seen.shape[1] == keys.shape[2]
        tokens, places = keys[:, 0, :, 0], keys[:, 0, :, 1]
        digest = ((tokens * 31 + places * 7 + 1) * seen).sum(1).long()
        planned = (tokens * seen).max(1).values.long()
        nxt = torch.where(pos[:, -1] + 1 >= planned, EOS, digest % (VOCAB - 2) + 2)
        logits = torch.zeros(n, 1, VOCAB)
        logits[torch.arange(n), 0, nxt] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=cache)


def page(key: int, prompt: int, length: int, rnd: random.Random) -> Prepared:
    ids = torch.tensor([[prompt + length] + [rnd.randint(1, 50) for _ in range(prompt - 1)]])
    mask = torch.ones_like(ids)
    return Prepared(key, {"input_ids": ids, "attention_mask": mask}, prompt, 10_000)


def decoder(slots: int, positions: int | None, read_late: bool = False) -> RefillDecoder:
    return RefillDecoder(
        Echo(),
        slots=slots,
        eos_ids={EOS},
        device="cpu",
        dtype=torch.float32,
        guard=None,
        cache_positions=positions,
        read_late=read_late,
    )


# Four seeds in the quick loop (make test-fast), all sixteen in the whole suite.
@pytest.mark.parametrize(
    "seed", [s if s < 4 else pytest.param(s, marks=pytest.mark.slow) for s in range(16)]
)
def test_random_pages_slots_and_budgets(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(seed)
    pages = []
    for k in range(rnd.randint(2, 30)):
        prompt = rnd.choice([10, 20, 40, 60, 100])
        long = rnd.random() < 0.2  # a page that runs long (a loop, a dense table)
        pages.append(page(k, prompt, rnd.randint(200, 600) if long else rnd.randint(1, 120), rnd))
    alone: dict[int, list[int]] = {}
    for p in pages:
        alone |= decoder(1, None).run([p])

    buffers: list[tuple[int, int]] = []
    realloc = SlabLayer._reallocate

    def spy(self: SlabLayer, *a, **k) -> None:
        realloc(self, *a, **k)
        buffers.append((self._k.shape[0], self._k.shape[2]))

    monkeypatch.setattr(SlabLayer, "_reallocate", spy)
    positions = rnd.randint(300, 4000)
    # Odd seeds read each step's tokens a step late: rows that ended run (and may be parked
    # and rejoin) one step more, and their tokens must not change.
    dec = decoder(rnd.randint(2, 16), positions, read_late=seed % 2 == 1)
    assert dec.run(pages) == alone
    over = [(rows, cols) for rows, cols in buffers if rows > 1 and rows * cols > positions]
    assert not over, (positions, over[:3])
    assert dec.stats.parked <= len(pages)
