"""Log lines on stderr as ``ocrpress: level: message``, shared by the CLI's commands."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("ocrpress")


class _StderrHandler(logging.Handler):
    """Log lines as ``ocrpress: level: message`` without breaking the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        tqdm.write(f"ocrpress: {level}{record.getMessage()}", file=sys.stderr)


def setup_logging(quiet: bool, verbose: bool) -> None:
    handler = _StderrHandler()
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
