"""kill -9 (or SIGTERM) the CLI at 20 random moments across one job, resume each time.

Reports whether the final outputs are byte-identical to an uninterrupted run, how many
pages were computed more than once (goal: at most the pages in flight at each kill, i.e. one
engine batch), and how many helper processes (render workers, forkserver, resource tracker)
outlived each kill by more than 2 s, plus what was left in the temp folder (goal: 0).

    python bench/resume.py                 # 20 x kill -9
    python bench/resume.py --signal term   # 20 x SIGTERM
    python bench/resume.py --echo          # a 0.1 s/page stand-in engine: minutes, not an hour
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


ORPHANS: list[int] = []  # processes of the killed run's group alive 2 s after each kill


ENGINE = "counting_engine:CountingRapid"


def run_cli(
    docs: list[Path],
    out: Path,
    count_file: Path,
    kill_after: float | None,
    sig: int = signal.SIGKILL,
    tmpdir: Path | None = None,
) -> bool:
    """Run the CLI; send ``sig`` after ``kill_after`` seconds. True if it finished by itself."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "bench"),
        "OCRPRESS_BENCH_COUNT": str(count_file),
    }
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    cmd = [sys.executable, "-m", "ocrpress", "convert", *map(str, docs), "-o", str(out), "-q"]
    cmd += ["--engine", ENGINE, "--dpi", "48", "-f", "markdown,json"]
    cmd += ["--batch-size", str(BATCH), "--ocr", "always"]  # every page to the engine
    # Its own session, so whatever it started can be found (and counted) afterwards.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
        return True
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)  # the main process only, as the OOM killer or `kill` would
        proc.wait()
        time.sleep(2.0)
        left = group(proc.pid)
        ORPHANS.append(len(left))
        for pid in left:  # never leave them to the next trial
            os.kill(pid, signal.SIGKILL)
        return False


def group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split() if stat else []
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def pages_computed(count_file: Path) -> int:
    return len(count_file.read_text().splitlines()) if count_file.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--signal", choices=["kill", "term"], default="kill")
    ap.add_argument(
        "--echo",
        action="store_true",
        help="a 0.1 s/page stand-in engine instead of rapid OCR (reliability trials in minutes)",
    )
    args = ap.parse_args()
    global ENGINE
    if args.echo:
        ENGINE = "counting_engine:CountingEcho"
    sig = signal.SIGKILL if args.signal == "kill" else signal.SIGTERM
    tmp = Path(tempfile.mkdtemp(prefix="ocrpress-resume-"))
    run_tmp = tmp / "tmpdir"  # the runs' TMPDIR: whatever a kill leaves there is counted
    run_tmp.mkdir()
    # The stand-in engine gets a longer job (8 documents, 0.3 s a page) so that 20 kills,
    # each 0.5 .. 5 s after a start, land before the job is done.
    n_docs = 8 if args.echo else 4
    os.environ.setdefault("ECHO_SECONDS", "0.3")
    docs = [
        text_pdf(tmp / f"doc{i}.pdf", 12, lines_per_page=15, seed=100 * i) for i in range(n_docs)
    ]
    total = n_docs * 12

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
        if run_cli(docs, out, count, rng.uniform(0.5, min(clean_s, 5.0)), sig, run_tmp):
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
    print(f"signal: {args.signal}; helper processes alive 2 s after a kill: {sum(ORPHANS)}")
    print(f"left in the runs' temp folder: {sorted(p.name for p in run_tmp.iterdir())}")
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
