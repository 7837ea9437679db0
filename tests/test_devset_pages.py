"""Reading order on real pages: the layout step over stored RapidOCR detections of dev-set pages.

The fixtures (tests/data/devset, licences in its README) hold what the detector and
recogniser returned, so these tests check ordering, rows and columns exactly, without OCR.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from docgen import cer, normalize_ws

from ocrpress.document import PageResult
from ocrpress.layout import Line, group_lines
from ocrpress.writers.text import page_text

DATA = Path(__file__).parent / "data" / "devset"


def read(stem: str) -> tuple[str, str]:
    """(ocrpress's text of the page, the ground truth)."""
    d = json.loads((DATA / f"{stem}.lines.json").read_text())
    lines = [
        Line.from_quad(quad, text.strip(), score, [tuple(w) for w in words])
        for quad, text, score, words in d["lines"]
        if text.strip()
    ]
    blocks = group_lines(lines, d["width"], d["height"])
    page = PageResult(
        source=stem, index=0, width=d["width"], height=d["height"], dpi=d["dpi"],
        engine="rapid", blocks=blocks,
    )  # fmt: skip
    return page_text(page), (DATA / f"{stem}.gt.txt").read_text()


def assert_in_order(text: str, phrases: list[str]) -> None:
    flat = normalize_ws(text)
    positions = [flat.find(p) for p in phrases]
    assert all(p >= 0 for p in positions), [
        ph for ph, p in zip(phrases, positions, strict=False) if p < 0
    ]
    assert positions == sorted(positions), "phrases out of reading order"


def test_three_column_federal_register_page_reads_column_by_column() -> None:
    text, truth = read("fedreg_proposed_rules_p1")
    assert_in_order(
        text,
        [
            "This section of the FEDERAL REGISTER",
            "DEPARTMENT OF TRANSPORTATION",
            "The FAA proposes to supersede",
            "Federal eRulemaking Portal",
            "Examining the AD Docket",
            "Comments Invited",
            "proposal, explain the reason",
            "Confidential Business Information (CBI)",
            "Background",
        ],
    )
    assert cer(normalize_ws(truth), normalize_ws(text)) < 0.05


def test_three_column_instructions_with_a_narrow_gutter() -> None:
    text, truth = read("irs_i1040nr_2007_p06")
    assert_in_order(
        text,
        ["Tax withheld from wages", "How To Report Income", "Kinds of Income",
         "Dispositions of U.S. Real", "Foreign Income Taxed", "Expatriation Tax"],
    )  # fmt: skip
    assert cer(normalize_ws(truth), normalize_ws(text)) < 0.02


@pytest.mark.parametrize(
    ("stem", "labels"),
    [
        ("cord_receipt_test_00004", ["DISCOUNT", "TOTAL", "CASH", "CHANGE"]),
        ("invoice_sammy_maystone", ["Subtotal:", "Tax (0%):", "Total:", "Balance Due:"]),
    ],
)
def test_receipt_and_invoice_totals_keep_label_and_amount_on_one_line(
    stem: str, labels: list[str]
) -> None:
    text, _ = read(stem)
    for label in labels:
        rows = [row for row in text.splitlines() if label in row]
        assert rows, f"{label} missing"
        assert any(re.search(r"\d[\d,.]*\d", row.split(label, 1)[1]) for row in rows), rows


def test_invoice_item_rows_stay_rows() -> None:
    text, _ = read("invoice_sammy_maystone")
    rows = [normalize_ws(r) for r in text.splitlines()]
    assert any(r.startswith("Service A") and r.endswith("$120.00") for r in rows), rows
    assert any(r.startswith("Service B") and r.endswith("$7.50") for r in rows), rows
