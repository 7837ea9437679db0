"""``ocrpress modes FILE... --auto``: what ``--mode auto`` would choose, without a model.

Pages are rendered and estimated exactly as the render workers will (same renderer, same
estimate), one file after the other; a file that cannot be read is reported in one line and
the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..discovery import discover
from ..inputs import InputDoc, InputError, PageRenderer, count_pages
from ..modes import plan_tokens
from .choose import DEFAULT_MAX_COMPRESSION, ModeChoice, choose_mode
from .estimate import TextEstimate, estimate_rendered


@dataclass
class PageChoice:
    """One page of the dry run: its size, estimate and choice per family."""

    doc: str
    index: int
    width: int
    height: int
    estimate: TextEstimate
    choices: dict[str, ModeChoice]
    gundam_tokens: dict[str, int]


@dataclass
class DryRun:
    """Pages chosen so far, and the files that could not be read."""

    pages: list[PageChoice] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def totals(self, family: str) -> tuple[int, int]:
        """(vision tokens under auto, vision tokens under all-gundam) for ``family``."""
        auto = sum(p.choices[family].vision_tokens for p in self.pages)
        return auto, sum(p.gundam_tokens[family] for p in self.pages)


def estimate_doc_page(
    renderer: PageRenderer, doc: InputDoc, index: int, dpi: int
) -> tuple[int, int, TextEstimate]:
    """(width, height, estimate) of one page, rendered as the pipeline renders it."""
    image = renderer.render(doc, index, dpi)
    return (
        image.width,
        image.height,
        estimate_rendered(renderer, doc, index, image.image, image.dpi),
    )


def dry_run(
    files: Iterable[str],
    families: list[str],
    *,
    max_compression: float = DEFAULT_MAX_COMPRESSION,
    dpi: int = 144,
    max_tiles: int = 6,
    on_page: Callable[[PageChoice], None] | None = None,
) -> DryRun:
    """Estimate and choose every page of ``files``; ``on_page`` sees each as it is done."""
    run = DryRun()
    docs, problems = discover(list(files))
    run.problems.extend(problems)
    renderer = PageRenderer()
    try:
        for doc in docs:
            try:
                pages = []
                for index in range(count_pages(doc)):
                    width, height, est = estimate_doc_page(renderer, doc, index, dpi)
                    page = PageChoice(doc.display, index, width, height, est, {}, {})
                    for f in families:
                        page.choices[f] = choose_mode(
                            f, width, height, est, max_compression, max_tiles=max_tiles
                        )
                        gundam = plan_tokens(f, "gundam", width, height, max_tiles=max_tiles)
                        page.gundam_tokens[f] = gundam.vision_tokens
                    pages.append(page)
            except InputError as e:
                run.problems.append(f"{doc.display}: {e}")
                continue
            for page in pages:  # a document counts whole or not at all
                run.pages.append(page)
                if on_page is not None:
                    on_page(page)
    finally:
        renderer.close()
    return run


def page_lines(page: PageChoice) -> list[str]:
    """The dry run's lines for one page: its estimate, then one line per family."""
    est = page.estimate
    head = (
        f"{page.doc} p{page.index + 1}  {page.width}x{page.height}  {est.source:<10}  "
        f"~{est.chars} chars ~{est.text_tokens} text tokens, text {est.text_height:.0f} px"
    )
    lines = [head]
    for family, c in page.choices.items():
        grid = f" {c.tiles[0]}x{c.tiles[1]}" if c.tiles else ""
        note = "" if c.fits else "  (even gundam fails a criterion)"
        lines.append(
            f"  {family}: {c.mode + grid:<10} {c.vision_tokens:>5} vision tokens  "
            f"ratio {c.ratio:4.1f}  text {c.text_height_view_px:.1f} px in view{note}"
        )
    return lines


def total_lines(run: DryRun, families: list[str]) -> list[str]:
    """Per family: vision tokens under auto against all-gundam, and the saving."""
    out = []
    for family in families:
        auto, gundam = run.totals(family)
        saving = 100 * (1 - auto / gundam) if gundam else 0.0
        counts: dict[str, int] = {}
        for p in run.pages:
            counts[p.choices[family].mode] = counts.get(p.choices[family].mode, 0) + 1
        modes = ", ".join(f"{m} {n}" for m, n in counts.items())
        n = len(run.pages)
        out.append(
            f"{family}: {n} page{'s' if n != 1 else ''} ({modes}): {auto} vision tokens with auto, "
            f"{gundam} all-gundam, {saving:.0f}% fewer"
        )
    return out


def dry_run_cli(
    files: Iterable[str], families: list[str], max_compression: float, dpi: int, max_tiles: int
) -> int:
    """Print the dry run (pages on stdout, unreadable files on stderr); the exit code."""
    import logging

    import click

    from ..errors import EXIT_FAILED_INPUTS, EXIT_OK

    log = logging.getLogger("ocrpress")

    def show(page: PageChoice) -> None:
        for line in page_lines(page):
            click.echo(line)

    run = dry_run(
        files, families, max_compression=max_compression, dpi=dpi, max_tiles=max_tiles,
        on_page=show,
    )  # fmt: skip
    for problem in run.problems:
        log.error("%s", problem)
    if run.pages:
        click.echo(f"\ntotal at max compression {max_compression:g}:")
        for line in total_lines(run, families):
            click.echo(f"  {line}")
    return EXIT_FAILED_INPUTS if run.problems or not run.pages else EXIT_OK
