"""Several engine replicas on one machine: ``--devices all|0,2``: which GPUs, and planning
batches in the main process without a model. The replicas' worker processes are
:mod:`ocrpress.device_pool`'s: one per GPU, each with ``CUDA_VISIBLE_DEVICES`` set before torch
touches CUDA; a free replica takes the next batch, so pages are balanced dynamically. Results
come back to the main process, which journals and writes them exactly as with one device.

The main process never loads the model: it plans batches with a *planner* (name, model, mode
and ``plan(page)``). An engine module may define ``planner(opts)`` (DeepSeek's reads only its
config file); other engines (rapid, plugins) are cheap to construct and plan themselves.

Testing without GPUs: ``OCRPRESS_FAKE_GPUS=N`` pretends N GPUs exist (ids 0..N-1); workers still
get their own ``CUDA_VISIBLE_DEVICES``, but nothing checks that a GPU is behind it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from .device_pool import DeviceError, DevicePool
from .document import PageImage
from .engines import (
    EngineOptions,
    PagePlan,
    check_auto_mode,
    create_engine,
    engine_spec,
    resolve_engine_name,
)

log = logging.getLogger("ocrpress")

FAKE_GPUS_ENV = "OCRPRESS_FAKE_GPUS"

__all__ = ["DeviceError", "DevicePool", "Planner", "make_planner", "resolve_devices"]

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
