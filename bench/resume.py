"""kill -9 the CLI at 20 random moments across one job, resume each time.

Reports whether the final outputs are byte-identical to an uninterrupted run, and how many
pages were computed more than once (goal: at most the pages in flight at each kill, i.e. one
engine batch).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, text_pdf

BATCH = 2


def run_cli(docs: list[Path], out: Path, count_file: Path, kill_after: float | None) -> bool:
    """Run the CLI; SIGKILL it after ``kill_after`` seconds. True if it finished by itself."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "bench"),
        "OCRPRESS_BENCH_COUNT": str(count_file),
    }
    cmd = [sys.executable, "-m", "ocrpress", "convert", *map(str, docs), "-o", str(out), "-q"]
    cmd += ["--engine", "counting_engine:CountingRapid", "--dpi", "48", "-f", "markdown,json"]
    cmd += ["--batch-size", str(BATCH)]
    proc = subprocess.Popen(cmd, env=env)
    try:
        proc.wait(timeout=kill_after)
        return True
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False


def pages_computed(count_file: Path) -> int:
    return len(count_file.read_text().splitlines()) if count_file.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ocrpress-resume-"))
    docs = [text_pdf(tmp / f"doc{i}.pdf", 12, lines_per_page=15, seed=100 * i) for i in range(4)]
    total = 4 * 12

    t0 = time.perf_counter()
    assert run_cli(docs, tmp / "clean", tmp / "clean.count", None)
    clean_s = time.perf_counter() - t0
    print(f"uninterrupted run: {total} pages in {clean_s:.1f} s")

    rng = random.Random(args.seed)
    out, count = tmp / "killed", tmp / "killed.count"
    kills, saved = 0, 0
    lost_per_kill: list[int] = []
    while kills < args.kills and _pages_saved(out) < total:
        before = pages_computed(count)
        # Early kills land in start-up, later ones mid-batch or mid-write: both must be safe.
        if run_cli(docs, out, count, rng.uniform(0.5, min(clean_s, 5.0))):
            break  # the job completed before this kill came
        kills += 1
        # Pages started in this run that no journal or output kept = work lost to the kill.
        now_saved = _pages_saved(out)
        lost_per_kill.append(pages_computed(count) - before - (now_saved - saved))
        saved = now_saved
    run_cli(docs, out, count, None)  # finish the job
    recomputed = pages_computed(count) - total
    same = all(
        filecmp.cmp(tmp / "clean" / f.name, f, shallow=False)
        for f in sorted(out.glob("doc*.*"))
        if f.is_file()
    ) and len(list(out.glob("doc*.*"))) == len(list((tmp / "clean").glob("doc*.*")))
    print(f"kills: {kills}, pages started in all: {pages_computed(count)} for {total} pages")
    print(f"pages recomputed: {recomputed} (max lost at one kill: {max(lost_per_kill or [0])},")
    print(f"  pages in flight per kill at most one batch = {BATCH})")
    print(f"final outputs byte-identical to the uninterrupted run: {same}")


def _pages_saved(out: Path) -> int:
    """Pages kept by journals and finished documents so far."""
    import json

    n = 0
    state = out / ".ocrpress"
    for j in state.glob("*.journal.jsonl"):
        n += max(0, len(j.read_text().splitlines()) - 1)
    for d in state.glob("*.done.json"):
        n += len(json.loads((out / (d.name[: -len(".done.json")] + ".json")).read_text())["pages"])
    return n


if __name__ == "__main__":
    main()
