"""``ocrpress modes``: each resolution mode's cost for a page, or ``--auto``'s dry run."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import EXIT_ENGINE, EXIT_FAILED_INPUTS
from .logs import setup_logging
from .modes import DEFAULT_MAX_COMPRESSION

log = logging.getLogger("ocrpress")


def max_compression_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--max-compression R`` (``--mode auto``'s R), as ``convert`` and ``modes`` take it."""
    return click.option(
        "--max-compression",
        type=click.FloatRange(min=1, max=100),
        default=DEFAULT_MAX_COMPRESSION,
        show_default=True,
        help=help,
    )


@click.command()
@click.option("--model", default=None, help="Model whose modes to show (hub id or folder).")
@click.option(
    "--family",
    type=click.Choice(["v1", "v2"]),
    default=None,
    help="v1 = DeepSeek-OCR, v2 = DeepSeek-OCR-2 (default: from --model, else both).",
)
@click.option("--dpi", default=144, show_default=True, type=click.IntRange(36, 600))
@click.option("--max-tiles", type=click.IntRange(1, 9), default=6, show_default=True)
@click.option(
    "--auto",
    "auto_mode",
    is_flag=True,
    help="Dry run of --mode auto: every page's text estimate and chosen mode, no model.",
)
@max_compression_option("With --auto: most estimated text tokens per vision token a mode may take.")
@click.argument("files", nargs=-1)
def modes(
    model: str | None,
    family: str | None,
    dpi: int,
    max_tiles: int,
    auto_mode: bool,
    max_compression: float,
    files: tuple[str, ...],
) -> None:
    """Show each resolution mode's views, tile grid and vision tokens for a page.

    FILE's first page is measured (default: an A4 page at --dpi). With --auto, every page of
    every FILE gets the mode --mode auto would choose.
    """
    from . import modes as m

    setup_logging(False, False)
    if auto_mode and not files:
        raise click.UsageError("--auto needs at least one FILE")
    if len(files) > 1 and not auto_mode:
        raise click.UsageError("give one FILE (several only with --auto)")
    file = files[0] if files else None
    if family is None and model is not None:
        from .engines.deepseek_spec import model_family

        try:
            family = model_family(model)
        except Exception as e:
            log.error("%s", e)
            sys.exit(EXIT_ENGINE)
    if auto_mode:
        from .tiering.dryrun import dry_run_cli

        sys.exit(
            dry_run_cli(
                files, [family] if family else ["v1", "v2"], max_compression, dpi, max_tiles
            )
        )
    if file:
        from .discovery import discover
        from .inputs import InputError, PageRenderer

        docs, problems = discover([file])
        if not docs:
            raise click.UsageError("; ".join(problems) or f"{file}: not a document")
        try:
            page = PageRenderer().render(docs[0], 0, dpi)
        except InputError as e:
            log.error("%s: %s", file, e)
            sys.exit(EXIT_FAILED_INPUTS)
        width, height, what = page.width, page.height, f"{file} page 1"
    else:
        # A4 is 595 x 842 pt; this is what a PDF page renders to at --dpi.
        width, height = round(595 * dpi / 72), round(842 * dpi / 72)
        what = f"A4 page at {dpi} dpi"
    families = [family] if family else ["v1", "v2"]
    click.echo(f"{what}: {width} x {height} px")
    names = {"v1": "DeepSeek-OCR (v1)", "v2": "DeepSeek-OCR-2"}
    for fam in families:
        click.echo(f"\n{names[fam]}")
        click.echo(
            f"  {'mode':<8} {'global view':<12} {'tile':<6} {'grid':<6} {'vision tokens':>13}"
        )
        for name, spec in m.modes_for(fam).items():
            plan = m.plan_tokens(fam, name, width, height, max_tiles=max_tiles)
            grid = f"{plan.tiles[0]}x{plan.tiles[1]}" if plan.tiles else "-"
            tile = str(spec.tile_size) if plan.tiles else "-"
            click.echo(
                f"  {name:<8} {spec.base_size:<12} {tile:<6} {grid:<6} {plan.vision_tokens:>13}"
            )
        for name in ("tiny", "small", "base", "large", "gundam"):
            if name not in m.modes_for(fam):
                try:
                    m.get_mode(fam, name)
                except ValueError as e:
                    click.echo(f"  {name:<8} not available: {e}")
