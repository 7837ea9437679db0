"""``--mode auto``'s page estimator and chooser on the shared dev set (issue 12).

Prints (a) the estimator against the ground truth: median absolute error of estimated text
tokens, overall and per kind (goal <= 25%), for the estimate auto uses (text layer on the five
PDFs) and for the image estimate alone on every page; (b) estimator time per page on one core
(goal <= 50 ms); (c) vision tokens of auto against all-gundam per family and R (goal >= 40%
fewer at R = 10) and the pages whose true text tokens exceed R x the chosen mode's vision
tokens (goal 0); (d) what auto chooses on generated slide, letter, paper and newspaper pages.

True text tokens are the ground truth's characters (whitespace runs as one space) over the
same chars-per-token figure the estimator uses: no DeepSeek tokenizer is available offline.

    .venv/bin/python bench/auto_mode.py [--devset ../shared/devset] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import pymupdf
from _common import ROOT  # puts tests/ (docgen, densitygen) on sys.path
from densitygen import DENSITY_KINDS, density_pdf
from PIL import Image

from ocrpress.modes import plan_tokens
from ocrpress.tiering import (
    CHARS_PER_TOKEN,
    choose_mode,
    estimate_image,
    estimate_page,
)

DPI = 144


def load(path: Path) -> tuple[Image.Image, pymupdf.Page | None, pymupdf.Document | None]:
    if path.suffix == ".pdf":
        doc = pymupdf.open(path)
        pix = doc[0].get_pixmap(dpi=DPI, alpha=False, colorspace=pymupdf.csRGB)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples), doc[0], doc
    return Image.open(path).convert("RGB"), None, None


def timed(fn, repeat: int):  # type: ignore[no-untyped-def]
    """(result, median CPU seconds of ``repeat`` calls): CPU time, because other jobs on a
    shared machine stretch wall time; the estimate is single-threaded, so it is one core's."""
    times, out = [], None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        times.append(time.process_time() - t)
    return out, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devset", default=str(ROOT.parent / "shared" / "devset"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # "one core": the render workers each get one
    devset = Path(args.devset)
    with open(devset / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    pages = []
    for r in rows:
        path = devset / r["file"]
        gt = " ".join((devset / "pages" / f"{r['stem']}.gt.txt").read_text().split())
        image, page, doc = load(path)
        used, t_used = timed(
            partial(estimate_page, image, page, DPI if page else None), args.repeat
        )
        img_est, t_img = timed(partial(estimate_image, image), args.repeat)
        pages.append(
            dict(stem=r["stem"], kind=r["kind"], w=image.width, h=image.height,
                 true=math.ceil(len(gt) / CHARS_PER_TOKEN), used=used, img=img_est,
                 t_used=t_used, t_img=t_img)
        )  # fmt: skip
        if doc is not None:
            doc.close()

    def err(p: dict, key: str) -> float:
        return abs(p[key].text_tokens - p["true"]) / p["true"]

    print(f"(a) estimated vs true text tokens ({CHARS_PER_TOKEN} chars/token), {len(pages)} pages")
    print(f"  {'kind':<16} {'pages':>5} {'median |err| auto':>18} {'image only':>11}")
    kinds = sorted({p["kind"] for p in pages})
    for kind in [*kinds, "all"]:
        sel = [p for p in pages if kind in ("all", p["kind"])]
        e_used = statistics.median(err(p, "used") for p in sel)
        e_img = statistics.median(err(p, "img") for p in sel)
        print(f"  {kind:<16} {len(sel):>5} {e_used:>17.0%} {e_img:>11.0%}")
    signed = sorted((p["img"].text_tokens - p["true"]) / p["true"] for p in pages)
    print(f"  image estimate signed error: min {signed[0]:+.0%}, max {signed[-1]:+.0%}")
    worst = sorted(pages, key=lambda p: -err(p, "img"))[:3]
    print("  largest image errors: " + ", ".join(
        f"{p['stem']} {p['img'].text_tokens} vs {p['true']}" for p in worst))  # fmt: skip

    print("\n(b) estimator CPU time per page, one core (median of runs per page)")
    for key, what in (("t_used", "auto's estimate"), ("t_img", "image estimate")):
        ts = sorted(p[key] * 1000 for p in pages)
        print(f"  {what:<16} median {statistics.median(ts):5.1f} ms, "
              f"p90 {ts[int(0.9 * len(ts))]:5.1f} ms, max {ts[-1]:5.1f} ms")  # fmt: skip

    print("\n(c) vision tokens, auto vs all-gundam on the dev-set mix")
    print(f"  {'family':<6} {'R':>4} {'auto':>7} {'gundam':>7} {'fewer':>6} {'over R':>6}  modes")
    for family in ("v1", "v2"):
        for r in (5.0, 10.0, 20.0):
            auto = gundam = over = 0
            counts: dict[str, int] = {}
            for p in pages:
                c = choose_mode(family, p["w"], p["h"], p["used"], r)
                auto += c.vision_tokens
                gundam += plan_tokens(family, "gundam", p["w"], p["h"]).vision_tokens
                over += p["true"] > r * c.vision_tokens
                counts[c.mode] = counts.get(c.mode, 0) + 1
            modes = ", ".join(f"{m} {n}" for m, n in counts.items())
            print(f"  {family:<6} {r:>4g} {auto:>7} {gundam:>7} {1 - auto / gundam:>6.0%} "
                  f"{over:>6}  {modes}")  # fmt: skip

    print("\n(d) generated pages (tests/densitygen.py), image estimate at R = 10")
    print(f"  {'page':<10} {'true chars':>10} {'est chars':>9} {'text px':>7}  v1 / v2 mode")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in DENSITY_KINDS:
            path, true_chars = density_pdf(Path(tmp) / f"{kind}.pdf", kind)
            image, _, doc = load(Path(path))
            est = estimate_image(image)
            choices = [choose_mode(f, image.width, image.height, est) for f in ("v1", "v2")]
            modes = " / ".join(
                f"{c.mode}{f' {c.tiles[0]}x{c.tiles[1]}' if c.tiles else ''} ({c.vision_tokens})"
                for c in choices
            )
            print(f"  {kind:<10} {true_chars:>10} {est.chars:>9} {est.text_height:>7.1f}  {modes}")
            assert doc is not None
            doc.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
