"""Turned pages: detection from the recogniser's confidence, and boxes mapped back to the page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from docgen import cer, normalize_ws, render_page
from PIL import Image

from ocrpress.document import PageImage
from ocrpress.engines import EngineOptions, orientation
from ocrpress.engines.rapid import RapidEngine
from ocrpress.layout import Line

TEXT = [
    "Orientation matters: a page scanned upside down must still come out readable.",
    "The second paragraph has a few more words so that the page holds several lines of text.",
]


def _line(box: tuple[float, float, float, float], score: float, text: str = "words") -> Line:
    return Line(box=box, text=text, score=score)


def test_upright_confident_pages_are_not_suspect() -> None:
    lines = [_line((10, 10 + 30 * i, 400, 30 + 30 * i), 0.98) for i in range(5)]
    assert orientation.suspect(lines) == ()


def test_low_confidence_suggests_upside_down_and_tall_boxes_suggest_sideways() -> None:
    flat = [_line((10, 10 + 30 * i, 400, 30 + 30 * i), 0.65) for i in range(5)]
    assert orientation.suspect(flat) == (180,)
    tall = [_line((10 + 30 * i, 10, 30 + 30 * i, 400), 0.7) for i in range(5)]
    assert orientation.suspect(tall) == (90, 270)
    assert orientation.suspect(flat[:2]) == ()  # too little text to judge


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_box_to_page_inverts_pil_rotate(angle: int) -> None:
    page = Image.new("L", (300, 200), 0)
    page.paste(255, (40, 30, 90, 60))  # a white box on the page
    turned = page.rotate(angle, expand=True)
    box = turned.getbbox()
    assert box is not None
    back = orientation.box_to_page(box, angle, turned.width, turned.height)
    assert back == pytest.approx((40, 30, 90, 60), abs=1)


@pytest.fixture(scope="module")
def engine() -> Iterator[RapidEngine]:
    eng = RapidEngine(EngineOptions(engine="rapid"))
    yield eng
    eng.close()


@pytest.mark.slow
@pytest.mark.parametrize("angle", [180, 90])
def test_turned_page_is_read_upright_and_says_so(engine: RapidEngine, angle: int) -> None:
    upright = render_page(TEXT, width_pt=420, height_pt=200)
    turned = upright.rotate(angle, expand=True)
    (res,) = engine.run([PageImage(source="t.png", index=0, image=turned, dpi=144)])
    assert res.status == "ok"
    assert cer(normalize_ws(" ".join(TEXT)), normalize_ws(res.text)) < 0.03
    assert any(f"turned {angle}" in n for n in res.notes) or any(
        f"turned {(360 - angle) % 360}" in n for n in res.notes
    )
    # Boxes are in the turned page's pixels, inside it.
    for b in res.blocks:
        assert 0 <= b.bbox[0] < b.bbox[2] <= turned.width + 1
        assert 0 <= b.bbox[1] < b.bbox[3] <= turned.height + 1
