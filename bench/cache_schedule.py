"""What the decode cache's schedule costs a graphed decode step, counted over a long job.

A graphed (fixed-shape) decode step reads every column of the cache's buffer, and its graphs
point into that buffer: each new buffer means a new capture for every rows bucket it meets.
This runs ocrpress's own refill decoder, cache and fixed-shape steps over a job of the GPU
run's shape (192 gundam pages of 1,121 prompt positions and 900 tokens, 128 slots, the cache
budget of an 80 GB card) with a stand-in model that has no weights (each page stops at its
planned length), and counts, side by side for the settings given:

- steps, cache buffers made, and graphs a CUDA run would capture ((buffer, rows bucket)
  pairs met);
- columns a step reads: the buffer's, against the live window, and against the keys the
  running rows own (a row's span; left of it, padding).

    python bench/cache_schedule.py
    python bench/cache_schedule.py --tokens 300-1500 --pages 512

Nothing here is timed: the counts are the schedule's, the same on any machine. What a capture
and a column cost is the GPU run's to measure (bench/gpu_profile.py --graphs).
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from ocrpress.engines.decode_graphs import bucket
from ocrpress.engines.refill import RefillDecoder
from ocrpress.engines.refill_items import Prepared
from ocrpress.engines.refill_rows import Running

EOS, GO = 0, 1


class StandIn(torch.nn.Module):
    """Two layers whose keys hold each page's planned end (its first prompt token); a row
    emits EOS at that position. Takes the decoder's 2D masks and the fixed step's 4D ones."""

    config = SimpleNamespace(_attn_implementation="sdpa")  # fixed-shape steps allowed
    LAYERS = 2

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
    ) -> SimpleNamespace:
        n, length = input_ids.shape
        prefill = past_key_values is None
        cache = DynamicCache() if prefill else past_key_values
        if prefill:
            pos = torch.arange(length).expand(n, length)
            k = input_ids[:, :1].float().expand(n, length)[:, None, :, None]
        else:
            assert position_ids is not None
            pos, k = position_ids, torch.zeros(n, 1, 1, 1)
        for i in range(self.LAYERS):
            if prefill:
                cache.update(k, -k, i)
                keys = cache.layers[i].keys
            else:
                keys, _ = cache.layers[i].update(k, -k)
        seen = attention_mask.bool()
        if seen.dim() == 4:  # the fixed step's: (rows, 1, 1, columns)
            seen = seen[:, 0, 0, :]
        planned = (keys[: len(seen), 0, :, 0] * seen).amax(1).long()
        nxt = torch.where(pos[: len(seen), -1] + 1 >= planned, EOS, GO)
        logits = torch.zeros(len(seen), 1, 2)
        logits[torch.arange(len(seen)), 0, nxt] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=cache)


@dataclass
class Counts:
    steps: int = 0
    buffers: set[int] = field(default_factory=set)
    shifts: dict[int, int] = field(default_factory=dict)  # per buffer: windows moved in it
    graphs: set[tuple[int, int]] = field(default_factory=set)  # (buffer, rows bucket)
    read: int = 0  # positions a step reads (graphed: rows bucket x buffer columns)
    window: int = 0  # positions of the live window (running rows x window): what eager reads
    owned: int = 0  # positions the running rows own (their spans)
    buffer_columns: int = 0
    window_columns: int = 0


def run(args: argparse.Namespace, lengths: list[int], graphs: bool) -> Counts:
    """The job's counts, with fixed-shape (graphed) or eager decode steps."""
    counts = Counts()
    grow = Running.grow

    def counted(rows: Running) -> None:
        grow(rows)  # the spans and the mask now hold the step's column; the layer not yet
        first = rows.cache.layers[0]
        n, width = len(rows), first.width + 1
        size = bucket(n, first.capacity)
        counts.steps += 1
        counts.buffers.add(first.buffer)
        counts.shifts[first.buffer] = getattr(first, "shifts", 0)
        counts.graphs.add((first.buffer, size))
        counts.read += size * first.columns if graphs else n * width
        counts.window += n * width
        counts.owned += sum(rows.spans)
        counts.buffer_columns += first.columns
        counts.window_columns += width

    Running.grow = counted  # type: ignore[method-assign]
    try:
        decoder = RefillDecoder(
            StandIn(),
            slots=args.slots,
            eos_ids={EOS},
            device="cpu",
            dtype=torch.float32,
            guard=None,
            prefill_pages=args.prefill_pages,
            cache_positions=args.positions,
            graphs=graphs,
        )
        assert (decoder.fixed is not None) == graphs
        pages = []
        for key, length in enumerate(lengths):
            ids = torch.full((1, args.prompt), GO)
            ids[0, 0] = args.prompt + length  # the planned end, read back from the keys
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            pages.append(Prepared(key, inputs, args.prompt, length + 1))
        done = decoder.run(pages)
        got = sorted(len(t) for t in done.values())
        assert got == sorted(n + 1 for n in lengths), "each page: its tokens, then EOS"
    finally:
        Running.grow = grow  # type: ignore[method-assign]
    return counts


def report(name: str, c: Counts, graphs: bool) -> None:
    def more(a: int, b: int) -> str:
        return f"+{100 * (a / max(1, b) - 1):.1f}%"

    steps = max(1, c.steps)
    print(f"{name}: {c.steps} steps")
    made = f"  cache buffers made: {len(c.buffers)}, windows moved within one: "
    made += f"{sum(c.shifts.values())}"
    if graphs:
        made += f"; graphs to capture: {len(c.graphs)} ({100 * len(c.graphs) / steps:.1f}"
        made += " per 100 steps)"
    print(made)
    print(
        f"  columns a step reads: {c.buffer_columns / steps:.0f} (the buffer's), window "
        f"{c.window_columns / steps:.0f}: {more(c.buffer_columns, c.window_columns)}"
        if graphs
        else f"  columns a step reads: the window's, {c.window_columns / steps:.0f}"
    )
    print(
        f"  positions read over the job: {c.read:,}, {more(c.read, c.owned)} over those the "
        f"rows own ({c.owned:,}; the rest is padding left of younger rows"
        + (", spare and stale columns, and padding rows)" if graphs else ")")
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=192)
    ap.add_argument("--prompt", type=int, default=1121, help="prompt positions (gundam: 1,121)")
    ap.add_argument("--tokens", default="900", help="tokens a page: N, or LO-HI drawn at random")
    ap.add_argument("--slots", type=int, default=128)
    ap.add_argument("--prefill-pages", type=int, default=11)
    ap.add_argument(
        "--positions", type=int, default=650_000, help="the cache's budget (80 GB card)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lo, _, hi = args.tokens.partition("-")
    rnd = random.Random(args.seed)
    lengths = [rnd.randint(int(lo), int(hi or lo)) for _ in range(args.pages)]
    print(
        f"{args.pages} pages of {args.prompt} prompt positions and {args.tokens} tokens, "
        f"{args.slots} slots, budget {args.positions:,} positions"
    )
    for name, graphs in (("fixed-shape (graphed) steps", True), ("eager steps", False)):
        report(name, run(args, lengths, graphs), graphs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
