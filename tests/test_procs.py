"""The forkserver's last act when the main process is killed: its children go first."""

from __future__ import annotations

import subprocess
import sys

SNIPPET = """
import os, subprocess
from ocrpress.procs import children, kill_children, _alive
kids = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
assert sorted(children(os.getpid())) == sorted(k.pid for k in kids), children(os.getpid())
kill_children()
# Reaped, not just signalled: nothing of them is left to write anywhere.
assert not any(_alive(k.pid) for k in kids)
assert children(os.getpid()) == []
print("ok")
"""


def test_kill_children_kills_and_reaps_them() -> None:
    # In a process of its own: the test runner's own children must not be touched.
    done = subprocess.run(
        [sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
