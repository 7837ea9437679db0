"""Vision-token arithmetic per mode, against the published numbers and the real processor."""

from __future__ import annotations

import random

import pytest

from ocrpress.modes import (
    DEFAULT_MODE,
    get_mode,
    max_positions,
    modes_for,
    plan_tokens,
    tile_grid,
)

# Page shapes in pixels, with the tile grid (columns, rows) each gets from 2..6 tiles of
# either size (worked out by hand from the closest-aspect-ratio rule).
A4 = (1190, 1684)  # 144 dpi
LETTER = (1224, 1584)  # 144 dpi
LANDSCAPE = (1684, 1190)  # A4 landscape
TINY = (300, 200)  # both sides under every tile size: never tiled
TALL = (800, 4000)  # a receipt: aspect 0.2
SHAPES = {
    "a4": (A4, (2, 3)),
    "letter": (LETTER, (2, 3)),
    "landscape": (LANDSCAPE, (3, 2)),
    "tiny": (TINY, None),
    "tall": (TALL, (1, 5)),
}

V1_UNTILED = {"tiny": 64, "small": 100, "base": 256, "large": 400}  # published
V1_POSITIONS = {"tiny": 73, "small": 111, "base": 273, "large": 421}  # published


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", V1_UNTILED)
def test_v1_untiled_modes(shape: str, mode: str) -> None:
    (w, h), _ = SHAPES[shape]
    plan = plan_tokens("v1", mode, w, h)
    assert plan.vision_tokens == V1_UNTILED[mode]
    assert plan.positions == V1_POSITIONS[mode]
    assert plan.tiles is None


@pytest.mark.parametrize("shape", SHAPES)
def test_v1_gundam(shape: str) -> None:
    (w, h), grid = SHAPES[shape]
    plan = plan_tokens("v1", "gundam", w, h)
    assert plan.tiles == grid
    cols, rows = grid or (0, 0)
    assert plan.vision_tokens == 256 + 100 * cols * rows
    assert plan.positions == 273 + ((10 * cols + 1) * 10 * rows if grid else 0)
    assert (plan.base_size, plan.tile_size) == (1024, 640)


def test_v1_gundam_a4_is_856_tokens() -> None:
    assert plan_tokens("v1", "gundam", *A4).vision_tokens == 856  # DESIGN.md, measured


def test_v1_up_to_nine_tiles() -> None:
    # A square page ties (2, 2) with (3, 3); the larger grid wins while the page is big
    # enough to fill it.
    assert plan_tokens("v1", "gundam", 2000, 2000).tiles == (2, 2)
    nine = plan_tokens("v1", "gundam", 2000, 2000, max_tiles=9)
    assert nine.tiles == (3, 3)
    assert nine.vision_tokens == 256 + 900


@pytest.mark.parametrize("shape", SHAPES)
def test_v2_arithmetic(shape: str) -> None:
    (w, h), grid = SHAPES[shape]
    assert plan_tokens("v2", "small", w, h).vision_tokens == 144 + 1
    assert plan_tokens("v2", "base", w, h).vision_tokens == 256 + 1
    gundam = plan_tokens("v2", "gundam", w, h)
    n = grid[0] * grid[1] if grid else 0
    assert gundam.tiles == grid
    assert gundam.vision_tokens == gundam.positions == 256 + 144 * n + 1


def test_v2_a4_is_1121_tokens() -> None:
    assert plan_tokens("v2", "gundam", *A4).vision_tokens == 1121


def test_tiling_starts_above_the_tile_size() -> None:
    assert tile_grid(768, 500, 768) is None
    assert tile_grid(769, 500, 768) is not None
    assert plan_tokens("v1", "gundam", 640, 640).tiles is None
    assert plan_tokens("v1", "gundam", 641, 640).tiles == (2, 2)  # square-ish: 2x2


def test_tile_grid_matches_transformers_on_random_shapes() -> None:
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
        get_optimal_tiled_canvas,
    )

    rng = random.Random(0)
    for _ in range(500):
        w, h = rng.randint(300, 5000), rng.randint(300, 5000)
        lo = rng.randint(1, 4)
        hi = rng.randint(lo, 9)
        tile = rng.choice([640, 768])
        want = get_optimal_tiled_canvas((h, w), (tile, tile), lo, hi)
        got = tile_grid(w, h, tile, lo, hi)
        assert got == (want if max(w, h) > tile else None), (w, h, lo, hi, tile)


def test_mode_tables() -> None:
    assert list(modes_for("v1")) == ["tiny", "small", "base", "large", "gundam"]
    assert list(modes_for("v2")) == ["small", "base", "gundam"]
    assert DEFAULT_MODE == {"v1": "gundam", "v2": "gundam"}
    assert get_mode("v2", "gundam").tile_size == 768
    assert get_mode("v2", "small").tile_size is None


@pytest.mark.parametrize(("mode", "view"), [("tiny", "512"), ("large", "1280")])
def test_v2_refuses_views_it_lacks(mode: str, view: str) -> None:
    with pytest.raises(ValueError) as e:
        get_mode("v2", mode)
    msg = str(e.value)
    assert "DeepSeek-OCR-2 supports modes small, base, gundam" in msg
    assert view in msg


def test_unknown_mode_and_family() -> None:
    with pytest.raises(ValueError, match="supports modes tiny, small, base, large, gundam"):
        get_mode("v1", "huge")
    with pytest.raises(ValueError, match="family"):
        modes_for("v3")


@pytest.mark.parametrize(("lo", "hi"), [(0, 6), (3, 2), (2, 10)])
def test_bad_tile_range(lo: int, hi: int) -> None:
    with pytest.raises(ValueError, match="tile range"):
        plan_tokens("v2", "gundam", *A4, min_tiles=lo, max_tiles=hi)


def test_max_positions_bounds_every_page() -> None:
    rng = random.Random(1)
    for family in ("v1", "v2"):
        for mode in modes_for(family):
            bound = max_positions(family, mode, 6)
            for _ in range(200):
                w, h = rng.randint(100, 6000), rng.randint(100, 6000)
                assert plan_tokens(family, mode, w, h).positions <= bound
    assert max_positions("v2", "gundam", 6) == 256 + 6 * 144 + 1


# -- v2 against the real DeepseekOcr2Processor (PIL image processor, tiny tokenizer) -------


@pytest.fixture(scope="module")
def v2_processor():
    from tiny_models import build_tokenizer
    from transformers import DeepseekOcr2Processor
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
        DeepseekOcr2ImageProcessorPil,
    )

    return DeepseekOcr2Processor(
        image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=build_tokenizer()
    )


def _processor_kwargs(mode: str, lo: int, hi: int) -> dict:
    # The same per-call settings the engine passes (settings on the image processor object
    # are ignored; untiled modes need size and tile_size both set to the view).
    spec = get_mode("v2", mode)
    size = {"height": spec.base_size, "width": spec.base_size}
    if spec.tile_size is None:
        return {"size": size, "crop_to_patches": False, "tile_size": spec.base_size}
    return {
        "size": size,
        "crop_to_patches": True,
        "tile_size": spec.tile_size,
        "min_patches": lo,
        "max_patches": hi,
    }


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["small", "base", "gundam"])
def test_v2_matches_real_processor(v2_processor, shape: str, mode: str) -> None:
    from PIL import Image

    (w, h), _ = SHAPES[shape]
    plan = plan_tokens("v2", mode, w, h)
    out = v2_processor(
        images=[Image.new("RGB", (w, h), "white")],
        text=["<image>\nFree OCR."],
        return_tensors="pt",
        **_processor_kwargs(mode, 2, 6),
    )
    placeholders = int((out["input_ids"] == v2_processor.image_token_id).sum())
    assert placeholders == plan.vision_tokens
    assert out["num_local_patches"].tolist() == [plan.num_tiles]
    side = 768 if mode == "small" else 1024
    assert tuple(out["pixel_values"].shape[-2:]) == (side, side)
    if plan.tiles:
        assert tuple(out["pixel_values_local"].shape[-2:]) == (768, 768)


def test_v2_processor_with_nine_tiles(v2_processor) -> None:
    from PIL import Image

    w, h = 3000, 2950
    plan = plan_tokens("v2", "gundam", w, h, min_tiles=1, max_tiles=9)
    assert plan.num_tiles == 9
    out = v2_processor(
        images=[Image.new("RGB", (w, h), "white")],
        text=["<image>\nFree OCR."],
        return_tensors="pt",
        **_processor_kwargs("gundam", 1, 9),
    )
    assert int((out["input_ids"] == v2_processor.image_token_id).sum()) == plan.vision_tokens
