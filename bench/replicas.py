"""Decode-slot use of the same DeepSeek job through each runner: one process, ``--devices``
replicas (fake GPUs), and Ray actors with their calls overlapping or one by one.

The tiny random DeepSeek-OCR-2 (CPU proxy) decodes generated A4 pages to forced lengths
(``FORCE_LENGTHS``, the ``--tiny`` mix of ``gpu_throughput.py``: 12..60 tokens) with 4 decode
slots a replica (``--slots``), one render worker (``--devices``: two a replica, so that they
prepare the replicas' pages). ``--devices N`` runs N replicas on fake GPUs
(``OCRPRESS_FAKE_GPUS``); Ray runs one actor on a fake GPU and hands it the engine's batch,
16 pages, a call (``--call-pages``). "one call at a time" is Ray Data's default actor pool,
as actors ran before they took two calls at once: each call's decode then ends with its
longest pages alone in the slots. Ray's runs alternate, after a warm-up. On a 2-core VM the
replicas, the render worker and Ray share the cores: read the slots, not the wall time.

    python bench/replicas.py [--pages 48] [--repeat 2] [--slots 4] [--devices 2]
                             [--call-pages N] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))

from _common import text_pdf  # noqa: E402

from ocrpress import cluster  # noqa: E402
from ocrpress.engines import EngineOptions  # noqa: E402
from ocrpress.inputs import discover  # noqa: E402
from ocrpress.pipeline import RUN_STATS_FILE, Converter, ConvertOptions  # noqa: E402

LENGTHS = "12,60"


def options(out: Path, model: Path, slots: int) -> ConvertOptions:
    return ConvertOptions(
        output=str(out),
        formats=["markdown", "json"],
        workers=1,
        ocr="always",  # the generated PDFs have text layers: --ocr auto would skip the model
        engine=EngineOptions(
            engine="_forced_engine:ForcedLengthDeepSeek",
            model=str(model),
            mode="small",
            device="cpu",
            batch_size=slots,
            max_new_tokens=72,
        ),
    )


def report(label: str, out: Path, wall: float) -> float | None:
    """Print a run's line; its decode-slot utilisation."""
    s = json.loads((out / RUN_STATS_FILE).read_text())
    slots, busy = s.get("decode_slot_utilisation"), s.get("engine_busy_fraction")
    print(
        f"{label:<26} {s['pages']:>5} {wall:>7.1f} {s['pages'] / wall:>7.2f} "
        f"{slots if slots is not None else float('nan'):>6.3f} "
        f"{busy if busy is not None else float('nan'):>6.3f}",
        flush=True,
    )
    return slots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each Ray setting, alternated")
    ap.add_argument("--slots", type=int, default=4, help="decode slots (default 4)")
    ap.add_argument(
        "--call-pages",
        type=int,
        default=None,
        help="pages Ray hands the actor a call (default: the engine's batch, 4x the slots; "
        "a DeepSeek run with automatic slots gets 128, e.g. 1.3x the 96 slots of an H100)",
    )
    ap.add_argument("--devices", type=int, default=2, help="fake GPUs for --devices (0: none)")
    ap.add_argument("--no-ray", action="store_true", help="leave out the Ray runs")
    args = ap.parse_args()
    from tiny_models import build_tiny_v2

    os.environ["FORCE_LENGTHS"] = LENGTHS  # the single-process run's engine reads it here
    sys.path.insert(0, str(BENCH))
    with tempfile.TemporaryDirectory(prefix="ocrpress-replicas-") as tmp:
        root = Path(tmp)
        model = build_tiny_v2(root / "model")
        (root / "in").mkdir()
        paths = [
            str(text_pdf(root / "in" / f"doc{d:02d}.pdf", 8, seed=d))
            for d in range((args.pages + 7) // 8)
        ]
        docs, _ = discover(paths)
        print(f"{'run':<26} {'pages':>5} {'wall s':>7} {'pages/s':>7} {'slots':>6} {'busy':>6}")
        t = time.perf_counter()
        Converter(options(root / "single", model, args.slots)).run(docs)
        report("single process", root / "single", time.perf_counter() - t)
        path = os.pathsep.join([str(BENCH), str(ROOT / "tests"), str(ROOT)])
        if args.devices:
            on_devices(root, model, docs, args, path)
        if not args.no_ray:
            on_ray(root, model, docs, args, path)
    return 0


def on_devices(root: Path, model: Path, docs: list, args: argparse.Namespace, path: str) -> None:
    """``--devices all`` on ``args.devices`` fake GPUs (the replicas import the bench engine
    by name: PYTHONPATH)."""
    os.environ |= {"OCRPRESS_FAKE_GPUS": str(args.devices), "PYTHONPATH": path}
    for k in range(args.repeat):
        out = root / f"devices{k}"
        # Two render workers a replica: enough for them to prepare the replicas' pages.
        opts = replace(options(out, model, args.slots), devices="all", workers=2 * args.devices)
        t = time.perf_counter()
        conv = Converter(opts)
        conv.run(docs)
        report(f"--devices, {args.devices} replicas", out, time.perf_counter() - t)
        assert conv.device_pool is not None
        stats = json.loads((out / RUN_STATS_FILE).read_text())
        print(
            f"  pages per device {conv.device_pool.pages_per_device}, prepared by the render "
            f"workers {stats['pages_prepared_by_workers']}",
            flush=True,
        )


def on_ray(root: Path, model: Path, docs: list, args: argparse.Namespace, path: str) -> None:
    """One actor on a fake GPU, its calls overlapping or one by one, alternated."""
    import ray

    ray.init(
        num_cpus=2,
        num_gpus=1,  # a fake GPU: the actor's engine runs on the CPU (device="cpu")
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "FORCE_LENGTHS": LENGTHS}},
    )
    if args.call_pages:
        cluster.ray_batch_rows = lambda opts, planner: args.call_pages  # type: ignore
    overlapping = cluster.actor_compute
    one_by_one = lambda r, n: (r.data.ActorPoolStrategy(size=n), {})  # noqa: E731
    runs = [("ray, calls overlapping", overlapping), ("ray, one call at a time", one_by_one)]
    try:
        # Ray's first job starts its workers (and their imports): a warm-up, not timed.
        cluster.RayConverter(options(root / "warm", model, args.slots), actors=1).run(docs[:1])
        used: dict[str, list[float]] = {label: [] for label, _ in runs}
        for k, (label, compute) in enumerate(runs * args.repeat):
            cluster.actor_compute = compute  # type: ignore[assignment]
            out = root / f"ray{k}"
            t = time.perf_counter()
            cluster.RayConverter(options(out, model, args.slots), actors=1).run(docs)
            slots = report(label, out, time.perf_counter() - t)
            if slots is not None:
                used[label].append(slots)
        mean = {label: sum(v) / len(v) for label, v in used.items() if v}
        if len(mean) == 2:
            a, b = (mean[label] for label, _ in runs)
            print(f"decode slots used, calls overlapping vs one at a time: {a / b:.2f}x")
    finally:
        cluster.actor_compute = overlapping  # type: ignore[assignment]
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
