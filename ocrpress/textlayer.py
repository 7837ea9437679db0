"""Read a PDF page's own text layer into the same blocks an OCR engine produces.

Lines come from ``page.get_text("dict")`` with boxes mapped into pixels of the page rendered at
``dpi`` (``pt * dpi / 72``, after the page's ``/Rotate``), so a text-layer page records the
same ``width``/``height``/``dpi`` and box space as an OCR'd one. Each line's ``height`` is its
font size in pixels: :func:`ocrpress.layout.group_lines` then finds titles by size and reads
columns exactly as it does for OCR lines. Tables (PyMuPDF's table finder) become ``table``
blocks holding HTML, images become ``figure`` blocks; both are placed in reading order by
position (:func:`place_blocks`).

Nothing here decides whether the text layer can be trusted; :mod:`ocrpress.routing` does.
"""

from __future__ import annotations

import html
import itertools
import re
from dataclasses import dataclass, field

import pymupdf

from .document import Block
from .layout import Line, group_lines

Box = tuple[float, float, float, float]

if hasattr(pymupdf, "no_recommend_layout"):
    pymupdf.no_recommend_layout()  # the table finder would print an advert to stdout

# MuPDF's default for "dict" output turns an unmapped glyph into its glyph id, which reads as
# plausible-looking garbage ("(BSCBHF" for "Garbage"); without that flag it becomes U+FFFD,
# which the check can count. Ligatures are expanded ("ﬁ" -> "fi"), as OCR reads them and as
# search and copy-paste want them. Images are left out: their bytes are not needed here.
TEXT_FLAGS = (
    pymupdf.TEXTFLAGS_DICT
    & ~pymupdf.TEXT_CID_FOR_UNKNOWN_UNICODE
    & ~pymupdf.TEXT_PRESERVE_IMAGES
    & ~pymupdf.TEXT_PRESERVE_LIGATURES
)
# LaTeX draws "©" as a "c" under a combining enclosing circle (U+20DD).
_COMPOSED = {"c\u20dd": "\u00a9", "C\u20dd": "\u00a9", "r\u20dd": "\u00ae", "R\u20dd": "\u00ae"}


def _compose(text: str) -> str:
    if "\u20dd" not in text:
        return text
    for pair, sign in _COMPOSED.items():
        text = text.replace(pair, sign)
    return text


# A span whose colour is this light on every channel may be white-on-white (production marks,
# hidden keywords); the routing check looks at the render before it keeps such a line.
LIGHT = 0xF0
# Images smaller than this fraction of the page (logos, bullets, rules drawn as images) are not
# worth a figure block.
MIN_FIGURE_AREA = 0.01
# An image covering more of the page than this is its background or a scan, not a figure.
MAX_FIGURE_AREA = 0.6

# A gap this many font sizes wide inside one MuPDF line separates two pieces of text (a tab
# stop, a column gutter the extractor bridged); stretched word spaces stay well below it.
SPLIT_GAP = 1.0

# Share of a found table's cells that must hold text: data tables are mostly full (the dev
# set's invoice: 58%), a tax form's ruled grid of empty fields is not (7-27%).
MIN_TABLE_FILL = 0.4
# Rule crossings that make a page worth the table finder's time (see _has_grid).
MIN_CROSSINGS = 6


@dataclass
class TextLine:
    """One line of the text layer, in rendered-page pixels."""

    box: Box
    text: str
    size: float  # font size in pixels
    invisible: bool = False  # render mode 3 (or fully transparent): an earlier OCR pass
    light: bool = False  # drawn in white or near-white: visible only on a dark background
    vertical: bool = False  # runs up or down the rendered page (margin stamps, rotated labels)


@dataclass
class TextLayer:
    """What a page's text layer holds, before any judgement about it."""

    width: int
    height: int
    dpi: int
    lines: list[TextLine] = field(default_factory=list)
    images: list[Box] = field(default_factory=list)  # placements of raster images
    chars: int = 0  # non-space characters in the layer
    bad_chars: int = 0  # U+FFFD, private-use, control characters and (cid:N) names

    def to_pixels(self, rect: pymupdf.Rect) -> Box:
        return _scale(rect, self.dpi)


def _scale(rect: pymupdf.Rect | Box, dpi: int) -> Box:
    s = dpi / 72
    x0, y0, x1, y1 = rect
    return (x0 * s, y0 * s, x1 * s, y1 * s)


# What an unmapped or unreadable glyph becomes: U+FFFD, C0/C1 control characters,
# private-use code points (symbol fonts without a map), and pdfminer-style ``(cid:N)`` names.
_BAD = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ue000-\uf8ff\ufffd\U000f0000-\U0010ffff]"
    r"|\(cid:\d+\)"
)


def count_bad(text: str) -> int:
    """Characters in ``text`` that no real text holds (a ``(cid:N)`` name counts once)."""
    return len(_BAD.findall(text))


def readable(text: str) -> str:
    """``text`` without the characters no text holds. They count against the page in the
    check; on a page that passed it they are stray unmapped glyphs (a form's arrows and
    check boxes), and U+FFFD in the output helps nobody."""
    if not _BAD.search(text):
        return text
    return " ".join(_BAD.sub("", text).split())


def page_size(page: pymupdf.Page, dpi: int) -> tuple[int, int]:
    """Pixel size of ``page`` rendered at ``dpi`` (what ``get_pixmap(dpi=...)`` gives)."""
    r = (page.rect * pymupdf.Matrix(dpi / 72, dpi / 72)).irect
    return r.width, r.height


def read(page: pymupdf.Page, dpi: int) -> TextLayer:
    """The page's text lines and image placements, in pixels of the render at ``dpi``.

    Spans (font size, colour, opacity) come from MuPDF's "dict" output and tight boxes from its
    "words" (which leave out spaces: a line's trailing space would narrow a column gutter),
    both from one text page so their block and line numbers agree. Reading characters one by
    one ("rawdict") gave the same lines at three times the cost.
    """
    width, height = page_size(page, dpi)
    layer = TextLayer(width=width, height=height, dpi=dpi)
    rot = page.rotation_matrix  # unrotated page space -> the rendered (rotated) page
    upright = page.rotation == 0  # then the matrix is the identity: skip ~40% of the work
    textpage = page.get_textpage(flags=TEXT_FLAGS)
    words: dict[tuple[int, int], list[tuple[float, float, float, float, str]]] = {}
    for x0, y0, x1, y1, word, bno, lno, _ in textpage.extractWORDS():
        words.setdefault((bno, lno), []).append((x0, y0, x1, y1, word))
    for bno, block in enumerate(textpage.extractDICT()["blocks"]):
        for lno, ln in enumerate(block.get("lines", ())):
            spans = [s for s in ln["spans"] if s["text"].strip()]
            if not spans or (bno, lno) not in words:
                continue
            text = "".join(s["text"] for s in spans)
            layer.chars += len(text) - text.count(" ")
            layer.bad_chars += count_bad(text)
            # The size of most of the line's characters (not of a superscript in it).
            size = max(spans, key=lambda s: len(s["text"]))["size"]
            dx, dy = (
                ln["dir"] if upright else pymupdf.Point(ln["dir"]) * rot - pymupdf.Point(0, 0) * rot
            )
            invisible = all(s.get("alpha", 255) == 0 for s in spans)
            light = all(_is_light(s["color"]) for s in spans)
            for piece in _pieces(words[bno, lno], ln["dir"], size):
                box = (
                    min(w[0] for w in piece),
                    min(w[1] for w in piece),
                    max(w[2] for w in piece),
                    max(w[3] for w in piece),
                )
                layer.lines.append(
                    TextLine(
                        box=_scale(box if upright else pymupdf.Rect(box) * rot, dpi),
                        text=_compose(" ".join(w[4] for w in piece)),
                        size=float(size) * dpi / 72,
                        invisible=invisible,
                        light=light,
                        vertical=abs(dy) > abs(dx),
                    )
                )
    page_area = float(width * height) or 1.0
    # get_images() only reads the page's resources; get_image_info() parses its content.
    for info in page.get_image_info() if page.get_images() else []:
        box = _clip(_scale(pymupdf.Rect(info["bbox"]) * rot, dpi), width, height)
        if box is not None and _area(box) / page_area >= MIN_FIGURE_AREA:
            layer.images.append(box)
    return layer


Word = tuple[float, float, float, float, str]


def _pieces(words: list[Word], direction: tuple[float, float], size: float) -> list[list[Word]]:
    """A line's words, cut where the gap between two is wider than :data:`SPLIT_GAP` em (a tab
    stop, or a column gutter the extractor bridged; never a word space)."""
    ux, uy = direction

    def along(w: Word) -> tuple[float, float]:
        ends = (w[0] * ux + w[1] * uy, w[2] * ux + w[3] * uy, w[0] * ux + w[3] * uy)
        ends += (w[2] * ux + w[1] * uy,)
        return min(ends), max(ends)

    def gap(a: Word, b: Word) -> float:
        if direction == (1.0, 0.0):  # almost every line: no projection needed
            return b[0] - a[2]
        return along(b)[0] - along(a)[1]

    pieces = [[words[0]]]
    for prev, word in itertools.pairwise(words):
        if gap(prev, word) > SPLIT_GAP * size:
            pieces.append([])
        pieces[-1].append(word)
    return pieces


def _is_light(color: int) -> bool:
    return all(((color >> shift) & 0xFF) >= LIGHT for shift in (16, 8, 0))


def _clip(box: Box, width: int, height: int) -> Box | None:
    x0, y0 = max(0.0, box[0]), max(0.0, box[1])
    x1, y1 = min(float(width), box[2]), min(float(height), box[3])
    return (x0, y0, x1, y1) if x1 - x0 >= 2 and y1 - y0 >= 2 else None


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _inside(box: Box, region: Box) -> bool:
    """True when ``box``'s centre lies in ``region``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


# ------------------------------------------------------------------------------ tables


def find_tables(page: pymupdf.Page, layer: TextLayer) -> list[Block]:
    """Ruled tables as ``table`` blocks (HTML rows and cells), boxes in rendered pixels.

    The finder works from the page's vector lines, so a page without drawings has no table it
    could find and is not searched (the finder costs more than the rest of the page).
    """
    if not _has_grid(page):
        return []
    try:
        found = page.find_tables()
    except Exception:  # the finder is heuristic code: a failure only means "no tables"
        return []
    rot = page.rotation_matrix
    blocks: list[Block] = []
    for table in found.tables:
        rows = [r for r in table.extract() if any(c and c.strip() for c in r)]
        if len(rows) < 2 or max(len(r) for r in rows) < 2:
            continue  # a ruled box around a paragraph is not a table
        cells = [c for r in rows for c in r]
        if sum(1 for c in cells if c and c.strip()) < MIN_TABLE_FILL * len(cells):
            continue  # a form's grid of empty fields: its text reads better as text
        box = _scale(pymupdf.Rect(table.bbox) * rot, layer.dpi)
        blocks.append(Block(type="table", bbox=box, text=table_html(rows)))
    return blocks


def _has_grid(page: pymupdf.Page) -> bool:
    """Do the page's vector lines cross like a table's rules (at :data:`MIN_CROSSINGS` points)?

    A cheap gate before the table finder (~0.5 s on a page with rules): column rules and
    underlines alone never cross, a ruled 2 x 2 table crosses at 9 points.
    """
    hs: list[tuple[float, float, float]] = []  # x0, x1, y
    vs: list[tuple[float, float, float]] = []  # y0, y1, x
    for path in page.get_cdrawings():
        for item in path["items"]:
            if item[0] == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
                segs = [(x0, y0, x1, y1)]
            elif item[0] == "re":
                r = pymupdf.Rect(item[1])
                segs = [(r.x0, r.y0, r.x1, r.y0), (r.x0, r.y1, r.x1, r.y1)]
                segs += [(r.x0, r.y0, r.x0, r.y1), (r.x1, r.y0, r.x1, r.y1)]
            else:
                continue
            for x0, y0, x1, y1 in segs:
                if abs(y1 - y0) <= 1 < abs(x1 - x0):
                    hs.append((min(x0, x1), max(x0, x1), (y0 + y1) / 2))
                elif abs(x1 - x0) <= 1 < abs(y1 - y0):
                    vs.append((min(y0, y1), max(y0, y1), (x0 + x1) / 2))
    crossings = 0
    for x0, x1, y in hs:
        for y0, y1, x in vs:
            if x0 - 2 <= x <= x1 + 2 and y0 - 2 <= y <= y1 + 2:
                crossings += 1
                if crossings >= MIN_CROSSINGS:
                    return True
    return False


def table_html(rows: list[list[str | None]]) -> str:
    """``<table>`` HTML of a cell grid, as the VLM engines write tables (merged cells empty)."""

    def cell(text: str | None) -> str:
        return "<td>" + html.escape(readable(" ".join((text or "").split()))) + "</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table>{body}</table>"


# ------------------------------------------------------------------------------ blocks


def to_blocks(layer: TextLayer, lines: list[TextLine], extra: list[Block]) -> list[Block]:
    """Blocks in reading order: ``lines`` grouped like OCR lines, ``extra`` placed among them.

    Lines inside a table go with the table. Vertical lines (margin stamps, rotated labels)
    come last, as a reader would take them.
    """
    tables = [b.bbox for b in extra if b.type == "table"]
    flat = [ln for ln in lines if not ln.vertical and not any(_inside(ln.box, t) for t in tables)]
    grouped = group_lines(
        [
            Line(box=ln.box, text=text, score=1.0, height=ln.size)
            for ln in flat
            if (text := readable(ln.text))
        ],
        layer.width,
        layer.height,
    )
    for b in grouped:
        b.score = None  # no recogniser was involved: there is no confidence to report
    blocks = place_blocks(grouped, extra)
    for ln in lines:
        if (
            ln.vertical
            and not any(_inside(ln.box, t) for t in tables)
            and (text := readable(ln.text))
        ):
            blocks.append(Block(type="text", bbox=ln.box, text=text))
    return blocks


def place_blocks(ordered: list[Block], extra: list[Block]) -> list[Block]:
    """Insert ``extra`` blocks into ``ordered`` by position.

    An extra block goes before the first block (in reading order) that starts below its top
    and shares some of its width: in a column layout that is the next block of its own
    column. One with no such block goes last.
    """
    out = list(ordered)
    for block in sorted(extra, key=lambda b: (b.bbox[1], b.bbox[0])):
        at = next(
            (
                i
                for i, b in enumerate(out)
                if b.bbox[1] >= block.bbox[1]
                and min(b.bbox[2], block.bbox[2]) > max(b.bbox[0], block.bbox[0])
            ),
            len(out),
        )
        out.insert(at, block)
    return out


def figure_blocks(layer: TextLayer) -> list[Block]:
    """Images that illustrate the page (not its background or a scan of it) as figures."""
    page_area = float(layer.width * layer.height) or 1.0
    return [
        Block(type="figure", bbox=box, text="")
        for box in layer.images
        if _area(box) / page_area <= MAX_FIGURE_AREA
    ]
