"""What the refill decoder (:mod:`.refill`) takes and tells: prepared pages, the page-source
and step-hook seams, batching of prefill inputs, the experts setting of prefills and decode
steps, the decode steps' attention kernels, counters."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import Any

import torch

from . import STREAM_END
from .deepseek_runtime import text_config

#: What a page source gives when it has no more pages.
END = STREAM_END

#: ``poll(block) -> Prepared | None | END``: the next page, None for none ready yet.
Poll = Callable[[bool], Any]

#: ``(keys of the running rows, tokens each has generated, scores) -> scores``: a seam for
#: benchmarks that force output lengths.
StepHook = Callable[[list[int], torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Prepared:
    """One page ready for the device: model inputs with batch dimension 1 (CPU tensors,
    pinned when the model is on CUDA) and what decoding needs to know about it."""

    key: int
    inputs: dict[str, Any]
    prompt_length: int
    budget: int  # new tokens allowed: max_new_tokens capped at the context


@dataclass
class DecodeStats:
    """Counters of one or more decoding runs (summed by the engine)."""

    slots: int = 0
    steps: int = 0  # batched decode forward passes
    slot_steps: int = 0  # steps x slots: what the steps could have produced
    step_tokens: int = 0  # tokens the steps produced (rows running)
    prefills: int = 0
    parked: int = 0  # rows moved to host memory to keep the cache within its budget
    captures: int = 0  # decode steps captured as CUDA graphs
    device_seconds: float = 0.0  # prefill and decode forward passes, synchronised

    def add(self, other: DecodeStats) -> None:
        for name in (f.name for f in fields(self) if f.name != "slots"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def utilisation(self) -> float | None:
        return self.step_tokens / self.slot_steps if self.slot_steps else None


def decode_experts(model: Any, device: str) -> dict[str, Any] | None:
    """The experts setting for decode steps of few rows (``grouped_mm`` parts switched to
    ``batched_mm``), or None to keep the model's: on the CPU, where ``grouped_mm`` is the
    faster (transformers' ``generate`` keeps it there too), and for models without switchable
    experts. :func:`batched_mm_rows` says up to how many rows the switch pays."""
    if device.startswith("cpu") or not hasattr(model, "get_experts_implementation"):
        return None
    current = model.get_experts_implementation()
    if "grouped_mm" not in current.values():
        return None
    return {k: "batched_mm" if v == "grouped_mm" else v for k, v in current.items()}


class ExpertsPhase:
    """The MoE experts' setting through a decode: the model's own for prefills, ``decode``
    (see :func:`decode_experts`; None: one setting throughout) for decode steps of up to
    ``decode_rows`` rows (None: any). Steps of more rows stay on the prefill setting."""

    def __init__(self, model: Any, decode: dict[str, Any] | None, decode_rows: int | None):
        self.model = model
        self._settings = (model.get_experts_implementation(), decode) if decode else None
        self.decode_rows = decode_rows
        self.decoding = False  # the decode setting is on

    def prefill(self) -> None:
        """The prefill setting, for a prefill call."""
        self._set(False)

    def step(self, rows: int) -> None:
        """The setting for a decode step of ``rows`` rows."""
        self._set(self.decode_rows is None or rows <= self.decode_rows)

    def _set(self, decoding: bool) -> None:
        # On a change only: a switch walks the model's modules.
        if self._settings is None or decoding == self.decoding:
            return
        self.model.set_experts_implementation(self._settings[decoding])
        self.decoding = decoding

    @contextmanager
    def restoring(self) -> Iterator[None]:
        """The model's own setting again when the block ends, however it ends."""
        try:
            yield
        finally:
            self._set(False)


class _CudnnAttentionOff:
    """Counts the forward passes running under it (decode steps; prefills too when the
    engine keeps them off cuDNN), on any thread, and keeps cuDNN attention off while there is
    one, restoring the setting found when the first began.

    PyTorch's backend switches are global to the process, and ``sdpa_kernel`` sets all four
    on entry and restores them on exit, so two overlapping uses on two threads would leave
    cuDNN off (or turn it on under the other); only cuDNN's switch is touched here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._before = True

    def __enter__(self) -> None:
        with self._lock:
            if self._running == 0:
                self._before = torch.backends.cuda.cudnn_sdp_enabled()
                torch.backends.cuda.enable_cudnn_sdp(False)
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                torch.backends.cuda.enable_cudnn_sdp(self._before)


_CUDNN_OFF = _CudnnAttentionOff()


def decode_attention(device: str) -> AbstractContextManager[Any]:
    """The attention kernels for decode steps: PyTorch's others, not cuDNN's, on CUDA.

    A decode step's keys grow by a column every step, and rows joining or leaving change their
    shape again; cuDNN attention (which PyTorch picks for masked attention on an H100) builds
    an execution plan for every new shape. On an H100 a 16-row step took 89.7 ms on new shapes
    against 14.5 ms on shapes seen before (bench/RESULTS.md, session 8); the memory-efficient
    kernel takes any length without a plan (16-20 ms). Prefills keep the default (their
    shapes repeat) unless the engine's ``prefill_cudnn`` is off. The switch is process-wide
    while a step runs (PyTorch has no other)."""
    if not device.startswith("cuda"):
        return nullcontext()
    return _CUDNN_OFF


#: (the attention decode steps run, the decoder's own) where they differ.
AttentionSwitch = tuple[str, str]


def step_attention(model: Any) -> AttentionSwitch | None:
    """SDPA for decode steps, when the decoder was loaded with a flash attention (which
    prefills keep); None: decode steps keep the decoder's own. transformers' flash path
    unpads the keys by the 2D mask at every call: at a decode step that gathers the whole
    live cache, every layer (the copy the in-place cache exists to avoid: ``torch.cat``'s
    like copy took ~8 ms a step at 96 rows of 2,000 positions on an H100), and reads the
    mask's lengths on the host, waiting for the device. SDPA reads the cache where it lies
    and takes the fixed-shape steps' 4D masks."""
    loaded = getattr(text_config(model), "_attn_implementation", None)
    # Any flash flavour: flash_attention_2 or _3, or a kernels-hub name for one.
    if isinstance(loaded, str) and "flash" in loaded.lower():
        return "sdpa", loaded
    return None


@contextmanager
def attention_as(model: Any, switch: AttentionSwitch | None) -> Iterator[None]:
    """The decoder's attention implementation is the switch's first while the block runs,
    and its second (the decoder's own, as loaded) after; None: left as it is.
    transformers' attention layers and mask builder read it from the shared text config at
    every call, so a switch costs an attribute."""
    if switch is None:
        yield
        return
    config = text_config(model)
    config._attn_implementation = switch[0]
    try:
        yield
    finally:
        config._attn_implementation = switch[1]


def batched_mm_rows(model: Any) -> int | None:
    """Most decode rows for which ``batched_mm`` is taken to beat ``grouped_mm``, None when
    unknown: three times the experts over the experts a token (32 rows for DeepSeek-OCR-2's
    64 experts, 6 a token).

    ``batched_mm`` copies the weights of every (token, chosen expert) pair and multiplies the
    copies, so its cost grows with the rows; ``grouped_mm`` reads each expert that has tokens
    once but has a larger fixed cost. On an H100 (session 8, shapes seen before, so no
    attention plans in the timing) ``batched_mm`` took 14-16 ms a step at 1..16 rows, 20 ms at
    32 and 30 ms at 64, ``grouped_mm`` 24 ms at 32 and 18 ms at 64: they cross between 32 and
    64 rows, where the (row, expert) pairs are 3-6 times the experts. On the CPU a step of 96
    rows took 6-8x longer on ``batched_mm`` (bench/RESULTS.md)."""
    text = getattr(getattr(model, "config", None), "text_config", None) or getattr(
        model, "config", None
    )
    experts = getattr(text, "n_routed_experts", None) or getattr(text, "num_experts", None)
    per_token = getattr(text, "num_experts_per_tok", None)
    if not isinstance(experts, int) or not isinstance(per_token, int) or per_token < 1:
        return None
    return max(1, 3 * experts // per_token)


def joined(
    values: list[torch.Tensor], device: str, dtype: torch.dtype, pinned: bool
) -> torch.Tensor:
    """Single-page tensors as one batch on ``device``, floating ones in ``dtype``. ``pinned``
    (each in pinned host memory, the model on CUDA): each is copied without blocking into its
    rows of one device buffer, since a host-side ``cat`` would make one pageable tensor whose
    copy blocks the device thread."""
    if pinned:
        first = values[0]
        batch = torch.empty(
            (sum(v.shape[0] for v in values), *first.shape[1:]),
            dtype=dtype if first.is_floating_point() else first.dtype,
            device=device,
        )
        row = 0
        for v in values:  # one buffer on the device: no second copy to join them
            batch[row : row + v.shape[0]].copy_(v, non_blocking=True)
            row += v.shape[0]
        return batch
    t = torch.cat(values, dim=0)
    return t.to(device, dtype=dtype) if t.is_floating_point() else t.to(device)


def collate(items: list[Prepared], device: str, dtype: torch.dtype) -> dict[str, Any]:
    """One prefill batch from single-page inputs (equal prompt lengths): tensors joined and
    copied without blocking (:func:`joined`), floating tensors cast to the model's dtype."""
    out: dict[str, Any] = {}
    pinned = device.startswith("cuda")  # the engine pins a page's tensors on CUDA
    for name in items[0].inputs:
        values = [it.inputs[name] for it in items]
        if any(v is None for v in values):
            present = [v for v in values if v is not None]
            if not present:
                continue
            values = present  # tiles of the pages that have them (num_local_patches says whose)
        if name == "num_local_patches" and torch.is_tensor(values[0]):
            # The model reads it on the host (``tolist`` for ``torch.split``): on the device,
            # that read would wait for every copy queued before it.
            out[name] = [int(x) for v in values for x in v.reshape(-1).tolist()]
        elif torch.is_tensor(values[0]):
            out[name] = joined(values, device, dtype, pinned)
        else:
            out[name] = [x for v in values for x in v]
    return out
