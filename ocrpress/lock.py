"""One run per output folder: an exclusive lock on ``DIR/.ocrpress/lock``.

Two runs into one folder would both do all the work, and one run's journal handle could
point at a file the other replaced (its later pages then never reach the journal). The lock
is ``flock`` on a file that holds the holder's pid: the kernel drops it when the holder dies
(even by ``kill -9``), so a stale lock file never blocks a later run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from .errors import LockedError, OutputError, UsageError, describe, is_fatal_write_error

LOCK_NAME = "lock"
WAIT_POLL_S = 0.5


def prepare_output(out_dir: str) -> str:
    """Make sure ``out_dir`` is a folder we can write; returns its state folder."""
    from .journal import STATE_DIR

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"-o {out_dir}: exists and is not a folder")
    state = os.path.join(out_dir, STATE_DIR)
    try:
        os.makedirs(state, exist_ok=True)
    except OSError as e:
        raise OutputError(f"-o {out_dir}: cannot write the output folder ({describe(e)})") from e
    return state


@contextlib.contextmanager
def locked_output(out_dir: str, wait: bool = False) -> Iterator[None]:
    """Hold the output folder's lock for the ``with`` block.

    Another run holding it: with ``wait`` block until it ends, otherwise raise LockedError
    naming the holder's pid.
    """
    path = os.path.join(prepare_output(out_dir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise OutputError(f"-o {out_dir}: cannot write the output folder ({describe(e)})") from e
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise LockedError(
                        f"-o {out_dir}: another ocrpress run (pid {_holder(fd)}) is writing"
                        " there; wait for it to end, or pass --wait"
                    ) from None
                if not waited:
                    from logging import getLogger

                    getLogger("ocrpress").info(
                        "-o %s: waiting for the run with pid %s to end", out_dir, _holder(fd)
                    )
                    waited = True
                time.sleep(WAIT_POLL_S)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            if is_fatal_write_error(e):
                raise OutputError(f"-o {out_dir}: {describe(e)}") from e
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiter)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return text if text.isdigit() else "unknown"
