"""What reading order costs: the rapid engine's layout steps against its OCR, per page.

For each page, side by side in one process: RapidOCR as a plain loop calls it (no word
boxes), RapidOCR with word boxes (what the engine asks for, so lines run across a gutter can
be cut), and the layout step (``group_lines``: levelling, columns, rows, tables, paragraphs).
Prints the layout steps' share of the OCR time (goal: <= 15%). Orientation costs nothing on
upright pages (it only looks again at suspect ones), so it is not in the ratio.

    python bench/layout_cost.py [PAGES...]     # default: 8 pages of ../shared/devset
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEVSET = ROOT.parent / "shared" / "devset" / "pages"
DEFAULT = [
    "irs_i1040nr_2007_p06.png",
    "royalsoc_olfactory_2004_p01.png",
    "invoice_flipkart_2015.png",
    "irs_w4_2012_p01.png",
    "olmo2_pretraining_mix_table_p04.png",
    "fda_labeling_slides_p52.png",
    "synthetic_receipt_grocery.jpg",
    "slerexe_letter_fax_scan.jpg",
]


def main() -> None:
    from PIL import Image
    from rapidocr import RapidOCR

    from ocrpress.engines.rapid import _pad_to_aspect, _word_spans
    from ocrpress.layout import Line, group_lines

    paths = [Path(p) for p in sys.argv[1:]] or [DEVSET / name for name in DEFAULT]
    ocr = RapidOCR(params={"Global.log_level": "error", "Global.use_cls": False})
    plain_t = words_t = layout_t = 0.0
    for path in paths:
        image = _pad_to_aspect(Image.open(path).convert("RGB"), 4.0)
        arr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
        ocr(arr)  # warm the sessions on this page size
        t0 = time.perf_counter()
        ocr(arr)
        t1 = time.perf_counter()
        out = ocr(arr, return_word_box=True)
        t2 = time.perf_counter()
        lines = [
            Line.from_quad(q.tolist(), t.strip(), float(s), _word_spans(w, 0))
            for q, t, s, w in zip(out.boxes, out.txts, out.scores, out.word_results, strict=False)
            if t.strip()
        ]
        group_lines(lines, image.width, image.height)
        t3 = time.perf_counter()
        plain_t += t1 - t0
        words_t += t2 - t1
        layout_t += t3 - t2
        print(
            f"{path.name:36s} ocr {t1 - t0:6.2f} s +words {t2 - t1:6.2f} s  layout {t3 - t2:5.3f} s"
        )
    extra = (words_t - plain_t) + layout_t
    print(
        f"\n{len(paths)} pages: plain OCR {plain_t:.1f} s, with word boxes {words_t:.1f} s, "
        f"layout {layout_t:.2f} s"
    )
    print(f"layout steps cost {extra / plain_t:+.1%} of the OCR time (goal <= 15%)")


if __name__ == "__main__":
    main()
