"""Embedded CPU engine: PP-OCRv6 through RapidOCR (ONNX weights ship inside the wheel).

RapidOCR finds and reads text *lines*; :func:`ocrpress.layout.group_lines` turns them into
paragraph blocks in reading order.

Threads: ``RapidOCR(params={"EngineConfig.onnxruntime.intra_op_num_threads": n})`` is passed
to every onnxruntime session (det, cls, rec). RapidOCR ignores values outside
``1..os.cpu_count()`` and then leaves onnxruntime's default (all cores), so we clamp.

Logging: RapidOCR logs through its own ``"RapidOCR"`` logger with a colored stderr handler
and ``propagate=False``; its constructor resets the level from ``Global.log_level``. INFO
lines appear when models load and a WARNING ("The text detection result is empty") on every
blank page, so we ask for ``"error"``: ocrpress reports empty pages itself.

Direction classifier: off by default. RapidOCR's per-line 0/180 degree classifier
(``ch_ppocr_mobile_v2.0_cls``) is close to a coin toss on Latin print: on clean 144-dpi
renders it flipped 5-9 of 13-25 upright lines per page, with confidences up to 0.999 (so no
``cls_thresh`` saves it), turning them into garbage and raising CER from 0 to 0.15. It
recognised only 7-9 of 10 truly upside-down lines. ``extra={"use_cls": True}`` turns it back
on for callers who know their lines may be upside down.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any

import numpy as np
from PIL import Image

from ..document import PageImage, PageResult
from ..layout import Line, group_lines, plain_blocks
from . import EngineError, EngineOptions, PagePlan, orientation

log = logging.getLogger("ocrpress")

RAPID_LOGGER = "RapidOCR"

# RapidOCR's detector scales an image until its *short* side is 736 px: a 2000 x 3 px strip
# became a ~490,000 x 736 tensor and took 212 s here. Padding the short side (right/bottom,
# so box coordinates stay valid) to at most this aspect ratio bounds the cost at about one
# A4 page; real pages (A4 1.41, long receipts ~4) are untouched or barely padded.
MAX_ASPECT = 4.0


def _pad_to_aspect(image: Image.Image, max_aspect: float) -> Image.Image:
    """Pad with white on the right or bottom so that long side / short side <= max_aspect."""
    w, h = image.size
    if w >= h * max_aspect:
        size = (w, math.ceil(w / max_aspect))
    elif h >= w * max_aspect:
        size = (math.ceil(h / max_aspect), h)
    else:
        return image
    canvas = Image.new("RGB", size, "white")
    canvas.paste(image, (0, 0))
    return canvas


def _read_lines(ocr: Any, image: Image.Image, offset: tuple[int, int] = (0, 0)) -> list[Line]:
    """RapidOCR's text lines of ``image``, boxes shifted by ``offset`` into page pixels.

    Word boxes come along (``return_word_box``): the layout step needs them to cut a line
    that the detector ran across a narrow column gutter.
    """
    padded = _pad_to_aspect(image, MAX_ASPECT)
    # RapidOCR treats a 3-channel ndarray as BGR (OpenCV order); flip so the colour
    # channels mean what they say (matters for coloured text and the direction classifier).
    out = ocr(np.ascontiguousarray(np.asarray(padded)[:, :, ::-1]), return_word_box=True)
    lines: list[Line] = []
    if out.boxes is None or out.txts is None:
        return lines
    dx, dy = offset
    scores = out.scores if out.scores is not None else [1.0] * len(out.txts)
    word_results = out.word_results or [()] * len(out.txts)
    for quad, text, score, words in zip(out.boxes, out.txts, scores, word_results, strict=False):
        if text and text.strip():
            shifted = [[x + dx, y + dy] for x, y in quad.tolist()]
            lines.append(
                Line.from_quad(shifted, text.strip(), float(score), _word_spans(words, dx))
            )
    return lines


def _word_spans(words: Any, dx: float) -> list[tuple[float, float, str]]:
    """(x0, x1, text) of RapidOCR's word results, or nothing when they are unusable."""
    spans: list[tuple[float, float, str]] = []
    try:
        for text, _score, quad in words:
            xs = [float(p[0]) + dx for p in quad]
            if text and text.strip():
                spans.append((min(xs), max(xs), text.strip()))
    except (TypeError, ValueError, IndexError):
        return []  # an unexpected shape from another rapidocr version: no word boxes
    spans.sort()
    return spans


def _ink_box(image: Image.Image, margin: int = 24) -> tuple[int, int, int, int] | None:
    """Bounding box (with a margin) of the non-paper pixels, if it is well inside the page."""
    grey = image.convert("L")
    ink = grey.point(lambda v: 255 if v < 160 else 0).getbbox()
    if ink is None:
        return None
    x0, y0, x1, y1 = ink
    box = (max(0, x0 - margin), max(0, y0 - margin))
    box += (min(image.width, x1 + margin), min(image.height, y1 + margin))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return box if area < 0.5 * image.width * image.height else None  # type: ignore[return-value]


def _rapid_version() -> str:
    try:
        from importlib.metadata import version

        return version("rapidocr")
    except Exception:  # metadata missing in odd installs; the name still identifies the model
        return "unknown"


class RapidEngine:
    """PP-OCRv6 line detection + recognition on CPU, lines grouped into blocks."""

    name = "rapid"
    mode: str | None = None

    def __init__(self, opts: EngineOptions) -> None:
        self.opts = opts
        self.model: str | None = f"PP-OCRv6 (rapidocr {_rapid_version()})"
        # One page at a time is what RapidOCR does internally anyway; small batches only let
        # the pipeline amortise hand-offs between its worker threads.
        self.max_batch_size = opts.batch_size or 4
        if opts.mode:
            log.warning("the rapid engine has no resolution modes: --mode %s is ignored", opts.mode)
        self._ocr: Any = None
        self._lock = threading.Lock()
        threads = opts.extra.get("threads")
        self._threads: int | None = None
        if threads is not None:
            try:
                n = int(threads)
            except (TypeError, ValueError):
                raise EngineError(f"threads must be an integer, got {threads!r}") from None
            self._threads = max(1, min(n, os.cpu_count() or 1))

    def _engine(self) -> Any:
        """Create the RapidOCR object on first use (imports onnxruntime; ~0.1 s)."""
        with self._lock:
            if self._ocr is None:
                logging.getLogger(RAPID_LOGGER).setLevel(logging.ERROR)  # import-time logs
                try:
                    from rapidocr import RapidOCR
                except ImportError as e:  # pragma: no cover - rapidocr is a hard dependency
                    raise EngineError(f"rapidocr is not installed: {e}") from e
                params: dict[str, Any] = {
                    "Global.log_level": "error",
                    "Global.use_cls": bool(self.opts.extra.get("use_cls", False)),
                }
                if self._threads is not None:
                    params["EngineConfig.onnxruntime.intra_op_num_threads"] = self._threads
                try:
                    self._ocr = RapidOCR(params=params)
                except Exception as e:
                    raise EngineError(f"could not start RapidOCR: {e}") from e
            return self._ocr

    def plan(self, page: PageImage) -> PagePlan:
        """Every page batches with every other: RapidOCR has no per-page resolution modes."""
        return PagePlan(batch_key="rapid")

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        """OCR each page; a failure on one page becomes an error result for that page only."""
        ocr = self._engine()
        results: list[PageResult] = []
        for page in batch:
            try:
                results.append(self._run_page(ocr, page))
            except Exception as e:
                log.debug("rapid failed on %s page %d", page.source, page.index + 1, exc_info=True)
                results.append(
                    PageResult.failed(page, self.name, f"{type(e).__name__}: {e}", self.model)
                )
        return results

    def _run_page(self, ocr: Any, page: PageImage) -> PageResult:
        image = page.image.convert("RGB")
        lines = self._lines(ocr, image)
        notes: list[str] = []
        angle = 0
        turn = orientation.suspect(lines)
        if turn:
            # Sideways or upside-down text reads as low-confidence garbage: read the page
            # turned and keep the reading the recogniser is most sure of.
            best = (orientation.mean_score(lines), 0, lines)
            for candidate in turn:
                turned = self._lines(ocr, image.rotate(candidate, expand=True))
                score = orientation.mean_score(turned)
                if score > best[0] + orientation.MARGIN:
                    best = (score, candidate, turned)
                if score >= orientation.LOW_CONFIDENCE:
                    break
            _, angle, lines = best
        # Layout runs where the text is upright; boxes go back to page pixels after.
        width, height = (page.height, page.width) if angle in (90, 270) else image.size
        try:
            blocks = group_lines(lines, width, height)
        except Exception as e:  # a layout bug must never cost the page its text
            log.debug("layout failed on %s page %d", page.source, page.index + 1, exc_info=True)
            blocks = plain_blocks(lines)
            notes.append(f"layout failed ({type(e).__name__}): lines in plain top-to-bottom order")
        if angle:
            notes.append(orientation.turn_note(angle))
            for block in blocks:
                block.bbox = orientation.box_to_page(block.bbox, angle, width, height)
        if lines and orientation.mean_score(lines) < orientation.LOW_CONFIDENCE:
            notes.append(orientation.low_confidence_note(orientation.mean_score(lines)))
        return PageResult.for_page(
            page,
            self.name,
            model=self.model,
            mode=self.mode,
            status="ok" if blocks else "empty",
            blocks=blocks,
            notes=notes,
        )

    def _lines(self, ocr: Any, image: Image.Image) -> list[Line]:
        lines = _read_lines(ocr, image)
        if not lines:
            # The detector sees the page scaled down to ~736 px: a lone short line on an
            # otherwise blank page can vanish. Look again at just the inked part of the page.
            ink = _ink_box(image)
            if ink is not None:
                x0, y0, _, _ = ink
                lines = _read_lines(ocr, image.crop(ink), offset=(x0, y0))
        return lines

    def close(self) -> None:
        """Drop the ONNX sessions (their memory goes with them)."""
        with self._lock:
            self._ocr = None
