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


def test_two_column_page_whose_gutter_a_title_and_page_number_cross() -> None:
    # The gutter is ~8 px at 144 dpi and the title, date and page number run across it.
    text, truth = read("latex_two_column_example_p01")
    assert_in_order(
        text,
        ["An example document showing", "3 Citations", "This document shows a typical",
         "a new interface for tagging tables", "ment just uses standard", "Let p be a prime",
         "Lists often occur in documents", "Here we reference item 2"],
    )  # fmt: skip
    # The truth keeps the contents list's dot leaders, which the scorer drops and cer() not.
    assert cer(normalize_ws(truth), normalize_ws(text)) < 0.15


def test_form_blocks_side_by_side_are_read_one_after_the_other() -> None:
    # Numbered lines 1-28 on the left, the employer's details on the right: their rows
    # happen to overlap but do not share baselines.
    text, truth = read("lu_salary_certificate_160_2019")
    assert_in_order(
        text,
        ["1 période du", "6 sous-total:", "28 G) crédit d'impôt monoparental",
         "H) désignation de l'employeur", "I) fiduciaire", "certifié exact"],
    )  # fmt: skip
    assert cer(normalize_ws(truth), normalize_ws(text)) < 0.05


def test_form_margin_labels_are_read_with_their_rows() -> None:
    text, truth = read("irs_f1040_2010_p01")
    rows = [normalize_ws(r) for r in text.splitlines()]
    assert "Filing Status 1 Single" in " ".join(r for r in rows if r.startswith("Filing Status"))
    assert any(r.startswith("Exemptions 6a Yourself") for r in rows), rows[:40]
    assert cer(normalize_ws(truth), normalize_ws(text)) < 0.3


def test_two_tables_side_by_side_are_read_one_after_the_other() -> None:
    # Two facing pages of financial statements; the left table's rows drift out of line
    # with the right one's.
    text, truth = read("mitsubishi_annual_report_2021_tables")
    assert_in_order(
        text,
        ["Net profit 233,512", "Total other comprehensive income (loss)",
         "Non-controlling interests", "Balance at beginning of year"],
    )  # fmt: skip
    assert cer(normalize_ws(truth), normalize_ws(text)) < 0.1
