"""Text-layer routing (``--ocr auto``) vs OCR of every page, through the CLI, end to end.

1. Born-digital: a generated 200-page PDF (30 lines of prose a page) with ``--ocr auto``
   (goal >= 50 pages/s), next to a few of its pages OCR'd with ``--ocr always`` for the rate
   OCR would give.
2. Mixed folder: half the pages scans (image-only PDFs, no text layer), half born-digital;
   ``--ocr auto`` vs ``--ocr always`` (goal: auto <= 0.55x the wall time of always).

Each run is a fresh ``ocrpress convert`` process (Python start-up, render worker, writes, the
fsync'ed journal all included). Besides wall time it prints the CPU seconds of the process
tree, which other jobs on a shared machine disturb less.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import _children, text_pdf  # puts tests/ (docgen) on sys.path
from docgen import make_pdf, make_scanned_image, sample_text


def _cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def run_cli(inputs: list[Path], ocr: str, *extra: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one fresh ``ocrpress convert``.

    Render workers are grandchildren (forkserver), which ``RUSAGE_CHILDREN`` never sees, so
    the tree is sampled every 20 ms and each process's last reading counts.
    """
    out = tempfile.mkdtemp(prefix="ocrpress-bench-")
    cmd = [sys.executable, "-m", "ocrpress", "convert", *map(str, inputs), "-o", out, "-q"]
    cmd += ["--engine", "rapid", "-f", "markdown", "--ocr", ocr, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    seen: dict[int, int] = {}
    while proc.poll() is None:
        todo = [proc.pid]
        while todo:
            pid = todo.pop()
            seen[pid] = max(seen.get(pid, 0), _cpu_ticks(pid))
            todo += _children(pid)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode:
        raise SystemExit(f"ocrpress failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, sum(seen.values()) / os.sysconf("SC_CLK_TCK")


def mixed_folder(folder: Path, pages: int) -> list[Path]:
    """``pages`` one-page PDFs in ``folder``: even ones scans, odd ones born-digital."""
    import pymupdf

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(pages):
        path = folder / f"p{k:03d}.pdf"
        if path.exists():
            continue
        lines = sample_text(30, seed=1000 + k)
        if k % 2:
            make_pdf(path, [lines])
            continue
        buf = io.BytesIO()
        make_scanned_image(lines, seed=k).save(buf, format="PNG")
        doc = pymupdf.open()
        page = doc.new_page(width=595, height=842)
        page.insert_image(page.rect, stream=buf.getvalue())
        doc.save(str(path))
        doc.close()
    return sorted(folder.glob("*.pdf"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=200, help="born-digital PDF length")
    ap.add_argument("--ocr-pages", type=int, default=4, help="of those, OCR'd for the rate")
    ap.add_argument("--mixed", type=int, default=8, help="pages in the mixed folder (0: skip)")
    ap.add_argument("--rounds", type=int, default=1, help="best of this many runs each")
    args = ap.parse_args()
    tmp = Path(tempfile.gettempdir())
    pdf = text_pdf(tmp / f"ocrpress-bench-{args.pages}p.pdf", args.pages)
    docs = mixed_folder(tmp / f"ocrpress-bench-mixed-{args.mixed}", args.mixed)

    digital = [run_cli([pdf], "auto") for _ in range(args.rounds)]
    (d_wall, d_cpu) = min(digital)
    (o_wall, o_cpu) = run_cli([pdf], "always", "--pages", f"1-{args.ocr_pages}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load}; best of {args.rounds}")
    d_rate, o_rate = args.pages / d_wall, args.ocr_pages / o_wall
    print(
        f"born-digital {args.pages} pages, --ocr auto : {d_wall:7.2f} s wall "
        f"({d_rate:6.1f} pages/s; {d_cpu:.1f} CPU s)  goal >= 50 pages/s"
    )
    print(
        f"same PDF, {args.ocr_pages} pages, --ocr always: {o_wall:7.2f} s wall "
        f"({o_rate:6.2f} pages/s, start-up included; {o_cpu:.1f} CPU s)"
    )
    print(f"pages/s text layer / OCR: {d_rate / o_rate:.0f}x")
    if args.mixed:
        auto = min(run_cli(docs, "auto") for _ in range(args.rounds))
        always = min(run_cli(docs, "always") for _ in range(args.rounds))
        for name, (wall, cpu) in (("auto  ", auto), ("always", always)):
            print(f"mixed {args.mixed} pages (half scans), --ocr {name}: {wall:7.2f} s wall "
                  f"({cpu:.1f} CPU s)")  # fmt: skip
        print(f"ratio auto / always: {auto[0] / always[0]:.3f} wall, {auto[1] / always[1]:.3f} CPU"
              "  (goal <= 0.55)")  # fmt: skip


if __name__ == "__main__":
    main()
