"""The isolation rule: what goes wrong with one document is that document's error.

Any exception while one document is read, rendered, converted or written becomes its one-line
error and the batch goes on. The exception is an output folder that no later document could
be written to either (a full disk, a read-only file system, a folder that lost its write
permission): that stops the job as :class:`errors.OutputError` (exit code 4), with every
finished document kept for the next run to skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO

from .errors import OutputError, describe, is_fatal_write_error
from .journal import STATE_DIR


class DocumentWriteError(Exception):
    """One document's output could not be written (the folder itself is fine)."""


@contextlib.contextmanager
def output_guard(out_dir: str | None) -> Iterator[None]:
    """Around a write into ``out_dir``: an error every later write would share becomes
    OutputError; any other OSError becomes this document's DocumentWriteError."""
    try:
        yield
    except OSError as e:
        if out_dir is not None and (is_fatal_write_error(e) or not writable(out_dir)):
            raise OutputError(
                f"-o {out_dir}: {describe(e)}; finished documents are kept,"
                " run the same command again to resume"
            ) from e
        raise DocumentWriteError(f"cannot write ({describe(e)})") from e


def writable(out_dir: str) -> bool:
    """Can anything still be written into the output folder's state folder?"""
    return os.access(os.path.join(out_dir, STATE_DIR), os.W_OK | os.X_OK)


def failure(e: Exception, verb: str) -> str:
    """A document's one-line error for an exception (``verb``: what it was doing)."""
    if isinstance(e, DocumentWriteError):
        return str(e)
    return f"{verb} ({describe(e)})" if isinstance(e, OSError) else describe(e)


def close_quietly(f: IO[str]) -> None:
    """Close a journal whose last flush may fail again (disk full): that error was already
    reported where it happened."""
    with contextlib.suppress(OSError):
        f.close()
