"""Run the fault corpus (tests/faultgen.py) through the CLI and print its outcomes as a table.

Each case: its exit code, the stderr line that names the bad input, whether the good document
beside it was converted, and the wall time (a hang would show as the 120 s limit). The test
suite asserts the same per case (tests/test_faults.py); this prints what a user would see.

    python bench/faults.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT

sys.path.insert(0, str(ROOT / "tests"))
from docgen import labelled_pdf
from faultgen import CASES, NEEDS_NON_ROOT, Fault

SUMMARY = re.compile(r"ocrpress: \d+ documents?, ")


def run(name: str, root: Path) -> tuple[str, int | None, str, bool, float, bool]:
    inp = root / "in"
    inp.mkdir()
    labelled_pdf(inp / "good.pdf", 2)
    fault: Fault = CASES[name](inp, root)
    out = fault.out or root / "out"
    args = fault.args if fault.args is not None else [str(inp)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **fault.env}
    cmd = [sys.executable, "-m", "ocrpress", "convert", *args, "-o", str(out)]
    cmd += ["--engine", fault.engine, *fault.extra]
    if "--workers" not in fault.extra:
        cmd += ["--workers", "0"]
    if "--ocr" not in fault.extra:
        cmd += ["--ocr", "always"]  # as the fault corpus tests: faults, not text-layer routing
    t0 = time.perf_counter()
    try:
        if fault.prime is not None:
            subprocess.run(cmd, input=fault.stdin, capture_output=True, env=env, timeout=120)
            fault.prime(out)
        r = subprocess.run(
            cmd,
            input=fault.stdin,
            capture_output=True,
            env=env,
            timeout=120,
            preexec_fn=fault.preexec,
        )
        code: int | None = r.returncode
        err = r.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        code, err = None, "(hang: killed after 120 s)"
    finally:
        if fault.hold is not None:
            fault.hold.close()
    wall = time.perf_counter() - t0
    lines = [ln for ln in err.splitlines() if ln.strip() and not SUMMARY.match(ln)]
    said = (
        next((ln for ln in lines if all(w in ln for w in fault.words)), "") if fault.words else ""
    )
    said = said.replace(str(root) + "/", "").replace(str(root), "")
    good = (out / "good.md").is_file() and "good.pdf p2" in (out / "good.md").read_text()
    ok = code == fault.code and "Traceback" not in err and (good or not fault.good)
    return said or "-", code, "Traceback" if "Traceback" in err else "", good, wall, ok


def main() -> None:
    rows = []
    for name in sorted(CASES):
        if name in NEEDS_NON_ROOT and os.geteuid() == 0:
            rows.append(f"| {name} | skipped (root reads any file) | | | |")
            continue
        with tempfile.TemporaryDirectory(prefix="ocrpress-fault-") as tmp:
            said, code, tb, good, wall, ok = run(name, Path(tmp))
        said = said.replace("|", "\\|")
        mark = "ok" if ok else "**FAILED**"
        rows.append(
            f"| {name} | {code} | {said[:110]} | {'yes' if good else 'no'} | {wall:.1f}"
            f" | {mark}{tb} |"
        )
    print("| case | exit | the line on stderr | good.pdf converted | s | outcome |")
    print("|---|---:|---|---|---:|---|")
    print("\n".join(rows))
    print(f"\n{sum('| ok |' in r for r in rows)} of {len(rows)} cases as documented")


if __name__ == "__main__":
    main()
