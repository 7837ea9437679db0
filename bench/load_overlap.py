"""Pages rendered while the model loads, against loading first (issue 11: keep the GPU busy).

Each run is a fresh process (imports, model load, render worker, writes all counted) that
converts the same PDFs with a DeepSeek checkpoint from disk (default: the tests' tiny random
DeepSeek-OCR-2, built here). Two arms, alternated: ``overlapped`` (ocrpress as it is: the
model loads on a thread while the render workers render and prepare the first pages) and
``serial`` (the same code with that step switched off: the first page is rendered after the
load). Printed per run and as medians: the model's load, wall time, engine busy fraction
(from the end of the load), pages/s, when the first prefill started (after the load) and its
pages; and the serial/overlapped wall-time ratio. With ``--devices`` the model loads in
the device replicas' processes (``OCRPRESS_FAKE_GPUS=N`` on a machine without GPUs, which
also puts the replicas on the CPU), whose prefills this process does not see.

    python bench/load_overlap.py --rounds 3 --pages 32 --workers 1
    OCRPRESS_FAKE_GPUS=2 python bench/load_overlap.py --devices all --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()  # the child's clock starts before its imports

ROOT = Path(__file__).resolve().parent.parent


def child(
    arm: str, model: str, docs: str, workers: int, tokens: int, mode: str, devices: str | None
) -> None:
    """One conversion in this process; prints its numbers as one JSON line."""
    sys.path.insert(0, str(ROOT))
    from _timeline import DeviceTimeline

    from ocrpress.engines import EngineOptions
    from ocrpress.inputs import discover
    from ocrpress.pipeline import Converter, ConvertOptions

    if arm == "serial":
        Converter._render_while_loading = lambda *a, **k: None  # type: ignore[method-assign]
    found, _ = discover([docs])
    with tempfile.TemporaryDirectory(prefix="ocrpress-bench-") as out:
        fake = devices and os.environ.get("OCRPRESS_FAKE_GPUS")
        engine = EngineOptions(
            engine="deepseek", model=model, mode=mode, max_new_tokens=tokens,
            device="cpu" if fake else None,
        )  # fmt: skip
        opts = ConvertOptions(
            output=out, formats=["markdown"], workers=workers, ocr="always", engine=engine,
            devices=devices,
        )  # fmt: skip
        conv = Converter(opts)
        with DeviceTimeline() as timeline:
            conv.run(found)
    st = conv.stats
    prefills = timeline.calls["_prefill"]
    print(
        json.dumps(
            {
                "wall": time.perf_counter() - START,
                "load": st.engine_ready - st.started,
                "busy": st.engine_busy_fraction,
                "pages": st.pages,
                # From the end of the load to the first prefill's start; its pages (not seen
                # here when the replicas decode in their own processes).
                "first_prefill": timeline.t0 + prefills[0][0] - st.engine_ready
                if prefills
                else None,
                "first_pages": prefills[0][2] if prefills else None,
                "prefills": len(prefills),
                "prepared_by_workers": st.to_dict()["pages_prepared_by_workers"],
            }
        )
    )


def run_arm(arm: str, args: argparse.Namespace, model: str, docs: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", arm, "--model", model, "--docs", docs]
    cmd += ["--workers", str(args.workers), "--tokens", str(args.tokens), "--mode", args.mode]
    if args.devices:
        cmd += ["--devices", args.devices]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{arm} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pages", type=int, default=32, help="pages in all (8-page PDFs)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=20, help="new tokens a page")
    ap.add_argument("--mode", default="small")
    ap.add_argument("--model", help="checkpoint folder (default: a tiny random one, built here)")
    ap.add_argument("--devices", help="as ocrpress's --devices (model loads in replicas)")
    ap.add_argument("--child", choices=["serial", "overlapped"], help=argparse.SUPPRESS)
    ap.add_argument("--docs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.docs, args.workers, args.tokens, args.mode, args.devices)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from docgen import labelled_pdf
    from tiny_models import build_tiny_v2

    with tempfile.TemporaryDirectory(prefix="ocrpress-bench-") as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "tiny-v2")
            Path(model).mkdir()
            build_tiny_v2(Path(model))
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for i in range(0, args.pages, 8):
            labelled_pdf(docs / f"d{i // 8}.pdf", min(8, args.pages - i))
        runs: dict[str, list[dict[str, float]]] = {"serial": [], "overlapped": []}
        for r in range(args.rounds):
            for arm in ("serial", "overlapped") if r % 2 == 0 else ("overlapped", "serial"):
                res = run_arm(arm, args, model, str(docs))
                runs[arm].append(res)
                first = (
                    f"  first prefill {res['first_prefill']:.2f} s after the load,"
                    f" {res['first_pages']} pages; {res['prefills']} prefills"
                    if res["first_prefill"] is not None
                    else ""
                )
                print(
                    f"round {r + 1} {arm:10s} load {res['load']:5.2f} s  wall {res['wall']:5.2f} s"
                    f"  busy {res['busy']:.2f}  {res['pages'] / res['wall']:5.2f} pages/s{first}"
                    f"  prepared by workers {res['prepared_by_workers']}/{res['pages']}",
                    flush=True,
                )
        keys = ("load", "wall", "busy") + (() if args.devices else ("first_prefill",))
        med = {
            arm: {k: statistics.median(r[k] for r in rs) for k in keys} for arm, rs in runs.items()
        }
        for arm, m in med.items():
            first = (
                f"  first prefill {m['first_prefill']:.2f} s after the load"
                if "first_prefill" in m
                else ""
            )
            print(
                f"median {arm:10s} load {m['load']:5.2f} s  wall {m['wall']:5.2f} s  "
                f"busy {m['busy']:.2f}{first}"
            )
        ratio = med["serial"]["wall"] / med["overlapped"]["wall"]
        print(f"wall time serial / overlapped: {ratio:.2f}x")


if __name__ == "__main__":
    main()
