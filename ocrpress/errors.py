"""Errors that stop a whole run, each carrying its exit code (documented in README.md).

Everything that concerns one document (a bad file, a failed page, an unwritable output
subfolder) is that document's one-line error instead, and the batch goes on; only what no
later document could escape stops the job. The CLI catches :class:`OcrpressError` once and
exits with its ``exit_code`` (OCRmyPDF's habit: an exception knows its exit code).
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILED_INPUTS = 1  # some inputs or pages failed; the rest were converted
EXIT_USAGE = 2  # bad options, or no input found (click uses 2 for usage errors too)
EXIT_ENGINE = 3  # the engine or model could not be loaded; nothing was converted
EXIT_OUTPUT = 4  # the output folder cannot be written (not writable, disk full)
EXIT_LOCKED = 5  # another ocrpress run holds the output folder
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT
EXIT_TERMINATED = 143  # SIGTERM (128 + 15)

#: errno values that no later document could escape: the folder or its disk is the problem.
FATAL_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EMFILE}
)


class OcrpressError(Exception):
    """Stops the run: one line on stderr, then ``exit_code``."""

    exit_code = EXIT_FAILED_INPUTS


class UsageError(OcrpressError):
    """Bad options or arguments (e.g. ``-o`` naming a file)."""

    exit_code = EXIT_USAGE


class EngineLoadError(OcrpressError, RuntimeError):
    """The engine cannot start; the whole run stops."""

    exit_code = EXIT_ENGINE


class OutputError(OcrpressError):
    """The output folder cannot be written at all (read-only, full disk); finished
    documents are kept and the same command resumes once the folder is fixed."""

    exit_code = EXIT_OUTPUT


class LockedError(OcrpressError):
    """Another ocrpress run writes into the same output folder."""

    exit_code = EXIT_LOCKED


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so cleanup runs (like KeyboardInterrupt)."""


def is_fatal_write_error(e: BaseException) -> bool:
    """True when a write failed for a reason that every later write would share."""
    return isinstance(e, OSError) and e.errno in FATAL_WRITE_ERRNOS


def describe(e: BaseException) -> str:
    """A few words for an exception: its message, or its type when it has none."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:200] if text else type(e).__name__
