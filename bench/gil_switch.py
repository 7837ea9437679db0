"""How long a GPU decode loop would wait for the GIL beside a busy Python thread, by the
interpreter's switch interval.

With CUDA graphs a decode step is a wait for the device (the GIL released) and a few dozen
small ops on the host, each of which releases and takes back the GIL. Beside a thread
running pure Python (post-processing: token decoding, parsing, writing), each take-back can
wait up to the switch interval (5 ms by default), longer than a graphed step. This times a
stand-in loop (a 5 ms sleep for the device, then 30 small torch ops) alone and beside such a
thread, at each switch interval given, side by side in one run.

    python bench/gil_switch.py [--seconds 4] [--intervals 5,1,0.5]
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time

import torch


def steps_per_second(seconds: float, device_s: float = 0.005, ops: int = 30) -> float:
    x, lin = torch.zeros(64), torch.nn.Linear(64, 64)
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - t0 < seconds:
            time.sleep(device_s)  # the device runs the step; the host waits, GIL released
            for _ in range(ops // 3):
                torch.relu(lin(x) + 1)
            n += 1
    return n / (time.perf_counter() - t0)


def python_work(stop: threading.Event) -> None:
    """Pure Python, as a page's post-processing is: split, count, match."""
    text = "<|ref|>word<|/ref|> " * 500
    pattern = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>")
    while not stop.is_set():
        sum(len(w) for w in text.split())
        pattern.findall(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--intervals", default="5,1,0.5", help="switch intervals in ms")
    args = ap.parse_args()
    torch.set_num_threads(1)
    default = sys.getswitchinterval()
    print(f"{'switch interval':>16} {'alone':>12} {'beside Python':>14} {'ratio':>6}")
    try:
        for ms in (float(v) for v in args.intervals.split(",")):
            sys.setswitchinterval(ms / 1000)
            alone = steps_per_second(args.seconds)
            stop = threading.Event()
            worker = threading.Thread(target=python_work, args=(stop,))
            worker.start()
            time.sleep(0.3)
            try:
                beside = steps_per_second(args.seconds)
            finally:
                stop.set()
                worker.join()
            print(f"{ms:13.1f} ms {alone:7.0f} st/s {beside:9.0f} st/s {beside / alone:6.2f}")
    finally:
        sys.setswitchinterval(default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
