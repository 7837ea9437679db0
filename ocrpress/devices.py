"""Several engine replicas on one machine: ``--devices all|0,2``.

One worker process per GPU; each takes one device id in its initializer, sets
``CUDA_VISIBLE_DEVICES`` before torch touches CUDA, and creates its engine once. The pipeline
keeps up to one batch per worker in flight and a free worker takes the next batch, so pages are
balanced dynamically. Results come back to the main process, which journals and writes them
exactly as with one device.

The main process never loads the model: it plans batches with a *planner* (name, model, mode
and ``plan(page)``). An engine module may define ``planner(opts)`` (DeepSeek's reads only its
config file); other engines (rapid, plugins) are cheap to construct and plan themselves.

Testing without GPUs: ``OCRPRESS_FAKE_GPUS=N`` pretends N GPUs exist (ids 0..N-1); workers still
get their own ``CUDA_VISIBLE_DEVICES``, but nothing checks that a GPU is behind it.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any, Protocol

from .backoff import limited_batch
from .document import PageImage, PageResult
from .engines import (
    EngineError,
    EngineOptions,
    PagePlan,
    Usage,
    check_auto_mode,
    create_engine,
    engine_spec,
    resolve_engine_name,
)

log = logging.getLogger("ocrpress")

FAKE_GPUS_ENV = "OCRPRESS_FAKE_GPUS"


class DeviceError(EngineError):
    """No usable device, or a device worker could not start or died (CLI exit code 3)."""


# ------------------------------------------------------------------ device ids


def parse_devices(spec: str) -> list[int] | None:
    """``"all"`` -> None; ``"0,2"`` -> [0, 2]. ValueError on anything else."""
    spec = spec.strip()
    if spec == "all":
        return None
    try:
        ids = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--devices takes 'all' or GPU indices like 0,2, not {spec!r}") from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--devices takes 'all' or distinct GPU indices like 0,2, not {spec!r}")
    return ids


def resolve_devices(spec: str) -> list[str]:
    """Device ids to give the workers as ``CUDA_VISIBLE_DEVICES`` values.

    Indices count the GPUs this process sees, so they are mapped through an existing
    ``CUDA_VISIBLE_DEVICES`` (``--devices 1`` under ``CUDA_VISIBLE_DEVICES=4,5`` means GPU 5).
    """
    wanted = parse_devices(spec)
    fake = os.environ.get(FAKE_GPUS_ENV)
    if fake:
        visible = [str(i) for i in range(int(fake))]
    else:
        from .engines import cuda_available

        if not cuda_available():
            raise DeviceError(
                f"--devices {spec} needs CUDA GPUs, but torch sees none; leave --devices out "
                "to run on one device (or the CPU)"
            )
        import torch

        count = torch.cuda.device_count()
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        visible = [s.strip() for s in cvd.split(",")][:count] if cvd else []
        if len(visible) != count:
            visible = [str(i) for i in range(count)]
    if wanted is None:
        return visible
    bad = [i for i in wanted if i >= len(visible)]
    if bad:
        raise DeviceError(f"--devices {spec}: no GPU {bad[0]} (this machine has {len(visible)})")
    return [visible[i] for i in wanted]


# ------------------------------------------------------------------ planning without a model


class Planner(Protocol):
    """What the main process needs to batch pages and fingerprint outputs."""

    name: str
    model: str | None
    mode: str | None

    def plan(self, page: PageImage) -> PagePlan: ...


def make_planner(opts: EngineOptions) -> tuple[Planner, EngineOptions]:
    """A planner for ``opts`` and the options with ``auto`` resolved (what workers create).

    Order: the engine module's ``planner(opts)`` if it has one (DeepSeek's reads only
    config.json); else the engine itself, constructed here (rapid and test engines load
    nothing until they run).
    """
    name, _reason = resolve_engine_name(opts)
    check_auto_mode(name, opts)
    resolved = replace(opts, engine=name)
    spec = engine_spec(name)
    module_name = spec.partition(":")[0] if spec else None
    factory: Callable[[EngineOptions], Planner] | None = None
    if module_name is not None:
        try:
            factory = getattr(importlib.import_module(module_name), "planner", None)
        except ImportError:
            factory = None  # create_engine below gives the proper message
    if factory is None:
        factory = create_engine
    return factory(resolved), resolved


# ------------------------------------------------------------------ worker processes

_WORKER: dict[str, Any] = {}


def _init_worker(devices: Any, opts: EngineOptions) -> None:
    """Runs once per worker: claim a device, then build the engine (errors kept for later)."""
    device = devices.get()
    # Before any CUDA call in this process: the worker then sees exactly one GPU, as cuda:0.
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    _WORKER["device"] = device
    if opts.device and opts.device.startswith("cuda"):
        opts = replace(opts, device="cuda")  # the only visible GPU
    try:
        _WORKER["engine"] = create_engine(opts)
    except BaseException as e:  # reported to the main process by the first task
        _WORKER["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, EngineError) else str(e)


def _engine() -> Any:
    if "error" in _WORKER:
        raise DeviceError(f"device {_WORKER['device']}: {_WORKER['error']}")
    return _WORKER["engine"]


def _worker_info() -> dict[str, Any]:
    eng = _engine()
    return {
        "device": _WORKER["device"],
        "pid": os.getpid(),
        "max_batch_size": int(eng.max_batch_size),
    }


def _worker_run(pages: list[PageImage], retry: bool) -> tuple[list[PageResult], int, str, Usage]:
    """A batch in a worker: (results, lowest batch limit an OOM forced or 0, device, usage)."""
    results, limit, usage = limited_batch(_engine(), pages, retry)
    return results, limit, _WORKER["device"], usage


class DevicePool:
    """N worker processes, one engine replica each; ``submit`` returns a Future."""

    def __init__(self, devices: list[str], opts: EngineOptions) -> None:
        # spawn: a fresh interpreter per worker, so no CUDA state or threads are inherited.
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        for d in devices:
            queue.put(d)
        self.devices = devices
        self.capacity = len(devices)
        self.pages_per_device: dict[str, int] = dict.fromkeys(devices, 0)
        self._pool = ProcessPoolExecutor(
            max_workers=len(devices),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(queue, opts),
        )
        # As many calls as workers: each submit with no idle worker spawns one, so all engines
        # load in parallel from the start.
        self._info = [self._pool.submit(_worker_info) for _ in devices]

    def max_batch_size(self) -> int:
        """Smallest batch size the replicas chose (waits for their engines to load)."""
        sizes = [self._result(f)["max_batch_size"] for f in self._info]
        return max(1, min(sizes))

    def submit(self, pages: list[PageImage], retry: bool) -> Future[Any]:
        return self._pool.submit(_worker_run, pages, retry)

    def result(self, fut: Future[Any]) -> tuple[list[PageResult], int, Usage]:
        results, limit, device, usage = self._result(fut)
        self.pages_per_device[device] = self.pages_per_device.get(device, 0) + len(results)
        return results, limit, usage

    def _result(self, fut: Future[Any]) -> Any:
        try:
            return fut.result()
        except BrokenProcessPool as e:
            raise DeviceError(
                "a device worker died; finished pages are kept, run the same command to resume"
            ) from e

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
