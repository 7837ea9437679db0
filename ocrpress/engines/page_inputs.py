"""A page's model inputs (views, tiles, normalised pixels, prompt ids), made where the CPU is.

Preparing a page costs far more than rendering it (on one core: ~50 ms in small mode, ~320 ms
in gundam against ~35 ms to render an A4 page), and in the main process it competes for the
GIL with the decode loop. So the engine hands the pipeline an :class:`InputsRecipe`, a small
picklable description of how its inputs are made, and the render workers prepare each page
right after rendering it: the tensors go to a file in the run's spool folder and the page
carries a :class:`PreparedFile` handle. The engine uses that file when it was made for the
page's mode under the same recipe, and prepares the page itself otherwise (no workers, a page
escalated to another mode, a failed preparation). Both paths run :func:`make_inputs`, so the
tensors are the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

from ..document import PageImage
from ..modes import get_mode

log = logging.getLogger("ocrpress")


@dataclass(frozen=True)
class InputsRecipe:
    """Everything a page's model inputs depend on, but the page."""

    family: str  # "v2" or "v1"
    folder: str  # the checkpoint folder: its tokenizer and processor
    prompt: str
    min_tiles: int
    max_tiles: int
    dtype: str  # torch dtype name of floating inputs ("bfloat16", "float32")
    mode: str  # the engine's mode
    auto: bool  # --mode auto: pages bring their own mode

    def page_mode(self, page: PageImage) -> str:
        return (page.mode if self.auto else None) or self.mode

    def page_bytes(self) -> int:
        """Bytes of one page's pixels at most (its views and tiles in the recipe's dtype):
        ~28 MB for an A4 page in gundam mode in bf16."""
        spec = get_mode(self.family, "gundam" if self.auto else self.mode)
        pixels = spec.base_size**2 + (self.max_tiles * spec.tile_size**2 if spec.tile_size else 0)
        itemsize = 2 if self.dtype in ("bfloat16", "float16") else 4
        return 3 * pixels * itemsize


#: Prepared pages in flight may hold this much memory at most (or a quarter of what is free):
#: the pipeline's window of pages in flight shrinks to fit (see :func:`window_for`).
PREPARED_BUDGET = 16 * 2**30


def available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def window_for(
    recipe: InputsRecipe, window: int, floor: int, folder: str = "", replicas: int = 1
) -> int:
    """The pipeline's window of pages in flight, shrunk (not below ``floor``) so that their
    prepared inputs fit :data:`PREPARED_BUDGET` for each engine replica they are made for, a
    quarter of the free memory, and half the free space of ``folder`` (where the workers
    leave them)."""
    budget = PREPARED_BUDGET * replicas
    free = available_memory()
    if free:
        budget = min(budget, free // 4)
    if folder:
        with contextlib.suppress(OSError):
            budget = min(budget, shutil.disk_usage(folder).free // 2)
    return max(floor, min(window, budget // recipe.page_bytes()))


@dataclass(frozen=True)
class PreparedFile:
    """Inputs a render worker made for ``mode`` under ``recipe``, waiting in ``path``."""

    path: str
    recipe: InputsRecipe
    mode: str

    def load(self) -> dict[str, Any]:
        """The tensors (the file is removed: each is read once)."""
        import torch

        try:
            return torch.load(self.path, weights_only=True)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def discard_prepared(page: Any) -> None:
    """A rendered page (or a render task's other result) no one will read: its prepared
    inputs' file, if a worker made one, goes now rather than when the run's folder does."""
    prepared = getattr(page, "prepared", None)
    if prepared is not None:
        prepared.discard()


def load_processor(recipe: InputsRecipe) -> Any:
    """The checkpoint's processor, on the CPU (tokenizer padding on the left)."""
    if recipe.family == "v1":
        from pathlib import Path

        import torch

        from .deepseek_v1 import _load_tokenizer
        from .deepseek_v1_processor import V1Processor

        tokenizer = _load_tokenizer(Path(recipe.folder))
        return V1Processor(tokenizer, device="cpu", dtype=getattr(torch, recipe.dtype))
    return v2_processor(recipe.folder)


def v2_processor(folder: str) -> Any:
    """A DeepSeek-OCR-2 folder's processor, its tokenizer padding on the left (the engine's
    loader uses it too)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    return processor


def processor_outputs(processor: Any, recipe: InputsRecipe, images: list[Any], mode: str) -> Any:
    """The processor's outputs for ``images`` read in ``mode``, on the CPU."""
    prompts = [recipe.prompt] * len(images)
    if recipe.family == "v1":
        return processor(
            images=images,
            prompts=prompts,
            mode=mode,
            min_tiles=recipe.min_tiles,
            max_tiles=recipe.max_tiles,
            on_device=False,
        )
    spec = get_mode(recipe.family, mode)
    kwargs: dict[str, Any] = {"size": {"height": spec.base_size, "width": spec.base_size}}
    if spec.tile_size is None:
        # Untiled: the processor resizes the global view to tile_size when not cropping, and
        # counts tokens from size: both must be the view size.
        kwargs.update(crop_to_patches=False, tile_size=spec.base_size)
    else:
        kwargs.update(
            crop_to_patches=True,
            tile_size=spec.tile_size,
            min_patches=recipe.min_tiles,
            max_patches=recipe.max_tiles,
        )
    return processor(images=images, text=prompts, return_tensors="pt", **kwargs)


def make_inputs(processor: Any, recipe: InputsRecipe, page: PageImage) -> dict[str, Any]:
    """One page's inputs (batch dimension 1); floating tensors in the recipe's dtype (half
    the bytes to hold, move and copy in bf16)."""
    import torch

    image = page.image if page.image.mode == "RGB" else page.image.convert("RGB")
    inputs = dict(processor_outputs(processor, recipe, [image], recipe.page_mode(page)))
    dtype = getattr(torch, recipe.dtype)
    for k, v in inputs.items():
        if torch.is_tensor(v) and v.is_floating_point():
            inputs[k] = v.to(dtype)
    return inputs


# ------------------------------------------------------------------ in a render worker

_PROCESSORS: dict[InputsRecipe, Any] = {}


def prepare_in_worker(page: PageImage, recipe: InputsRecipe, folder: str) -> None:
    """Runs in a render worker: ``page.prepared`` becomes a file of its inputs in ``folder``.

    A failure leaves the page without one (and no partial file): the engine then prepares it
    and reports whatever is wrong with it as that page's error. A worker's first failure is
    logged as a warning; ``pages_prepared_by_workers`` in the run statistics tells the rest.
    """
    global _WARNED
    path = os.path.join(folder, f"inputs-{os.getpid()}-{uuid.uuid4().hex}.pt")
    try:
        import torch

        processor = _PROCESSORS.get(recipe)
        if processor is None:
            # One thread: the workers are the parallelism, and they share the cores with
            # the decode loop.
            torch.set_num_threads(1)
            processor = _PROCESSORS[recipe] = load_processor(recipe)
        inputs = make_inputs(processor, recipe, page)
        torch.save(inputs, path + ".part")
        os.replace(path + ".part", path)  # whole or absent: never a half-written file
        page.prepared = PreparedFile(path, recipe, recipe.page_mode(page))
    except Exception as e:  # the engine prepares it instead, and says what is wrong
        with contextlib.suppress(OSError):
            os.unlink(path + ".part")
        log.log(
            logging.DEBUG if _WARNED else logging.WARNING,
            "render worker could not prepare %s page %d (%s); the engine will",
            page.source,
            page.index + 1,
            e,
        )
        _WARNED = True
        page.prepared = None


_WARNED = False
