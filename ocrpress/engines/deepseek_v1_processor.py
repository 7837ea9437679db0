"""Pages and prompts -> inputs of ``UnlimitedOcrForConditionalGeneration`` for a v1 checkpoint.

transformers' image processor for ``unlimited_ocr`` needs torchvision, so v1 pages are prepared
here with PIL + numpy, following the reference ``DeepseekOCRForCausalLM.infer``: tiny/small
views are stretched to a square, base/large views are letterboxed with grey (127, 127, 127),
gundam adds 640-px tiles. :class:`V1Processor` expands each prompt's ``<image>`` into the page's
placeholder positions (the token arithmetic of :mod:`ocrpress.modes`) and batches the rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .. import modes
from ..modes import ModeSpec
from .deepseek_v1_config import V1LoadError

if TYPE_CHECKING:
    from transformers.feature_extraction_utils import BatchFeature

IMAGE_TOKEN = "<image>"
PAD_COLOR = (127, 127, 127)  # int(0.5 * 255): the normalisation mean, i.e. 0 after normalising
TILE_SIZE = modes.modes_for("v1")["gundam"].tile_size or 640


def get_mode(mode: str) -> ModeSpec:
    """The v1 mode called ``mode``; ValueError naming the valid ones otherwise."""
    return modes.get_mode("v1", mode)


def token_plan(
    image: Image.Image | tuple[int, int], mode: str, min_tiles: int = 2, max_tiles: int = 6
) -> modes.TokenPlan:
    """Vision tokens, tile grid and prompt positions of one page (see :mod:`ocrpress.modes`)."""
    width, height = image.size if isinstance(image, Image.Image) else image
    return modes.plan_tokens("v1", mode, width, height, min_tiles, max_tiles)


def plan(
    image: Image.Image | tuple[int, int], mode: str, min_tiles: int = 2, max_tiles: int = 6
) -> tuple[int, tuple[int, int] | None]:
    """Published vision-token cost and tile grid of one page: ``(vision_tokens, tiles)``.

    ``image`` is a PIL image or its ``(width, height)``. Tokens are feature cells only
    (tiny 64, small 100, base 256, large 400, gundam 256 + 100 per tile), without the newline
    and separator positions that :func:`token_plan` also counts.
    """
    tp = token_plan(image, mode, min_tiles, max_tiles)
    return tp.vision_tokens, tp.tiles


# --------------------------------------------------------------------------- images


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 -> CHW float in [-1, 1] (v1: ToTensor, then Normalize(0.5, 0.5))."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1).contiguous()


def global_view(image: Image.Image, mode: str) -> Image.Image:
    """The square global view: stretched up to 640 px, letterboxed with grey above."""
    spec = get_mode(mode)
    view = spec.base_size
    image = image.convert("RGB")
    # v1's infer(): views <= 640 px are resized without keeping the aspect ratio; larger
    # views (and gundam's 1024-px global view) keep it and pad with the mean colour.
    if spec.tile_size is None and view <= TILE_SIZE:
        return image.resize((view, view), Image.Resampling.BICUBIC)
    return ImageOps.pad(image, (view, view), method=Image.Resampling.BICUBIC, color=PAD_COLOR)


def crop_tiles(image: Image.Image, tiles: tuple[int, int]) -> list[Image.Image]:
    """Resize to ``640*cols x 640*rows`` and cut row-major into 640-px tiles."""
    cols, rows = tiles
    resized = image.convert("RGB").resize(
        (TILE_SIZE * cols, TILE_SIZE * rows), Image.Resampling.BICUBIC
    )
    return [
        resized.crop((c * TILE_SIZE, r * TILE_SIZE, (c + 1) * TILE_SIZE, (r + 1) * TILE_SIZE))
        for r in range(rows)
        for c in range(cols)
    ]


class V1Processor:
    """Prompts + pages -> inputs of ``UnlimitedOcrForConditionalGeneration`` for a v1 checkpoint.

    Each prompt holds one ``<image>``; it is expanded into the image's placeholder positions
    and the BOS token is prepended, as v1's ``infer()`` does. Rows of unequal length are
    left-padded with the pad token.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_token_id: int | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        # Where the model lives: outputs land there, pixels in its dtype (a bf16 model
        # rejects fp32 pixels).
        self.device = device
        self.dtype = dtype
        self.image_token_id = (
            image_token_id
            if image_token_id is not None
            else tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        )
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise V1LoadError(f"the tokenizer has no {IMAGE_TOKEN!r} token")
        self.bos_token_id = tokenizer.bos_token_id
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    def plan(
        self, image: Image.Image, mode: str, min_tiles: int = 2, max_tiles: int = 6
    ) -> tuple[int, tuple[int, int] | None]:
        """``(vision_tokens, tiles)`` of one page; see :func:`plan`."""
        return plan(image, mode, min_tiles, max_tiles)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def __call__(
        self,
        images: list[Image.Image],
        prompts: list[str],
        mode: str,
        min_tiles: int = 2,
        max_tiles: int = 6,
        on_device: bool = True,
    ) -> BatchFeature:
        """Tensors for ``model.generate(**inputs)``: ids, mask, global and tile pixels (on the
        model's device, or on the CPU with ``on_device=False``: page preparation)."""
        from transformers.feature_extraction_utils import BatchFeature

        get_mode(mode)  # an unknown mode fails before any image work
        if len(images) != len(prompts) or not images:
            raise ValueError(f"need one prompt per image, got {len(images)} and {len(prompts)}")
        rows: list[list[int]] = []
        views: list[torch.Tensor] = []
        local: list[torch.Tensor] = []
        num_local: list[int] = []
        grids: list[list[int]] = []
        for image, prompt in zip(images, prompts, strict=True):
            if prompt.count(IMAGE_TOKEN) != 1:
                raise ValueError(f"a v1 prompt needs exactly one {IMAGE_TOKEN}: {prompt!r}")
            tp = token_plan(image, mode, min_tiles, max_tiles)
            tiles = tp.tiles
            views.append(_to_tensor(global_view(image, mode)))
            if tiles:
                local.extend(_to_tensor(t) for t in crop_tiles(image, tiles))
            num_local.append(tiles[0] * tiles[1] if tiles else 0)
            grids.append(list(tiles) if tiles else [1, 1])
            before, after = prompt.split(IMAGE_TOKEN)
            ids = [self.bos_token_id] if self.bos_token_id is not None else []
            ids += self._encode(before)
            ids += [self.image_token_id] * tp.positions
            ids += self._encode(after)
            rows.append(ids)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids) :] = 1
        data: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack(views),
            "num_local_patches": num_local,
            "patches_grid": grids,
        }
        if local:
            data["pixel_values_local"] = torch.stack(local)
        for key in ("pixel_values", "pixel_values_local"):
            if key in data and self.dtype is not None:
                data[key] = data[key].to(self.dtype)
        if self.device is not None and on_device:
            data = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in data.items()}
        return BatchFeature(data=data)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, **kwargs)

    def decode(self, ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(ids, **kwargs)
