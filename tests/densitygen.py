"""Pages of rising text density, generated in code: a slide, a letter, a dense two-column
paper page, a small-print newspaper page. ``--mode auto`` tests and ``bench/auto_mode.py``
use them to check that denser, smaller print gets dearer modes.
"""

from __future__ import annotations

from pathlib import Path

import pymupdf
from docgen import A4, _draw_paragraphs, sample_text

#: kind -> (page size in points, columns, font, font size, margin in points)
DENSITY_KINDS: dict[str, tuple[tuple[float, float], int, str, float, float]] = {
    "slide": ((960, 540), 1, "helv", 28, 60),
    "letter": (A4, 1, "helv", 11, 72),
    "paper": (A4, 2, "tiro", 9, 48),
    # A broadsheet (about 600 x 380 mm) in six columns of 6.5-pt type.
    "newspaper": ((1077, 1700), 6, "tiro", 6.5, 36),
}

#: Words on the slide and lines in the letter: a slide says little, a letter fills half a page.
SLIDE_WORDS = 20
LETTER_LINES = 14


def _paragraphs(kind: str, seed: int) -> list[str]:
    if kind == "slide":
        words = " ".join(sample_text(4, seed, words_per_line=(5, 6))).split()[:SLIDE_WORDS]
        return [" ".join(words[i : i + 5]) for i in range(0, len(words), 5)]
    if kind == "letter":
        lines = sample_text(LETTER_LINES, seed)
        return [" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]
    # Dense kinds: more paragraphs than fit; the drawing stops at each column's foot.
    return [" ".join(sample_text(5, seed + k)) for k in range(400)]


def density_pdf(path: str | Path, kind: str, *, seed: int = 3) -> tuple[str, int]:
    """Write a one-page PDF of ``kind`` (see :data:`DENSITY_KINDS`); (path, characters drawn).

    Characters count as the estimators count them: each drawn line plus one separator.
    """
    (w, h), columns, font, size, margin = DENSITY_KINDS[kind]
    doc = pymupdf.open()
    page = doc.new_page(width=w, height=h)
    gutter = 2 * size
    col_w = (w - 2 * margin - (columns - 1) * gutter) / columns
    paragraphs = _paragraphs(kind, seed)
    drawn: list[str] = []
    for col in range(columns):
        lines, _ = _draw_paragraphs(
            page, paragraphs, x=margin + col * (col_w + gutter), y=margin, width=col_w,
            fontname=font, fontsize=size, bottom=h - margin,
        )  # fmt: skip
        drawn += lines
        used = " ".join(lines).split()
        rest = " ".join(paragraphs).split()[len(used) :]  # the next column goes on from here
        paragraphs = [" ".join(rest[i : i + 60]) for i in range(0, len(rest), 60)]
        if not paragraphs:
            break
    doc.save(str(path))
    doc.close()
    return str(path), sum(len(line) + 1 for line in drawn) - 1
