"""Scale-out overhead: the same 40-page job on the single-process pipeline and on Ray Data.

Ray runs with 1 and 2 actors on fake GPUs (``ray.init(num_gpus=2)``) and the deterministic
EchoEngine (``ECHO_DELAY`` seconds of "model" per page), so the numbers are Ray's own cost.
Each configuration runs a 10-page and a 40-page job; a line through the two walls gives the
fixed start-up cost (intercept) and the per-page cost (slope). One run each, ratios printed.

    python bench/scale.py [--delay 0.05]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pymupdf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from ocrpress.engines import EngineOptions  # noqa: E402
from ocrpress.inputs import discover  # noqa: E402
from ocrpress.pipeline import Converter, ConvertOptions  # noqa: E402


def make_docs(folder: Path, pages: int, per_doc: int = 5) -> list[str]:
    folder.mkdir(parents=True)
    paths = []
    for d in range(pages // per_doc):
        doc = pymupdf.open()
        for i in range(per_doc):
            doc.new_page().insert_text((72, 72), f"doc {d} page {i + 1} " * 5)
        path = folder / f"doc{d:03d}.pdf"
        doc.save(path)
        paths.append(str(path))
    return paths


def opts(out: Path) -> ConvertOptions:
    return ConvertOptions(
        output=str(out),
        formats=["markdown", "json"],
        dpi=72,
        workers=1,
        ocr="always",  # generated PDFs have text layers; the engine path is measured
        engine=EngineOptions(engine="fake_engines:EchoEngine", batch_size=4),
    )


def single(paths: list[str], out: Path) -> float:
    t = time.perf_counter()
    docs, _ = discover(paths)
    Converter(opts(out)).run(docs)
    return time.perf_counter() - t


def on_ray(paths: list[str], out: Path, actors: int) -> float:
    from ocrpress.cluster import RayConverter

    t = time.perf_counter()
    docs, _ = discover(paths)
    RayConverter(opts(out), actors=actors).run(docs)
    return time.perf_counter() - t


def fit(small: tuple[int, float], big: tuple[int, float]) -> tuple[float, float]:
    """(fixed seconds, seconds per page) of the line through two (pages, wall) points."""
    per_page = (big[1] - small[1]) / (big[0] - small[0])
    return small[1] - per_page * small[0], per_page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay", type=float, default=0.05, help="engine seconds per page")
    args = ap.parse_args()
    os.environ["ECHO_DELAY"] = str(args.delay)
    os.environ["PYTHONPATH"] = str(ROOT / "tests")  # Ray workers import the test engine
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = {n: make_docs(root / f"in{n}", n) for n in (10, 40)}
        rows: dict[str, tuple[float, float, float]] = {}
        walls = {n: single(p, root / f"single{n}") for n, p in jobs.items()}
        rows["pipeline (1 process)"] = (0.0, *fit((10, walls[10]), (40, walls[40])))
        t = time.perf_counter()
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
        init = time.perf_counter() - t
        try:
            for actors in (1, 2):
                walls = {n: on_ray(p, root / f"ray{actors}-{n}", actors) for n, p in jobs.items()}
                rows[f"ray, {actors} actor(s)"] = (init, *fit((10, walls[10]), (40, walls[40])))
        finally:
            ray.shutdown()

    base_fixed, base_page = rows["pipeline (1 process)"][1:]
    print(f"40-page job, EchoEngine {args.delay * 1000:.0f} ms/page, {os.cpu_count()} cores")
    print(f"{'runner':<22} {'ray.init s':>10} {'fixed s':>8} {'ms/page':>8} {'40 pages s':>10}")
    for name, (init_s, fixed, page) in rows.items():
        wall40 = init_s + fixed + 40 * page
        print(f"{name:<22} {init_s:>10.2f} {fixed:>8.2f} {page * 1000:>8.1f} {wall40:>10.2f}")
    for name, (init_s, fixed, page) in rows.items():
        if name.startswith("ray"):
            print(
                f"{name}: per-page cost {page / base_page:.2f}x the pipeline's, "
                f"fixed cost {(init_s + fixed) / max(base_fixed, 1e-3):.1f}x "
                f"(+{init_s + fixed - base_fixed:.1f} s, ray.init included)"
            )


if __name__ == "__main__":
    main()
