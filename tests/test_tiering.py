"""``--mode auto``'s estimator and chooser (ocrpress.tiering), and ``modes --auto``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest
from densitygen import DENSITY_KINDS, density_pdf
from docgen import render_pdf_page
from PIL import Image

from ocrpress.errors import EXIT_FAILED_INPUTS
from ocrpress.tiering import (
    LEGIBLE_PX,
    TextEstimate,
    choose_mode,
    estimate_image,
    estimate_page,
    estimate_text_layer,
    ladder,
    next_mode,
)

TESTS = Path(__file__).parent
KINDS = list(DENSITY_KINDS)  # slide, letter, paper, newspaper: rising density


@pytest.fixture(scope="module")
def density_pages(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Image.Image, TextEstimate, TextEstimate, int]]:
    """kind -> (render at 144 dpi, text-layer estimate, image estimate, characters drawn)."""
    folder = tmp_path_factory.mktemp("density")
    out = {}
    for kind in KINDS:
        path, chars = density_pdf(folder / f"{kind}.pdf", kind)
        image = render_pdf_page(path)
        with pymupdf.open(path) as doc:
            layer = estimate_text_layer(doc[0], 144)
        out[kind] = (image, layer, estimate_image(image), chars)
    return out


def _rank(family: str, mode: str) -> int:
    return ladder(family).index(mode)


@pytest.mark.parametrize("family", ["v1", "v2"])
@pytest.mark.parametrize("source", [1, 2])  # text layer, image
def test_denser_pages_never_get_cheaper_modes(family: str, source: int, density_pages) -> None:
    picks = []
    for kind in KINDS:
        image, *estimates, _ = density_pages[kind]
        picks.append(choose_mode(family, image.width, image.height, estimates[source - 1]))
    ranks = [_rank(family, c.mode) for c in picks]
    assert ranks == sorted(ranks), [c.mode for c in picks]
    tokens = [c.vision_tokens for c in picks]
    assert tokens == sorted(tokens)
    # The ends are what the paper reports: a slide in the cheapest view, a newspaper tiled.
    assert picks[0].mode == ladder(family)[0]
    assert picks[-1].mode == "gundam" and picks[-1].tiles is not None
    assert picks[2].mode != ladder(family)[0]  # a dense paper page needs more than the least


@pytest.mark.parametrize("family", ["v1", "v2"])
def test_higher_compression_never_costs_more(family: str, density_pages) -> None:
    for kind in KINDS:
        image, layer, pixels, _ = density_pages[kind]
        for est in (layer, pixels):
            costs = [
                choose_mode(family, image.width, image.height, est, r).vision_tokens
                for r in (2, 5, 10, 20, 40)
            ]
            assert costs == sorted(costs, reverse=True), (kind, est.source, costs)


def test_text_layer_and_image_estimates_agree(density_pages) -> None:
    for kind in KINDS:
        _, layer, pixels, chars = density_pages[kind]
        assert layer.source == "text-layer" and pixels.source == "image"
        assert layer.chars == chars  # the layer holds exactly what was drawn
        assert abs(pixels.chars - chars) <= 0.25 * chars, (kind, pixels.chars, chars)
        assert abs(pixels.text_height - layer.text_height) <= 0.2 * layer.text_height, kind


def test_estimate_page_prefers_the_layer_unless_images_hide_text(tmp_path: Path) -> None:
    path, chars = density_pdf(tmp_path / "letter.pdf", "letter")
    image = render_pdf_page(path)
    with pymupdf.open(path) as doc:
        assert estimate_page(image, doc[0], 144).source == "text-layer"
    # The same page as a scan under a one-word text layer: the image says more.
    scan = pymupdf.open()
    page = scan.new_page(width=595, height=842)
    page.insert_image(page.rect, filename=str(_png(image, tmp_path)))
    page.insert_text((72, 40), "Scanned", fontsize=8)
    est = estimate_page(image, page, 144)
    assert est.source == "image" and est.chars > 0.75 * chars
    scan.close()


def _png(image: Image.Image, folder: Path) -> Path:
    path = folder / "page.png"
    image.save(path)
    return path


def test_blank_page_gets_the_cheapest_mode() -> None:
    blank = Image.new("RGB", (1190, 1684), "white")
    est = estimate_image(blank)
    assert est.chars == 0 and est.text_tokens == 0
    for family in ("v1", "v2"):
        assert choose_mode(family, 1190, 1684, est).mode == ladder(family)[0]


def test_small_print_needs_a_sharper_view_than_its_length_does() -> None:
    # 300 characters (86 tokens) fit tiny's 64 tokens at R = 10 by length alone...
    few = TextEstimate(chars=300, text_height=24.0, source="text-layer")
    assert choose_mode("v1", 1190, 1684, few).mode == "tiny"
    # ...but in 7-px-tall print on an A4 page, tiny's 512-px view leaves ~2 px of it.
    tiny_print = TextEstimate(chars=300, text_height=7.0, source="text-layer")
    c = choose_mode("v1", 1190, 1684, tiny_print)
    assert c.mode == "gundam" and c.text_height_view_px >= LEGIBLE_PX and c.fits


def test_image_estimates_get_headroom_against_r() -> None:
    # 1000 estimated tokens sit right at 10x v1 small's 100 tokens: a text layer's count is
    # taken as it is, an image estimate's is held 25% high and gets the next mode.
    exact = TextEstimate(chars=3500, text_height=20.0, source="text-layer")
    rough = TextEstimate(chars=3500, text_height=20.0, source="image")
    assert choose_mode("v1", 1190, 1684, exact).mode == "small"
    assert choose_mode("v1", 1190, 1684, rough).mode == "base"


def test_overfull_page_is_gundam_and_says_it_does_not_fit() -> None:
    huge = TextEstimate(chars=100_000, text_height=20.0, source="text-layer")
    c = choose_mode("v2", 1190, 1684, huge)
    assert c.mode == "gundam" and not c.fits and c.ratio > 10
    doc = c.to_json()
    json.dumps(doc)  # what the page's mode_estimate will hold
    assert doc["mode"] == "gundam" and doc["tiles"] == [2, 3] and doc["fits"] is False
    assert doc["est_text_tokens"] == c.est_text_tokens == 28572


def test_ladder_and_next_mode() -> None:
    assert ladder("v1") == ("tiny", "small", "base", "large", "gundam")
    assert ladder("v2") == ("small", "base", "gundam")
    assert next_mode("v1", "tiny") == "small" and next_mode("v1", "large") == "gundam"
    assert next_mode("v2", "small") == "base" and next_mode("v2", "gundam") is None
    with pytest.raises(ValueError, match="tiny"):
        next_mode("v2", "tiny")
    with pytest.raises(ValueError, match="compression"):
        choose_mode("v1", 100, 100, TextEstimate(1, 1.0, "image"), max_compression=0)


def test_modes_auto_cli(tmp_path: Path) -> None:
    slide, _ = density_pdf(tmp_path / "slide.pdf", "slide")
    paper, _ = density_pdf(tmp_path / "paper.pdf", "paper")
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n garbage")
    r = subprocess.run(
        [sys.executable, "-m", "ocrpress", "modes", "--auto", "--family", "v1",
         slide, str(bad), paper],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )  # fmt: skip
    assert r.returncode == EXIT_FAILED_INPUTS, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith(f"{slide} p1  1920x1080  text-layer")
    assert out[1].split()[:2] == ["v1:", "tiny"]
    assert any(line.startswith(f"{paper} p1") for line in out)
    assert "v2:" not in r.stdout  # --family v1 only
    assert out[-1].strip().startswith("v1: 2 pages (") and "all-gundam" in out[-1]
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and str(bad) in errors[0] and "corrupt PDF" in errors[0]


def test_modes_auto_needs_files() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ocrpress", "modes", "--auto"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--auto needs at least one FILE" in r.stderr
