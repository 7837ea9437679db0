"""Document fixtures with known text, generated in code (no binary fixtures in the repo).

Every generator returns the ground truth it drew, so tests can score OCR output with
:func:`cer`. Text is laid out line by line with our own word wrapping (measured with
pymupdf's font metrics) rather than ``insert_textbox``, so the ground truth is exactly the
lines that were drawn, in the order a reader would read them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image, ImageFilter

A4 = (595, 842)  # points
MARGIN = 56  # points; a typical 2 cm margin

# A small vocabulary of ordinary English words: OCR models are trained on real language, and
# random letter strings would measure the language model's surprise rather than legibility.
_VOCAB = (
    "the of and to in is was for that with on as by at from his her this which or had are but "
    "not have they were one all been their has more when will would there what about can so "
    "time people year first way day man thing woman life child world school state family "
    "student group country problem hand part place case week company system program question "
    "work government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "report paper river garden window market letter morning evening village summer winter "
    "ocean mountain station library museum kitchen bridge harbour engine printer document page "
    "quiet careful simple bright early late small large green yellow ancient modern gentle "
    "quickly slowly often always never perhaps together during before after between under "
    "carries follows reads writes builds opens closes finds keeps brings shows moves"
)
_WORDS = tuple(_VOCAB.split())

# Capital letters at the start of sentences and digits in some of them exercise more glyphs.
_NUMBERS = ("12", "42", "1998", "3.5", "250", "17", "2024", "8")


def sample_text(n_lines: int, seed: int, *, words_per_line: tuple[int, int] = (7, 12)) -> list[str]:
    """Return ``n_lines`` deterministic pseudo-English sentences (one sentence per line)."""
    rng = random.Random(seed)
    lines: list[str] = []
    for _ in range(n_lines):
        n = rng.randint(*words_per_line)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(1, n), rng.choice(_NUMBERS))
        sentence = " ".join(words)
        if rng.random() < 0.25:
            # A comma somewhere in the middle: punctuation is a classic OCR weak spot.
            parts = sentence.split(" ")
            k = rng.randrange(1, len(parts))
            parts[k - 1] += ","
            sentence = " ".join(parts)
        lines.append(sentence[0].upper() + sentence[1:] + ".")
    return lines


def normalize_ws(s: str) -> str:
    """Collapse runs of whitespace to one space and strip."""
    return re.sub(r"\s+", " ", s).strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, each cost 1), two-row dynamic programming."""
    # OCR output mostly matches its reference: trimming the common ends is free and often
    # shrinks the quadratic part to the few differing characters.
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    while a and b and a[-1] == b[-1]:
        a, b = a[:-1], b[:-1]
    if len(a) < len(b):
        a, b = b, a  # keep the rows as short as possible
    if not b:
        return len(a)
    # One DP row at a time, vectorised: the insertion chain cur[j] = min(cur[j-1] + 1, ...)
    # is a running minimum of (candidate - j) + j, so a row costs a few numpy calls.
    codes_b = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    idx = np.arange(len(b) + 1)
    prev = idx.copy()
    for i, ca in enumerate(a, 1):
        cost = (codes_b != ord(ca)).astype(np.int64)
        cand = np.empty_like(prev)
        cand[0] = i
        cand[1:] = np.minimum(prev[1:] + 1, prev[:-1] + cost)
        prev = np.minimum.accumulate(cand - idx) + idx
    return int(prev[-1])


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate: edit distance / reference length, after whitespace normalisation.

    An empty reference scores 0.0 against an empty hypothesis and 1.0 otherwise, so the
    value is always defined.
    """
    ref, hyp = normalize_ws(reference), normalize_ws(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return levenshtein(ref, hyp) / len(ref)


def wrap(text: str, width_pt: float, *, fontname: str = "helv", fontsize: float = 12) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width_pt`` in the given font."""
    out: list[str] = []
    cur = ""
    for word in text.split():
        trial = f"{cur} {word}" if cur else word
        if cur and pymupdf.get_text_length(trial, fontname=fontname, fontsize=fontsize) > width_pt:
            out.append(cur)
            cur = word
        else:
            cur = trial
    if cur:
        out.append(cur)
    return out


def _draw_paragraphs(
    page: pymupdf.Page,
    paragraphs: list[str],
    *,
    x: float,
    y: float,
    width: float,
    fontname: str,
    fontsize: float,
    bottom: float,
) -> tuple[list[str], float]:
    """Draw wrapped paragraphs from baseline-ish top ``y``; return (drawn lines, next y).

    Stops (without drawing) at the first line that would pass ``bottom``, so the returned
    ground truth never contains text that is not on the page.
    """
    leading = fontsize * 1.35
    drawn: list[str] = []
    for para in paragraphs:
        for line in wrap(para, width, fontname=fontname, fontsize=fontsize):
            if y + leading > bottom:
                return drawn, y
            # insert_text takes the baseline; ascent is about 0.8 em for base-14 fonts.
            page.insert_text((x, y + fontsize * 0.8), line, fontname=fontname, fontsize=fontsize)
            drawn.append(line)
            y += leading
        y += leading * 0.6  # paragraph gap: larger than the line gap so layout can see it
    return drawn, y


def make_pdf(
    path: str | Path,
    pages: list[list[str]],
    *,
    fontname: str = "helv",
    fontsize: float = 12,
    two_column: bool = False,
) -> list[str]:
    """Write an A4 PDF, one page per entry of ``pages`` (each a list of paragraphs).

    Returns the ground-truth text per page (drawn lines joined with newlines, in reading
    order). With ``two_column`` each page's paragraphs flow down the left column, then the
    right one. Text that does not fit on a page is dropped from page and ground truth alike.
    """
    doc = pymupdf.open()
    truths: list[str] = []
    w, h = A4
    for paragraphs in pages:
        page = doc.new_page(width=w, height=h)
        if two_column:
            gutter = 28
            col_w = (w - 2 * MARGIN - gutter) / 2
            left, _ = _draw_paragraphs(
                page, paragraphs, x=MARGIN, y=MARGIN, width=col_w,
                fontname=fontname, fontsize=fontsize, bottom=h - MARGIN,
            )  # fmt: skip
            # Whatever did not fit on the left continues at the top of the right column.
            rest = _remaining(paragraphs, left, col_w, fontname, fontsize)
            right, _ = _draw_paragraphs(
                page, rest, x=MARGIN + col_w + gutter, y=MARGIN, width=col_w,
                fontname=fontname, fontsize=fontsize, bottom=h - MARGIN,
            )  # fmt: skip
            drawn = left + right
        else:
            drawn, _ = _draw_paragraphs(
                page, paragraphs, x=MARGIN, y=MARGIN, width=w - 2 * MARGIN,
                fontname=fontname, fontsize=fontsize, bottom=h - MARGIN,
            )  # fmt: skip
        truths.append("\n".join(drawn))
    doc.save(str(path))
    doc.close()
    return truths


def _remaining(
    paragraphs: list[str], drawn: list[str], width: float, fontname: str, fontsize: float
) -> list[str]:
    """Paragraph text left over after ``drawn`` lines were placed (for column overflow)."""
    all_lines = [
        (i, line)
        for i, p in enumerate(paragraphs)
        for line in wrap(p, width, fontname=fontname, fontsize=fontsize)
    ]
    rest = all_lines[len(drawn) :]
    out: dict[int, list[str]] = {}
    for i, line in rest:
        out.setdefault(i, []).append(line)
    return [" ".join(v) for v in out.values()]


TWO_COLUMN_TITLE = "Annual Report of the River Library"


def make_two_column_pdf(path: str | Path, *, seed: int = 7, fontsize: float = 11) -> str:
    """Write a one-page PDF: a big full-width title, then two columns of paragraphs.

    Returns the ground truth in reading order: title, whole left column, whole right column.
    The columns hold different paragraphs (not one overflowing text) so that a reader that
    reads across the gutter line by line produces a clearly wrong order.
    """
    w, h = A4
    doc = pymupdf.open()
    page = doc.new_page(width=w, height=h)
    title_size = fontsize * 2
    page.insert_text(
        (MARGIN, MARGIN + title_size * 0.8), TWO_COLUMN_TITLE, fontname="hebo", fontsize=title_size
    )
    top = MARGIN + title_size * 2
    gutter = 34
    col_w = (w - 2 * MARGIN - gutter) / 2
    left_paras = [" ".join(sample_text(4, seed + k)) for k in range(2)]
    right_paras = [" ".join(sample_text(4, seed + 100 + k)) for k in range(2)]
    left, _ = _draw_paragraphs(
        page, left_paras, x=MARGIN, y=top, width=col_w,
        fontname="helv", fontsize=fontsize, bottom=h - MARGIN,
    )  # fmt: skip
    right, _ = _draw_paragraphs(
        page, right_paras, x=MARGIN + col_w + gutter, y=top, width=col_w,
        fontname="helv", fontsize=fontsize, bottom=h - MARGIN,
    )  # fmt: skip
    doc.save(str(path))
    doc.close()
    return "\n".join([TWO_COLUMN_TITLE, *left, *right])


#: Font/size pairs of :func:`make_font_sampler_pdf`: three base-14 families, small to large.
FONT_SAMPLES: tuple[tuple[str, float], ...] = (
    ("helv", 9),
    ("tiro", 10),
    ("cour", 9),
    ("helv", 13),
    ("tiro", 15),
    ("cour", 12),
)


def make_font_sampler_pdf(
    path: str | Path,
    specs: tuple[tuple[str, float], ...] = FONT_SAMPLES,
    *,
    seed: int = 11,
    sentences: int = 6,
) -> list[tuple[str, float, str]]:
    """Write one A4 page with one paragraph per (font, size), top to bottom.

    Returns ``(fontname, fontsize, ground truth)`` per paragraph, so one OCR call can score
    several fonts and sizes. Paragraphs are separated by a gap of two lines.
    """
    w, h = A4
    doc = pymupdf.open()
    page = doc.new_page(width=w, height=h)
    y: float = MARGIN
    out: list[tuple[str, float, str]] = []
    for k, (font, size) in enumerate(specs):
        para = " ".join(sample_text(sentences, seed + k))
        drawn, y = _draw_paragraphs(
            page, [para], x=MARGIN, y=y, width=w - 2 * MARGIN,
            fontname=font, fontsize=size, bottom=h - MARGIN,
        )  # fmt: skip
        if not drawn:
            break
        out.append((font, size, "\n".join(drawn)))
        y += size * 1.4
    doc.save(str(path))
    doc.close()
    return out


def render_pdf_page(path: str | Path, index: int = 0, *, dpi: int = 144) -> Image.Image:
    """Render one page of a PDF file to an RGB image (what the pipeline does)."""
    with pymupdf.open(str(path)) as doc:
        pix = doc[index].get_pixmap(dpi=dpi, alpha=False)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def render_page(
    lines: list[str],
    *,
    width_pt: float = A4[0],
    height_pt: float = A4[1],
    dpi: int = 144,
    fontname: str = "helv",
    fontsize: float = 12,
) -> Image.Image:
    """Render ``lines`` (each a paragraph, wrapped to the page) to an RGB image via pymupdf.

    Use :func:`render_page_with_truth` when the wrapped text must be known; after whitespace
    normalisation the ground truth equals ``" ".join(lines)`` as long as everything fits.
    """
    return render_page_with_truth(
        lines, width_pt=width_pt, height_pt=height_pt, dpi=dpi, fontname=fontname, fontsize=fontsize
    )[0]


def render_page_with_truth(
    lines: list[str],
    *,
    width_pt: float = A4[0],
    height_pt: float = A4[1],
    dpi: int = 144,
    fontname: str = "helv",
    fontsize: float = 12,
) -> tuple[Image.Image, str]:
    """Like :func:`render_page` and also return the drawn text (lines joined by newlines)."""
    doc = pymupdf.open()
    page = doc.new_page(width=width_pt, height=height_pt)
    drawn, _ = _draw_paragraphs(
        page, lines, x=MARGIN, y=MARGIN, width=width_pt - 2 * MARGIN,
        fontname=fontname, fontsize=fontsize, bottom=height_pt - MARGIN,
    )  # fmt: skip
    pix = page.get_pixmap(dpi=dpi, alpha=False)
    img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    doc.close()
    return img, "\n".join(drawn)


def make_scanned_image(
    lines: list[str],
    *,
    angle: float = 2.0,
    noise: float = 12,
    seed: int = 0,
    dpi: int = 144,
    fontname: str = "tiro",
    fontsize: float = 12,
) -> Image.Image:
    """Render ``lines`` and make them look scanned: grey paper, slight skew, blur and noise.

    ``noise`` is the standard deviation of additive gaussian noise in grey levels (0..255).
    The result is RGB, same size as the clean render.
    """
    img = render_page(lines, dpi=dpi, fontname=fontname, fontsize=fontsize).convert("L")
    # Paper is never white on a scan: lift the background, keep ink dark.
    paper = 226
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = 30 + arr * (paper - 30)
    img = Image.fromarray(arr.astype(np.uint8), "L")
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=paper)
    img = img.filter(ImageFilter.GaussianBlur(radius=0.6))  # optics and slight defocus
    rng = np.random.default_rng(seed)
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0.0, noise, size=(img.height, img.width))
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "L")
    return out.convert("RGB")


def scanned_truth(lines: list[str], *, fontname: str = "tiro", fontsize: float = 12) -> str:
    """Ground truth drawn by :func:`make_scanned_image` with the same arguments."""
    return render_page_with_truth(lines, fontname=fontname, fontsize=fontsize)[1]


def labelled_pdf(
    path: str | Path, pages: int = 2, *, landscape: bool = False, fontsize: float = 11
) -> Path:
    """A small A4 PDF whose page ``i`` says ``"<stem> page i"``: cheap fixtures for plumbing
    tests, where what matters is that pages differ, not what they say."""
    path = Path(path)
    w, h = (A4[1], A4[0]) if landscape else A4
    doc = pymupdf.open()
    for i in range(pages):
        doc.new_page(width=w, height=h).insert_text(
            (72, 72), f"{path.stem} page {i + 1}", fontsize=fontsize
        )
    doc.save(str(path))
    doc.close()
    return path
