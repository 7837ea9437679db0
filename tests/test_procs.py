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


FORKSERVER_KILLED = """
import os, signal, time
from multiprocessing import forkserver, util
from ocrpress.render import make_pool
pool = make_pool(1)
assert pool.submit(sum, [1, 2]).result(timeout=60) == 3
folder, pid = util.get_temp_dir(), forkserver._forkserver._forkserver_pid
os.kill(pid, signal.SIGTERM)  # someone else's signal: this process lives on
deadline = time.monotonic() + 30
while time.monotonic() < deadline:  # dead (a zombie until multiprocessing reaps it)
    with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
            break
    time.sleep(0.05)
pool.shutdown()
# The folder of the forkserver's socket is this process's to remove (it lives): kept, so
# that the next pool's forkserver can start in it.
assert os.path.isdir(folder), folder
pool = make_pool(1)
assert pool.submit(sum, [3, 4]).result(timeout=60) == 7
pool.shutdown()
print("ok")
"""


def test_a_forkserver_killed_while_the_main_lives_leaves_its_folder() -> None:
    """The forkserver removes the main process's multiprocessing folder when it outlives the
    main; killed by another process's signal while the main lives, it must leave the folder,
    or every later pool of the main fails to start (found as six failures in one test run)."""
    done = subprocess.run(
        [sys.executable, "-c", FORKSERVER_KILLED], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
