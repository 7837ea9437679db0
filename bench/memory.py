"""Peak memory of a 50-page vs a 1,000-page job (CPU engine, low dpi): goal ratio <= 1.2.

Peak RSS is summed over the whole process tree (the CLI and its render workers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PeakSampler, text_pdf


def peak_rss(pdf: Path, dpi: int) -> tuple[int, float]:
    out = tempfile.mkdtemp()
    cmd = [sys.executable, "-m", "ocrpress", "convert", str(pdf), "-o", out, "-q"]
    cmd += ["--engine", "rapid", "--dpi", str(dpi), "-f", "json"]
    cmd += ["--ocr", "always"]  # the generated PDF has a text layer; memory of OCR is measured
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    if proc.wait() != 0:
        raise SystemExit(f"ocrpress failed on {pdf}")
    return sampler.stop(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", type=int, default=50)
    ap.add_argument("--large", type=int, default=1000)
    ap.add_argument("--dpi", type=int, default=36)
    args = ap.parse_args()
    tmp = Path(tempfile.gettempdir())
    small = text_pdf(tmp / f"ocrpress-bench-{args.small}p.pdf", args.small, lines_per_page=12)
    large = text_pdf(tmp / f"ocrpress-bench-{args.large}p.pdf", args.large, lines_per_page=12)
    s_kib, s_t = peak_rss(small, args.dpi)
    l_kib, l_t = peak_rss(large, args.dpi)
    print(f"{args.small:>5} pages: peak RSS {s_kib / 1024:7.1f} MiB in {s_t:6.1f} s")
    print(f"{args.large:>5} pages: peak RSS {l_kib / 1024:7.1f} MiB in {l_t:6.1f} s")
    print(f"ratio large/small: {l_kib / s_kib:.3f}  (goal <= 1.2)")


if __name__ == "__main__":
    main()
