"""PDFs with particular text layers, generated in code: for the text-layer routing tests.

Each generator returns the ground truth of the text a reader sees (or, for pages meant for
OCR, the text drawn in the image), so tests can compare what routing produced.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pymupdf
from docgen import A4, MARGIN, make_scanned_image, render_page_with_truth, sample_text, wrap
from PIL import Image, ImageDraw, ImageFilter


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def draw_lines(
    page: pymupdf.Page,
    lines: list[str],
    *,
    x: float = MARGIN,
    y: float = MARGIN,
    fontsize: float = 11,
    **kw: object,
) -> float:
    """Draw ``lines`` one per row from top ``y``; returns the y below the last one."""
    for line in lines:
        page.insert_text((x, y + fontsize * 0.8), line, fontsize=fontsize, **kw)  # type: ignore[arg-type]
        y += fontsize * 1.35
    return y


def paragraph(seed: int, width: float, n: int = 4, fontsize: float = 11) -> list[str]:
    """Wrapped lines of ``n`` generated sentences."""
    return wrap(" ".join(sample_text(n, seed)), width, fontsize=fontsize)


def text_image(lines: list[str], size: tuple[int, int] = (900, 300)) -> Image.Image:
    """A raster image of text (a screenshot or scanned figure): black 28-px text on white."""
    doc = pymupdf.open()
    page = doc.new_page(width=size[0] / 2, height=size[1] / 2)
    draw_lines(page, lines, x=8, y=8, fontsize=14)
    pix = page.get_pixmap(dpi=144, alpha=False)
    doc.close()
    return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def photo_image(size: tuple[int, int] = (600, 400), seed: int = 0) -> Image.Image:
    """A photo-like image without text: smooth colour fields, soft shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            120 + 80 * np.sin(xx / 90 + c) * np.cos(yy / 70 + 2 * c) for c in (0.0, 1.3, 2.6)
        ],  # sky, hills
        axis=-1,
    )
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(30, 120)
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw.ellipse((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(3))
    noisy = np.asarray(img, np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def figure_pdf(path: Path, image: Image.Image) -> list[str]:
    """One page: a paragraph, ``image`` placed below it (360 x 180 pt), another paragraph.

    Returns the drawn text lines (the text layer's part, in reading order).
    """
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    width = A4[0] - 2 * MARGIN
    top, bottom = paragraph(1, width), paragraph(2, width)
    y = draw_lines(page, top)
    rect = pymupdf.Rect(MARGIN, y + 20, MARGIN + 360, y + 200)
    page.insert_image(rect, stream=_png(image))
    draw_lines(page, bottom, y=rect.y1 + 20)
    doc.save(str(path))
    doc.close()
    return top + bottom


def mixed_pdf(path: Path) -> tuple[list[str], str]:
    """Three pages: digital, a scan (a full-page image, no text layer), digital.

    Returns (text lines of the digital pages, 1 and 3; the scan's drawn text).
    """
    lines = sample_text(6, seed=40)
    scan = make_scanned_image(lines, angle=0.5, noise=6, seed=1)
    doc = pymupdf.open()
    digital = []
    for k in range(3):
        page = doc.new_page(width=A4[0], height=A4[1])
        if k == 1:
            page.insert_image(page.rect, stream=_png(scan))
        else:
            text = paragraph(50 + k, A4[0] - 2 * MARGIN)
            draw_lines(page, text)
            digital.append(" ".join(text))
    doc.save(str(path))
    doc.close()
    truth = render_page_with_truth(lines, fontname="tiro")[1]
    return digital, truth


def no_tounicode_pdf(path: Path) -> str:
    """One page in an embedded font whose ToUnicode map was removed: the text layer is
    glyph ids, not characters. Returns the text as drawn (what OCR should read)."""
    lines = sample_text(3, seed=60)
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    writer = pymupdf.TextWriter(page.rect)
    font = pymupdf.Font("tiro")
    for i, line in enumerate(lines):
        writer.append((MARGIN, MARGIN + 20 + 22 * i), line, font=font, fontsize=14)
    writer.write_text(page)
    for xref in range(1, doc.xref_length()):
        if doc.xref_get_key(xref, "ToUnicode")[0] == "xref":
            doc.xref_set_key(xref, "ToUnicode", "null")
    doc.save(str(path))
    doc.close()
    return "\n".join(lines)


def ocred_scan_pdf(path: Path, *, cover: float = 1.0) -> str:
    """A scan with an invisible text layer on top, as an earlier OCR pass leaves it.

    The page image is the text rendered at 144 dpi; the same lines are drawn again, at the
    same places, in render mode 3 (invisible). ``cover`` < 1 leaves the later lines out of the
    text layer (an OCR pass that missed part of the page). Returns the visible text.
    """
    lines = sample_text(10, seed=70)
    width = A4[0] - 2 * MARGIN
    wrapped = [w for ln in lines for w in wrap(ln, width, fontsize=12)]
    ref = pymupdf.open()
    draw_lines(ref.new_page(width=A4[0], height=A4[1]), wrapped, fontsize=12)
    pix = ref[0].get_pixmap(dpi=144, alpha=False)
    scan = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    ref.close()
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_image(page.rect, stream=_png(scan))
    keep = wrapped[: max(1, round(len(wrapped) * cover))]
    draw_lines(page, keep, fontsize=12, render_mode=3)
    doc.save(str(path))
    doc.close()
    return "\n".join(wrapped)


def rotated_pdf(path: Path, image: Image.Image | None = None) -> list[str]:
    """A landscape page stored as a portrait page with ``/Rotate 90`` and its text drawn
    turned, so that it reads upright on screen (what landscape LaTeX pages do); ``image``, if
    given, is placed (turned the same way) in the lower half of the screen page."""
    lines = paragraph(80, 600, n=3, fontsize=12)
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    if image is not None:
        turned = image.rotate(90, expand=True)
        page.insert_image(pymupdf.Rect(300, 300, 560, 800), stream=_png(turned))
    # Upright on the rotated page means running up the unrotated one, starting at its bottom.
    x = MARGIN + 12
    for line in lines:
        page.insert_text((x, A4[1] - MARGIN), line, fontsize=12, rotate=90)
        x += 12 * 1.35
    page.set_rotation(90)
    doc.save(str(path))
    doc.close()
    return lines


def table_pdf(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """A paragraph, a ruled 3 x 4 table, a paragraph. Returns (before, table rows, after)."""
    rows = [["Item", "Quantity", "Price"]] + [
        [f"{w} {v}", str(k + 2), f"{(k + 1) * 3}.50"]
        for k, (w, v) in enumerate([("river", "map"), ("garden", "chair"), ("paper", "lamp")])
    ]
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    width = A4[0] - 2 * MARGIN
    before, after = paragraph(90, width), paragraph(91, width)
    y = draw_lines(page, before) + 20
    col_w, row_h = 120, 22
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            cell = pymupdf.Rect(MARGIN + c * col_w, y + r * row_h, MARGIN + (c + 1) * col_w, 0)
            cell.y1 = cell.y0 + row_h
            page.draw_rect(cell, color=(0, 0, 0), width=0.8)
            page.insert_text((cell.x0 + 4, cell.y0 + 15), text, fontsize=10)
    draw_lines(page, after, y=y + len(rows) * row_h + 20)
    doc.save(str(path))
    doc.close()
    return before, rows, after


def white_text_pdf(path: Path) -> tuple[list[str], str, str]:
    """Body text, a white-on-white line (hidden) and a white line on a dark band (visible).

    Returns (body lines, hidden text, banner text).
    """
    hidden, banner = "HIDDEN PRODUCTION MARK 0042", "Banner title on a dark band"
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    band = pymupdf.Rect(MARGIN, MARGIN, A4[0] - MARGIN, MARGIN + 30)
    page.draw_rect(band, color=None, fill=(0.1, 0.2, 0.4))
    page.insert_text((MARGIN + 8, MARGIN + 20), banner, fontsize=14, color=(1, 1, 1))
    body = paragraph(95, A4[0] - 2 * MARGIN)
    y = draw_lines(page, body, y=MARGIN + 50)
    page.insert_text((MARGIN, y + 40), hidden, fontsize=8, color=(1, 1, 1))
    doc.save(str(path))
    doc.close()
    return body, hidden, banner
