"""Reading quality on the dev set: the CLI over ../shared/devset/pages, scored per kind.

Runs ``ocrpress convert PAGES -o OUT -f text`` as a user would (extra CLI options after
``--``, e.g. ``-- --ocr always``), then the dev set's own scorer, and prints its per-kind
table (macro and micro CER, WER, bag-of-words F1) with the dev set's baselines beside it.
The dev set is a sample of kinds, not a target: compare before and after a change to
reading, layout or routing, per kind.

    python bench/quality.py                    # default options (what users get)
    python bench/quality.py -- --ocr always    # OCR every page, text layers ignored
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVSET = ROOT.parent / "shared" / "devset"

# Macro CER per kind from the dev set's README (one-page PDFs OCR'd like the images).
BASELINES = {
    "multi-column": (0.676, 0.035),
    "single-column": (0.018, 0.009),
    "form": (0.198, 0.156),
    "table": (0.158, 0.150),
    "slides": (0.136, 0.100),
    "receipt-invoice": (0.213, 0.363),
    "scanned": (0.344, 0.212),
    "ALL": (0.278, 0.160),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devset", type=Path, default=DEVSET, help="the dev set folder")
    ap.add_argument("--out", type=Path, default=None, help="keep outputs here")
    ap.add_argument("--engine", default="rapid")
    ap.add_argument("cli_args", nargs="*", help="more ocrpress convert options (after --)")
    args = ap.parse_args()
    pages = args.devset / "pages"
    if not pages.is_dir():
        sys.exit(f"no dev set at {args.devset} (pass --devset)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "out"
        cmd = [sys.executable, "-m", "ocrpress", "convert", str(pages), "-o", str(out)]
        cmd += ["-f", "text", "--engine", args.engine, "--overwrite", *args.cli_args]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if run.returncode not in (0, 1):
            sys.exit(f"ocrpress failed ({run.returncode}):\n{run.stderr}")
        score = subprocess.run(
            [sys.executable, str(args.devset / "score.py"), str(out), "--quiet"],
            capture_output=True,
            text=True,
            check=True,
        )
    n = sum(1 for p in pages.iterdir() if not p.name.endswith(".gt.txt"))
    print(f"ocrpress {' '.join(cmd[4:])}")
    print(f"{n} pages in {wall:.1f} s ({wall / n:.2f} s/page, {os.cpu_count()} CPUs)\n")
    print(score.stdout.rstrip())
    print("\nmacro CER per kind: ocrpress | plain line join | Tesseract 5.3 (dev set README)")
    for line in score.stdout.splitlines():
        m = re.match(r"^(\S+)\s+\d+\s+\d+\s+([\d.]+)", line)
        if m and m.group(1) in BASELINES:
            join, tess = BASELINES[m.group(1)]
            print(f"  {m.group(1):16s} {float(m.group(2)):.3f} | {join:.3f} | {tess:.3f}")


if __name__ == "__main__":
    main()
