"""The options of one conversion run: what the CLI's flags become, minus the engine's own."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import inputs
from .engines import EngineOptions


@dataclass
class ConvertOptions:
    """Options of one conversion run (the CLI's flags, minus the engine's)."""

    output: str | None = None  # folder; "-" streams to stdout; None keeps results in memory
    formats: list[str] = field(default_factory=lambda: ["markdown"])
    dpi: int = inputs.DEFAULT_DPI
    pages: str | None = None
    workers: int | None = None
    window: int | None = None  # pages in flight; None: from batch size and workers
    overwrite: bool = False
    keep_raw: bool = False
    retry_truncated: bool = False
    progress: bool = False
    keep_results: bool = True  # keep page results in the returned DocumentResults
    devices: str | None = None  # "all" or "0,2": one engine replica per GPU (ocrpress.devices)
    wait: bool = False  # output folder locked by another run: wait for it (else LockedError)
    ocr: str = "auto"  # auto | always | never: PDF pages from their text layer (ocrpress.routing)
    engine: EngineOptions = field(default_factory=EngineOptions)
