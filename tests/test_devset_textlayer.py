"""Reading order of born-digital pages: ``textlayer.to_blocks`` over stored text layers of
dev-set PDFs (what ``textlayer.read`` returned at 144 dpi; licences in tests/data/devset's
README). No PDF is opened, so the tests check the layout of real pages exactly and fast."""

from __future__ import annotations

import json
from pathlib import Path

from docgen import cer, normalize_ws
from test_devset_pages import assert_in_order

from ocrpress import textlayer
from ocrpress.document import PageResult
from ocrpress.writers.text import page_text

DATA = Path(__file__).parent / "data" / "devset"


def read(stem: str) -> tuple[str, str]:
    """(ocrpress's text of the page from its stored text layer, the ground truth)."""
    d = json.loads((DATA / f"{stem}.textlayer.json").read_text())
    layer = textlayer.TextLayer(width=d["width"], height=d["height"], dpi=d["dpi"])
    layer.lines = [
        textlayer.TextLine(box=tuple(box), text=text, size=size, vertical=vertical)
        for box, text, size, vertical in d["lines"]
    ]
    blocks = textlayer.to_blocks(layer, layer.lines, [])
    page = PageResult(
        source=stem, index=0, width=d["width"], height=d["height"], dpi=d["dpi"],
        engine="text-layer", blocks=blocks,
    )  # fmt: skip
    return page_text(page), (DATA / f"{stem}.gt.txt").read_text()


def test_paper_abstract_heading_starts_the_left_column() -> None:
    """TraceMonkey p. 1: "Abstract" shares its row with the right column's first line."""
    text, truth = read("tracemonkey_pldi09_p01")
    assert "Abstract and is used" not in normalize_ws(text)
    assert_in_order(
        text,
        ["Abstract", "Dynamic languages such as JavaScript are more difficult",
         "Keywords JavaScript", "1. Introduction", "and is used for the application logic",
         "applications such as Google Mail"],
    )  # fmt: skip
    assert cer(normalize_ws(truth), normalize_ws(text)) < 0.02


def test_invoice_blocks_side_by_side_and_footer_columns() -> None:
    """AWS invoice: the address block, then the title over the summary beside it; the footer's
    notes column, then its "Service Provider" column."""
    text, truth = read("invoice_aws_2014")
    assert_in_order(
        text,
        ["Account number", "Yuen Long", "Amazon Web Services Invoice", "Invoice Summary",
         "* May include estimated", "** This is not a VAT invoice", "Service Provider:",
         "(Not to be used for payment remittance)"],
    )  # fmt: skip
    assert cer(normalize_ws(truth), normalize_ws(text)) < 0.02


def test_form_glyphs_without_unicode_are_left_out() -> None:
    """IRS 1040NR: its arrows have no Unicode mapping (U+FFFD in the layer); they are dropped
    from the text, and every word of the page is still there."""
    d = json.loads((DATA / "irs_f1040nr_2007_p01.textlayer.json").read_text())
    assert any("\ufffd" in text for _, text, _, _ in d["lines"])  # the fixture has them
    text, truth = read("irs_f1040nr_2007_p01")
    assert "\ufffd" not in text
    words = set(normalize_ws(text).split())
    missing = [w for w in normalize_ws(truth).split() if w not in words]
    assert len(missing) <= 0.01 * len(normalize_ws(truth).split()), missing[:20]
