"""Command line: ``ocrpress convert`` (``ocrpress modes`` is in :mod:`.cli_modes`). Thin: flags ->
options -> pipeline."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

import click

from . import __version__
from .cli_modes import max_compression_option, modes
from .errors import (  # noqa: F401 - the exit codes are this module's documented API
    EXIT_ENGINE,
    EXIT_FAILED_INPUTS,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_TERMINATED,
    EXIT_USAGE,
)
from .logs import setup_logging

log = logging.getLogger("ocrpress")

CONVERT_EXAMPLES = """
\b
Examples:
  ocrpress convert scan.pdf                      # Markdown on stdout
  ocrpress convert docs/ -o out/                 # mirror docs/ into out/*.md
  ocrpress convert 'inbox/**/*.pdf' -o out/ -f markdown,json
  ocrpress convert report.pdf --pages 1-3,7 -f json -o - | jq .status
  find . -name '*.png' | ocrpress convert - -o out/     # paths on stdin
  curl -s https://example.org/a.pdf | ocrpress convert - -f text   # bytes on stdin
  ocrpress convert docs/ -o out/ --engine deepseek --mode gundam --batch-size 16
  ocrpress convert docs/ -o out/ --engine deepseek --mode auto   # each page its mode
  ocrpress convert report.pdf --ocr always       # OCR even pages that have a text layer
"""


def _check_engine(value: str) -> str:
    if value in ("auto", "rapid", "deepseek", "vllm") or ":" in value:
        return value
    raise click.BadParameter(f"{value!r} is not one of auto, rapid, deepseek, vllm or module:Class")


def _check_mode(value: str | None) -> str | None:
    from .modes import MODE_NAMES

    if value is None or value in (*MODE_NAMES, "auto"):
        return value
    # Checked here, before any model lookup: an unknown mode is a typo, not a missing model.
    raise click.BadParameter(f"{value!r} is not one of {', '.join(MODE_NAMES)} or auto")


def _check_devices(value: str | None) -> str | None:
    if value is None:
        return None
    from .devices import parse_devices

    try:
        parse_devices(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ocrpress")
def main() -> None:
    """ocrpress: OCR PDFs and images into Markdown, JSON layout or text."""


@main.command(epilog=CONVERT_EXAMPLES)
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    help="Output folder (mirrors input paths), or - for stdout.",
)
@click.option(
    "-f",
    "--format",
    "formats",
    default="markdown",
    show_default=True,
    help="markdown, json, text, layout (pictures of each page's blocks, needs -o DIR); "
    "several comma-separated with -o DIR.",
)
@click.option(
    "--engine",
    default="auto",
    show_default=True,
    callback=lambda ctx, param, v: _check_engine(v),
    help="auto, rapid, deepseek, vllm, or package.module:Class (a plugin). auto = deepseek on"
    " a CUDA GPU with the model available, else rapid.",
)
@click.option("--model", default=None, help="Hub id or local folder of a DeepSeek-OCR model.")
@click.option(
    "--mode",
    default=None,
    callback=lambda ctx, param, v: _check_mode(v),
    help="Resolution mode: tiny, small, base, large, gundam, or auto (each page its cheapest"
    " mode, from an estimate of its text; see --max-compression).",
)
@max_compression_option(
    "--mode auto: most (estimated) text tokens per vision token a page's mode may carry."
)
@click.option(
    "--fallback",
    type=click.Choice(["rapid", "none"]),
    default="rapid",
    show_default=True,
    help="--mode auto: who reads a page that still fails after one costlier mode.",
)
@click.option(
    "--task",
    type=click.Choice(["markdown", "text", "figure"]),
    default="markdown",
    show_default=True,
    help="What the VLM is asked for.",
)
@click.option("--prompt", default=None, help="Custom VLM prompt (experts; overrides --task).")
@click.option("--dpi", default=144, show_default=True, type=click.IntRange(36, 600))
@click.option(
    "--ocr",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="auto: PDF pages whose text layer passes a check are read from it, the rest OCR'd;"
    " always: OCR every page; never: text layer only.",
)
@click.option("--pages", default=None, help="Pages per document, 1-based: 1-3,7,10-")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None, help="[auto]")
@click.option("--max-new-tokens", type=click.IntRange(1), default=8192, show_default=True)
@click.option("--max-tiles", type=click.IntRange(1, 9), default=6, show_default=True)
@click.option(
    "--ngram-size",
    type=click.IntRange(0),
    default=30,
    show_default=True,
    help="Repetition guard n-gram size (0 = off).",
)
@click.option("--ngram-window", type=click.IntRange(1), default=90, show_default=True)
@click.option("--device", default=None, help="Torch device for VLM engines (cuda, cuda:1, cpu).")
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default=None,
    help="VLM weights/compute precision [bf16 on CUDA, fp32 on CPU].",
)
@click.option("--workers", type=click.IntRange(0, 64), default=None, help="Render processes.")
@click.option(
    "--devices",
    default=None,
    callback=lambda ctx, param, v: _check_devices(v),
    help="One engine replica per GPU: all, or indices like 0,2 (pages balanced dynamically).",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    envvar="RAY_ADDRESS",
    help="Run on a Ray cluster: auto (this node's cluster) or its address [env: RAY_ADDRESS].",
)
@click.option("--overwrite", is_flag=True, help="Redo documents whose outputs are current.")
@click.option(
    "--wait",
    is_flag=True,
    help="If another run is writing into -o DIR, wait for it to end (default: exit 5 at once).",
)
@click.option("--keep-raw", is_flag=True, help="Keep the model's raw text in JSON output.")
@click.option("--retry-truncated", is_flag=True, help="Re-run truncated pages once, stricter.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary; errors only.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def convert(inputs: tuple[str, ...], **kw: Any) -> None:
    """Convert PDFs and images (files, folders, 'globs', or - for stdin) to Markdown/JSON/text."""
    from .discovery import discover
    from .engines import EngineError, EngineOptions
    from .errors import OcrpressError, Terminated
    from .pipeline import Converter, ConvertOptions
    from .procs import raise_on_sigterm
    from .writers import check_output, parse_formats

    setup_logging(kw["quiet"], kw["verbose"])
    raise_on_sigterm()
    try:
        formats = parse_formats(kw["formats"])
        check_output(formats, kw["output"])
        if kw["output"] == "-" and len(formats) > 1:
            raise click.UsageError("stdout takes one format; use -o DIR for several")
        from .inputs import parse_page_ranges

        parse_page_ranges(kw["pages"])
    except ValueError as e:
        raise click.UsageError(str(e)) from None

    eng_opts = EngineOptions(
        engine=kw["engine"],
        model=kw["model"],
        mode=kw["mode"],
        task=kw["task"],
        prompt=kw["prompt"],
        max_new_tokens=kw["max_new_tokens"],
        max_tiles=kw["max_tiles"],
        ngram_size=kw["ngram_size"],
        ngram_window=kw["ngram_window"],
        batch_size=kw["batch_size"],
        device=kw["device"],
        dtype=kw["dtype"],
        max_compression=kw["max_compression"],
        fallback=kw["fallback"],
    )
    opts = ConvertOptions(
        output=kw["output"],
        formats=formats,
        dpi=kw["dpi"],
        pages=kw["pages"],
        workers=kw["workers"],
        overwrite=kw["overwrite"],
        keep_raw=kw["keep_raw"],
        retry_truncated=kw["retry_truncated"],
        progress=not kw["quiet"] and sys.stderr.isatty(),
        keep_results=False,
        devices=kw["devices"],
        wait=kw["wait"],
        ocr=kw["ocr"],
        engine=eng_opts,
    )
    stdin = sys.stdin.buffer if "-" in inputs else None
    if stdin is not None and sys.stdin.isatty():
        raise click.UsageError("'-' reads paths or a document from stdin, but stdin is a terminal")
    to_dir = kw["output"] != "-"
    if to_dir and os.path.exists(kw["output"]) and not os.path.isdir(kw["output"]):
        raise click.UsageError(f"-o {kw['output']}: exists and is not a folder")
    notes: list[str] = []
    # The output folder is never an input: its figure crops would be converted next run.
    docs, problems = discover(
        inputs, stdin=stdin, exclude=[kw["output"]] if to_dir else [], notes=notes
    )
    for n in notes:
        log.info("%s", n)
    for p in problems:
        log.error("%s", p)
    if not docs:
        log.error("no input documents found")
        sys.exit(EXIT_USAGE)

    if kw["ray_address"] and kw["devices"]:
        raise click.UsageError("--ray and --devices exclude each other (Ray places the replicas)")
    if kw["ray_address"] and kw["mode"] == "auto":
        raise click.UsageError(
            "--mode auto runs on one machine (--devices for several GPUs), not yet with --ray"
        )
    if kw["ray_address"]:
        from .cluster import RayConverter

        conv: Any = RayConverter(opts, address=kw["ray_address"])
    else:
        conv = Converter(opts)
    try:
        results = conv.run(docs)
    except EngineError as e:
        log.error("%s", e)
        sys.exit(EXIT_ENGINE)
    except OcrpressError as e:
        log.error("%s", e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _stop_now("interrupted", EXIT_INTERRUPTED)
    except Terminated:
        _stop_now("terminated", EXIT_TERMINATED)
    if not kw["quiet"]:
        log.info("%s", conv.stats.summary())
        if conv.stats.truncated:
            for item in conv.stats.truncated:
                log.info("truncated: %s", item)
    # Results are not kept (memory), so judge by the run's counters, not by r.ok.
    stats = conv.stats
    if results and all(r.skipped for r in results) and stats.unselected_documents == len(results):
        log.error("--pages %s selects no page of any document", kw["pages"])
        sys.exit(EXIT_FAILED_INPUTS)
    failed = (
        problems or stats.failed_documents or stats.failed_pages or any(r.error for r in results)
    )
    sys.exit(EXIT_FAILED_INPUTS if failed else EXIT_OK)


def _stop_now(what: str, code: int) -> None:
    """Ctrl-C or SIGTERM: one line, then exit at once.

    Every finished page is already journaled and fsync'ed and outputs are written atomically,
    so there is nothing left to save; interpreter shutdown would only race render workers
    that are still starting (their tracebacks). The workers die with this process.
    """
    log.error("%s; finished pages are kept, run the same command again to resume", what)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


main.add_command(modes)

if __name__ == "__main__":
    main()
