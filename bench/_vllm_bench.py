"""``bench/gpu_throughput.py --engine vllm``: the same seeded pages and forced lengths through
ocrpress's vLLM engine in one ``LLM.generate`` call (continuous batching). vLLM needs a
checkpoint folder in the original DeepSeek layout (``--dummy-weights`` uses vLLM's random
weights, so only the config and tokenizer files need to be there)."""

from __future__ import annotations

import argparse
import random
import sys
import time

from _vlm import A4_144DPI, synthetic_pages

from ocrpress.engines import EngineOptions


def run_vllm(args: argparse.Namespace) -> int:
    """The same seeded pages and forced lengths through ocrpress's vLLM engine."""
    from ocrpress.engines import EngineError
    from ocrpress.engines.vllm import VllmEngine
    from ocrpress.engines.vllm_spec import build_request, sampling_kwargs

    try:
        import vllm
    except ImportError:
        print("--engine vllm needs vLLM: pip install 'ocrpress[vllm]'", file=sys.stderr)
        return 2
    extra = {"vllm": {"load_format": "dummy"}} if args.dummy_weights else {}
    opts = EngineOptions(engine="vllm", model=args.model, mode="gundam", extra=extra)
    try:
        engine = VllmEngine(opts)
    except EngineError as e:
        print(f"--engine vllm: {e}", file=sys.stderr)
        return 2
    n_pages = args.pages or 64
    lo, hi = args.min_tokens or 300, args.max_tokens or 1500
    rng = random.Random(args.seed)
    pages = synthetic_pages(n_pages, A4_144DPI, args.seed)
    targets = [rng.randint(lo, hi) for _ in pages]
    base = sampling_kwargs(hi + 8, opts.ngram_size, opts.ngram_window)
    base.pop("extra_args", None)  # forced lengths: the guard would fight them
    params = [vllm.SamplingParams(**{**base, "min_tokens": t, "max_tokens": t}) for t in targets]
    requests = [build_request(p, engine.prompt) for p in pages]
    engine.llm.generate(requests[:2], params[:2], use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outputs = engine.llm.generate(requests, params, use_tqdm=False)
    secs = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(
        f"vllm engine      : {n_pages} pages {secs:7.1f} s  {n_pages / secs:6.2f} pages/s  "
        f"{tokens / secs:8.0f} tokens/s"
    )
    return 0
