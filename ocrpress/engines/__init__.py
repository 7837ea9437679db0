"""Engine protocol, options and registry.

An engine owns only the model: it says how a page will be processed (:meth:`Engine.plan`)
and turns a batch of pages into results (:meth:`Engine.run`). The pipeline owns batching,
ordering, retries and I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..document import PageImage, PageResult
from ..modes import DEFAULT_MAX_COMPRESSION

log = logging.getLogger("ocrpress")

ENGINES = ("auto", "rapid", "deepseek", "vllm")
TASKS = ("markdown", "text", "figure")


class EngineError(RuntimeError):
    """The engine could not be created (model missing, dependency missing, bad mode)."""


@dataclass(frozen=True)
class PagePlan:
    """How an engine will process one page: pages with equal ``batch_key`` batch together."""

    batch_key: Hashable
    vision_tokens: int | None = None
    tiles: tuple[int, int] | None = None


@dataclass
class EngineOptions:
    """Everything that decides what an engine produces (and so goes into resume fingerprints)."""

    engine: str = "auto"
    model: str | None = None
    mode: str | None = None  # None: the engine's default
    task: str = "markdown"
    prompt: str | None = None
    max_new_tokens: int = 8192
    max_tiles: int = 6
    min_tiles: int = 2
    ngram_size: int = 30
    ngram_window: int = 90
    batch_size: int | None = None  # None: engine picks (from GPU memory for VLMs)
    device: str | None = None  # "cuda", "cuda:1", "cpu"; None: best available
    dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU
    # --mode auto: text tokens per vision token a chosen mode may carry at most, and the
    # engine that reads a page no mode could (see ocrpress.escalation).
    max_compression: float = DEFAULT_MAX_COMPRESSION
    fallback: str = "rapid"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def auto_mode(self) -> bool:
        return self.mode == "auto"

    def fingerprint(self) -> dict[str, Any]:
        """The options that change outputs (batch size and device do not)."""
        d = asdict(self)
        for k in ("batch_size", "device", "extra"):
            d.pop(k)
        if not self.auto_mode:  # outputs of fixed-mode runs keep their fingerprints
            d.pop("max_compression")
            d.pop("fallback")
        return d


@dataclass
class Usage:
    """What an engine's device has done so far (cumulative; the run's stats take deltas).

    ``device_seconds``: time the device step ran (forward passes, synchronised).
    ``slot_tokens`` / ``slot_capacity``: tokens decode steps produced / steps x decode slots.
    ``prepared_ahead``: pages whose model inputs the render workers made.
    ``parked``: pages moved to host memory mid-decode because the cache's memory ran short.
    """

    device_seconds: float = 0.0
    slot_tokens: int = 0
    slot_capacity: int = 0
    prepared_ahead: int = 0
    parked: int = 0

    def minus(self, before: Usage) -> Usage:
        return Usage(
            self.device_seconds - before.device_seconds,
            self.slot_tokens - before.slot_tokens,
            self.slot_capacity - before.slot_capacity,
            self.prepared_ahead - before.prepared_ahead,
            self.parked - before.parked,
        )


#: What a page source gives when it has no more pages (engine streams, refill decoding).
STREAM_END: Any = type("StreamEnd", (), {"__repr__": lambda self: "STREAM_END"})()


@runtime_checkable
class ReportsUsage(Protocol):
    """Optional engine method: device time and decode-slot counters (VLM engines). Engines
    without it are timed around their ``run`` calls instead."""

    def usage(self) -> Usage: ...


@runtime_checkable
class Engine(Protocol):
    name: str
    model: str | None
    mode: str | None
    max_batch_size: int

    def plan(self, page: PageImage) -> PagePlan: ...

    def run(self, batch: list[PageImage]) -> list[PageResult]: ...

    def close(self) -> None: ...


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_engine_name(opts: EngineOptions) -> tuple[str, str]:
    """Return (engine name, reason) for ``opts.engine``; resolves ``auto``."""
    if opts.engine != "auto":
        return opts.engine, "chosen with --engine"
    from .deepseek_spec import DEFAULT_MODEL, model_available

    # The model first: looking it up is a file check, asking for CUDA imports torch (~2 s),
    # which a machine without the model never needs.
    model = opts.model or DEFAULT_MODEL
    if not model_available(model):
        return "rapid", f"model {model!r} is neither cached nor a local folder"
    if not cuda_available():
        return "rapid", f"model {model!r} available but no CUDA GPU"
    return "deepseek", f"CUDA GPU and model {model!r} available"


#: Built-in engines as ``module:Class`` specs: loaded the same way as plugins.
BUILTIN_ENGINES = {
    "rapid": "ocrpress.engines.rapid:RapidEngine",
    "deepseek": "ocrpress.engines.deepseek:DeepSeekEngine",
    "vllm": "ocrpress.engines.vllm:VllmEngine",
}


#: Built-in engines that need an optional extra (engine name -> the module it provides).
ENGINE_EXTRAS = {"vllm": "vllm"}


def engine_spec(name: str) -> str | None:
    """``module:Class`` of a built-in engine name or a plugin spec; None if it is neither."""
    spec = BUILTIN_ENGINES.get(name, name)
    return spec if ":" in spec else None


def check_auto_mode(name: str, opts: EngineOptions) -> None:
    """EngineError if engine ``name`` cannot read each page in its own mode (``--mode auto``)."""
    if opts.auto_mode and name == "vllm":
        raise EngineError(
            "--mode auto needs --engine deepseek: vLLM's DeepSeek-OCR processor counts image"
            " tokens from fixed gundam constants, so vLLM reads every page in one mode"
        )


def create_engine(opts: EngineOptions) -> Engine:
    """Instantiate the engine named by ``opts.engine`` (``auto`` resolved)."""
    name, reason = resolve_engine_name(opts)
    if opts.engine == "auto":
        log.info("engine auto -> %s (%s)", name, reason)
    check_auto_mode(name, opts)
    spec = engine_spec(name)
    if spec is None:
        raise EngineError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")
    try:
        return _load_plugin(spec, opts)
    except EngineError as e:
        extra = ENGINE_EXTRAS.get(name)
        if extra is None or f"ocrpress[{extra}]" in str(e) or _importable(extra):
            raise
        # The engine checks its model (and mode) before it needs the extra; "model not found"
        # alone would send a user without the extra to download a model first.
        raise EngineError(
            f"--engine {name} needs the optional {extra} package, which is not installed"
            f" (pip install 'ocrpress[{extra}]'); besides: {e}"
        ) from None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _load_plugin(spec: str, opts: EngineOptions) -> Engine:
    """``package.module:ClassName`` -> ``ClassName(opts)`` (built-in engines and plugins)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise EngineError(f"cannot load engine {spec!r}: {e}") from None
    engine = factory(opts)
    if not isinstance(engine, Engine):
        raise EngineError(f"{spec!r} does not implement the Engine protocol")
    return engine
