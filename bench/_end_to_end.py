"""``bench/gpu_throughput.py --end-to-end``: generated A4 PDFs converted by the pipeline the
CLI runs (render workers, page preparation, refill decoding, figure crops, journal and output
writing), with the engine built in memory instead of loaded from disk, and the run's device
timeline."""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from _timeline import DeviceTimeline, graphs_line, line
from _vlm import force_lengths_hook, lengths

from ocrpress.engines.deepseek import DeepSeekEngine


def end_to_end(
    eng: DeepSeekEngine, args: argparse.Namespace, lo: int, hi: int, warm_captures: int = 0
) -> None:
    """Generated PDFs through the CLI's pipeline (render workers -> refill engine -> writers);
    ``warm_captures``: the CUDA graphs the engine's warm-up captured, not this run's."""
    import pymupdf
    from _common import text_pdf

    from ocrpress.inputs import discover
    from ocrpress.pipeline import Converter, ConvertOptions
    from ocrpress.render import PRELOAD_INPUTS, make_pool

    per_doc = 8
    with tempfile.TemporaryDirectory(prefix="ocrpress-e2e-") as tmp:
        # The model is in memory; its processor goes to a folder, so that the render workers
        # can load it and prepare pages as they do for a checkpoint folder.
        eng.processor.save_pretrained(Path(tmp) / "processor")
        eng.inputs_recipe = replace(eng.inputs_recipe, folder=str(Path(tmp) / "processor"))
        paths = []
        for d in range((args.pages + per_doc - 1) // per_doc):
            n = min(per_doc, args.pages - d * per_doc)
            paths.append(str(text_pdf(Path(tmp) / f"doc{d:03d}.pdf", n, seed=100 * d)))
        docs, _ = discover(paths)
        want = lengths(args.pages, lo, hi, args.seed)
        target_of = {}
        k = 0
        for doc, path in zip(docs, paths, strict=True):
            with pymupdf.open(path) as pdf:
                for i in range(pdf.page_count):
                    target_of[(doc.display, i)] = want[k]
                    k += 1
        eng.step_hook = force_lengths_hook(
            lambda p: target_of[(p.source, p.index)], min(eng.eos_ids), len(eng.tokenizer)
        )
        opts = ConvertOptions(
            output=str(Path(tmp) / "out"),
            formats=["markdown", "json"],
            workers=args.workers,
            ocr="always",  # the generated PDFs have text layers: --ocr auto would skip the GPU
            engine=eng.opts,
        )
        # A CLI run's render workers import torch (seconds) in their forkserver while the
        # model loads; this model is already in memory, so start that forkserver first.
        pool = make_pool(1, PRELOAD_INPUTS)
        pool.submit(sum, []).result()
        pool.shutdown()
        conv = Converter(opts, engine=eng, on_error=lambda m: print("error:", m))
        with DeviceTimeline(read_late=eng.read_late) as timeline:
            conv.run(docs)
        s = conv.stats.to_dict()
        print(timeline.report())
        print(f"pages prepared by render workers: {eng.prepared_by_workers} of {s['pages']}")
        print(f"pages parked in host memory (cache full): {eng.decode_stats.parked}")
        print(graphs_line(eng, warm_captures))
        print(
            json.dumps(
                {
                    k: s[k]
                    for k in (
                        "pages",
                        "wall_seconds",
                        "pages_per_second",
                        "text_tokens_per_second",
                        "text_tokens_per_page",
                        "engine_busy_fraction",
                        "decode_slot_utilisation",
                    )
                }
            )
        )
        line(
            f"end to end ({args.workers}w)",
            s["pages"],
            s["wall_seconds"],
            conv.stats.text_tokens,
            s["engine_busy_fraction"],
            s["decode_slot_utilisation"],
        )
