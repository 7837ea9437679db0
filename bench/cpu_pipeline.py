"""ocrpress end to end vs a plain render-then-OCR loop, on a 20-page PDF (CPU engine).

Prints both wall times and their ratio (goal: ocrpress <= 1.05x the loop). Both sides start
from nothing: the loop creates its RapidOCR object and the ocrpress CLI is a fresh process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import text_pdf


def plain_loop(pdf: Path, dpi: int) -> float:
    """What a user would write by hand: render a page, OCR it, next page."""
    t0 = time.perf_counter()
    import numpy as np
    import pymupdf
    from rapidocr import RapidOCR

    # Configured like the rapid engine: the direction classifier off in both.
    ocr = RapidOCR(params={"Global.log_level": "error", "Global.use_cls": False})
    texts = []
    with pymupdf.open(pdf) as doc:
        for page in doc:
            pix = page.get_pixmap(dpi=dpi, alpha=False)
            img = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)
            out = ocr(img[:, :, ::-1].copy())
            texts.append("\n".join(out.txts or ()))
    Path(tempfile.mkdtemp(), "loop.txt").write_text("\f".join(texts))
    return time.perf_counter() - t0


def ocrpress_cli(pdf: Path, dpi: int) -> float:
    out = tempfile.mkdtemp()
    cmd = [sys.executable, "-m", "ocrpress", "convert", str(pdf), "-o", out, "-q"]
    # The generated PDF has a text layer; --ocr always makes ocrpress OCR it, like the loop.
    cmd += ["--engine", "rapid", "--dpi", str(dpi), "-f", "markdown", "--ocr", "always"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--dpi", type=int, default=144)
    ap.add_argument("--rounds", type=int, default=1, help="alternate loop/ocrpress this often")
    args = ap.parse_args()
    pdf = text_pdf(Path(tempfile.gettempdir()) / f"ocrpress-bench-{args.pages}p.pdf", args.pages)
    loops, ours = [], []
    for _ in range(args.rounds):
        loops.append(plain_loop(pdf, args.dpi))
        ours.append(ocrpress_cli(pdf, args.dpi))
    loop_s, ours_s = min(loops), min(ours)
    print(f"pages: {args.pages} at {args.dpi} dpi, rounds: {args.rounds} (best of each)")
    print(f"plain loop      : {loop_s:7.2f} s  ({args.pages / loop_s:.2f} pages/s)")
    print(f"ocrpress convert: {ours_s:7.2f} s  ({args.pages / ours_s:.2f} pages/s)")
    print(f"ratio ocrpress/loop: {ours_s / loop_s:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
