"""Does page preparation beside the decode loop slow it through the GIL?

A GPU decode step is launch-bound: ~600 small kernel launches, each dispatched in Python and
C++ under the GIL. This times a loop of small torch ops (the same kind of work) alone, beside
a thread preparing gundam A4 pages (as a Ray actor or a replica without enough render workers
does), beside a process doing the same (cores shared, no GIL), and beside two threads. The
thread's cost beyond the process's is the GIL's share.

    python bench/prep_gil.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time

import torch
from _vlm import A4_144DPI, build_model, synthetic_pages

from ocrpress.engines import EngineOptions
from ocrpress.engines.deepseek import DeepSeekEngine


def ops_per_second(seconds: float) -> float:
    """Thousands of small torch ops a second on this thread."""
    x, lin = torch.zeros(64), torch.nn.Linear(64, 64)
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                torch.relu(lin(x) + 1)
            n += 300
    return n / (time.perf_counter() - t0) / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, processor = build_model(True, "cpu", torch.float32)
    opts = EngineOptions(engine="deepseek", model="toy", mode="gundam", device="cpu")
    eng = DeepSeekEngine(opts, components=(model, processor))
    pages = synthetic_pages(4, A4_144DPI, 2)

    def prepare(stop) -> None:
        torch.set_num_threads(1)
        k = 0
        while not stop.is_set():
            eng.prepare(pages[k % len(pages)])
            k += 1

    fork = mp.get_context("fork")

    def beside(make) -> float:
        stop = fork.Event()
        helpers = make(stop)
        for h in helpers:
            h.start()
        time.sleep(1.0)  # let them get going
        try:
            return ops_per_second(args.seconds)
        finally:
            stop.set()
            for h in helpers:
                h.join()

    alone = ops_per_second(args.seconds)
    thread = beside(lambda s: [threading.Thread(target=prepare, args=(s,))])
    process = beside(lambda s: [fork.Process(target=prepare, args=(s,))])
    two = beside(lambda s: [threading.Thread(target=prepare, args=(s,)) for _ in range(2)])
    alone = (alone + ops_per_second(args.seconds)) / 2
    for name, rate in [
        ("alone", alone),
        ("1 prep thread", thread),
        ("1 prep process", process),
        ("2 prep threads", two),
    ]:
        print(f"{name:<15}: {rate:6.1f} k ops/s  ({rate / alone:4.2f} of alone)")
    print(f"GIL's share (thread vs process): {(process - thread) / alone:.0%} of the loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
