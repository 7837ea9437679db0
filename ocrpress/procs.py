"""Helper processes never outlive the run: render workers and the forkserver die with it.

A ``kill -9``, SIGTERM or OOM kill of the main process runs no cleanup, so its helpers must
notice by themselves; left alone they live forever, hold ~160 MB and keep the pipes of a
shell pipeline open. Two independent guards:

- ``PR_SET_PDEATHSIG`` (Linux): the kernel sends SIGKILL when the parent dies. The forkserver
  is a child of the main process; render workers are children of the forkserver, so the
  signal travels down the chain.
- A watcher thread in each worker waits on a pidfd of the main process (polling on systems
  without pidfds) and exits the worker when it is gone: this covers kernels or platforms
  without the prctl, and a forkserver that is somehow still alive.

The resource tracker exits by itself once every holder of its pipe (main, forkserver,
workers) is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

#: Set (with the main process's pid) while the forkserver starts, so it knows its parent.
MAIN_PID_ENV = "OCRPRESS_MAIN_PID"
TEMPDIR_ENV = "OCRPRESS_MP_TEMPDIR"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_process(pid: int, on_exit: Callable[[], None] | None = None) -> threading.Thread:
    """Start a daemon thread that calls ``on_exit`` (default: ``os._exit(1)``) once ``pid`` ends."""
    action = on_exit or (lambda: os._exit(1))

    def run() -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            action()
            return
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            select.select([fd], [], [])  # readable when the process has exited
            action()
            return
        while _alive(pid):
            time.sleep(0.5)
        action()

    t = threading.Thread(target=run, name="ocrpress-parent-watch", daemon=True)
    t.start()
    return t


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_init(main_pid: int) -> None:
    """Start of a helper process (a render worker, a device replica): quiet on Ctrl-C, and
    gone with the main process."""
    # Ctrl-C reaches the whole process group; the main process reports it once, workers stay
    # quiet instead of printing a traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the forkserver's handler it inherits
    die_with_parent()
    if not _alive(main_pid):
        os._exit(1)
    watch_process(main_pid)


def _forkserver_guard() -> None:
    """Runs when the forkserver imports this module (it is preloaded): die with the main.

    SIGTERM rather than SIGKILL, so the forkserver can first remove its socket's folder
    (``/tmp/pymp-*``), which the killed main process can no longer remove.
    """
    main_pid = os.environ.get(MAIN_PID_ENV)
    if not (main_pid and main_pid.isdigit()) or os.getpid() == int(main_pid):
        return  # not a forkserver: the variable is set only while one starts
    signal.signal(signal.SIGTERM, _forkserver_exit)
    atexit.register(_remove_socket_folder)  # it also ends by itself when main's pipe closes
    die_with_parent(signal.SIGTERM)
    if os.getppid() != int(main_pid):  # the main process died before the prctl took effect
        _remove_socket_folder()
        os._exit(1)


def _forkserver_exit(signum: int, frame: object) -> None:
    # Render workers are the forkserver's children and die after it; until then one could
    # write a page into the folder while it is being removed, and the folder would stay.
    kill_children()
    # The folder is the main's while it lives (it needs it to start another forkserver): a
    # SIGTERM from someone else must leave it. The parent-death signal can come as the main
    # *thread* ends, while the rest of the main process is still exiting, so the main counts
    # as gone once this process has another parent, waited for a moment. (When the main
    # closes its end of the pipe instead, this process ends through atexit and removes it:
    # the main is exiting, maybe killed before it could.)
    if _main_gone(MAIN_GONE_WAIT):
        _remove_socket_folder()
    os._exit(1)


#: How long a forkserver told to stop waits to see whether the main process is ending.
MAIN_GONE_WAIT = 2.0


def _main_gone(wait: float) -> bool:
    main_pid = os.environ.get(MAIN_PID_ENV, "")
    if not main_pid.isdigit():
        return True
    deadline = time.monotonic() + wait
    while os.getppid() == int(main_pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def children(pid: int) -> list[int]:
    """Pids of ``pid``'s child processes (Linux ``/proc``; empty elsewhere). Read from every
    process's ``stat``: ``/proc/PID/task/PID/children`` needs a kernel option."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def kill_children() -> None:
    """SIGKILL this process's children and reap them, so none runs on after this returns."""
    pids = children(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):  # already reaped (SIGCHLD handler)
            os.waitpid(pid, 0)


def _remove_socket_folder() -> None:
    folder = os.environ.get(TEMPDIR_ENV, "")
    if os.path.basename(folder).startswith("pymp-"):
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def forkserver_env() -> Iterator[None]:
    """While the forkserver starts: tell it the main pid, and keep the cwd off its sys.path.

    The forkserver starts as ``python -c``, which puts the current folder first on sys.path;
    a folder named ``ocrpress`` there (common in a checkout) would shadow the installed
    package in every worker. PYTHONSAFEPATH (Python 3.11+) leaves the cwd out.
    """
    from multiprocessing import util

    keys = (MAIN_PID_ENV, TEMPDIR_ENV, "PYTHONSAFEPATH")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ[MAIN_PID_ENV] = str(os.getpid())
    # The main process's multiprocessing folder (/tmp/pymp-*, the forkserver's socket): the
    # forkserver removes it when the main process dies without removing it itself.
    os.environ[TEMPDIR_ENV] = util.get_temp_dir()
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        with quiet_resource_tracker():
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def quiet_resource_tracker() -> Iterator[None]:
    """While multiprocessing starts its resource tracker (with the first semaphore or the
    forkserver): the tracker unlinks the semaphores a killed run leaves, as it should, but
    warns about each on stderr: noise after a kill."""
    saved = os.environ.get("PYTHONWARNINGS")
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    os.environ["PYTHONWARNINGS"] = ",".join(w for w in (saved, quiet) if w)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = saved


def raise_on_sigterm() -> None:
    """In the main thread: SIGTERM raises :class:`errors.Terminated`, so cleanup runs."""
    from .errors import Terminated

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


_forkserver_guard()
