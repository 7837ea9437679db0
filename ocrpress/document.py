"""Data model shared by every engine and writer: pages in, blocks and stats out.

Boxes are ``(x0, y0, x1, y1)`` in **pixels of the rendered page image**, origin top-left.
Each page records its ``width``, ``height`` and ``dpi``, so PDF points are ``px * 72 / dpi``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

BlockType = (
    str  # title, sub_title, text, table, figure, caption, formula, list, header, footer, ...
)
PageStatus = Literal["ok", "truncated", "empty", "error"]
#: Where a page's text came from: the PDF's own text layer, the engine, or both.
TextSource = Literal["text-layer", "ocr", "hybrid"]

#: Bumped when the JSON layout changes incompatibly.
SCHEMA_VERSION = 2


@dataclass
class PageImage:
    """One rendered page on its way to an engine."""

    source: str  # the input path as the user named it (or "-" for stdin bytes)
    index: int  # 0-based page index inside its document
    image: Image.Image  # RGB
    dpi: float | None  # None for raster inputs without a meaningful dpi
    doc_key: str = ""  # identifies the document inside a run (pipeline-assigned)
    notes: list[str] = field(default_factory=list)  # for the result, e.g. why it needs OCR
    # --mode auto: the mode chosen for this page (None: the engine's mode) and why.
    mode: str | None = None
    mode_estimate: dict[str, Any] | None = None
    # Model inputs a render worker made for it (engines.page_inputs.PreparedFile), or None.
    prepared: Any = None

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


@dataclass
class Block:
    """A typed region of a page with its text."""

    type: BlockType
    bbox: tuple[float, float, float, float]
    text: str
    score: float | None = None
    image: str | None = None  # relative path of a cropped figure, set by the markdown writer
    # "markdown" (what VLMs write) or "plain" (OCR'd or text-layer text: the Markdown writer
    # escapes it, so a line starting with "# " stays text and "<b>" stays visible).
    format: str = "markdown"
    # Median text height in page pixels (line engines): what heading levels are decided by
    # over a whole document.
    size: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "bbox": [round(v, 1) for v in self.bbox],
            "text": self.text,
        }
        if self.score is not None:
            d["score"] = round(self.score, 4)
        if self.image is not None:
            d["image"] = self.image
        if self.format != "markdown":
            d["format"] = self.format
        if self.size is not None:
            d["size"] = round(self.size, 1)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Block:
        return cls(
            type=d["type"],
            bbox=tuple(d["bbox"]),  # type: ignore[arg-type]
            text=d.get("text", ""),
            score=d.get("score"),
            image=d.get("image"),
            format=d.get("format", "markdown"),
            size=d.get("size"),
        )


@dataclass
class PageResult:
    """What an engine made of one page, plus the cost of making it."""

    source: str
    index: int
    width: int
    height: int
    dpi: float | None
    engine: str
    model: str | None = None
    mode: str | None = None
    tiles: tuple[int, int] | None = None  # (columns, rows) of the tile grid, None if untiled
    vision_tokens: int | None = None
    text_tokens: int | None = None
    status: PageStatus = "ok"
    error: str | None = None
    blocks: list[Block] = field(default_factory=list)
    raw: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "retried with stronger repetition guard"
    text_source: TextSource = "ocr"
    # --mode auto: the page's text estimate, the ratio it chose by and its escalations.
    mode_estimate: dict[str, Any] | None = None

    @property
    def compression(self) -> float | None:
        """Text tokens per vision token: how much the image compressed the text."""
        if not self.vision_tokens or self.text_tokens is None:
            return None
        return self.text_tokens / self.vision_tokens

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks if b.text)

    def to_dict(self, keep_raw: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "page": self.index + 1,
            "width": self.width,
            "height": self.height,
            "dpi": self.dpi,
            "engine": self.engine,
            "model": self.model,
            "mode": self.mode,
            "tiles": list(self.tiles) if self.tiles else None,
            "vision_tokens": self.vision_tokens,
            "text_tokens": self.text_tokens,
            "compression": round(self.compression, 3) if self.compression is not None else None,
            "status": self.status,
            "error": self.error,
            "text_source": self.text_source,
            "notes": list(self.notes),
            "blocks": [b.to_dict() for b in self.blocks],
        }
        if self.mode_estimate is not None:
            d["mode_estimate"] = self.mode_estimate
        if keep_raw:
            d["raw"] = self.raw
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PageResult:
        return cls(
            source=d["source"],
            index=d["page"] - 1,
            width=d["width"],
            height=d["height"],
            dpi=d.get("dpi"),
            engine=d["engine"],
            model=d.get("model"),
            mode=d.get("mode"),
            tiles=tuple(d["tiles"]) if d.get("tiles") else None,  # type: ignore[arg-type]
            vision_tokens=d.get("vision_tokens"),
            text_tokens=d.get("text_tokens"),
            status=d.get("status", "ok"),
            error=d.get("error"),
            notes=list(d.get("notes") or []),
            text_source=d.get("text_source", "ocr"),
            mode_estimate=d.get("mode_estimate"),
            blocks=[Block.from_dict(b) for b in d.get("blocks", [])],
            raw=d.get("raw"),
        )

    @classmethod
    def for_page(cls, page: PageImage, engine: str, **fields: Any) -> PageResult:
        """A result that names ``page`` (source, index, size, dpi, its ``--mode auto``
        estimate); other fields as given."""
        fields.setdefault("mode_estimate", page.mode_estimate)
        return cls(
            source=page.source,
            index=page.index,
            width=page.width,
            height=page.height,
            dpi=page.dpi,
            engine=engine,
            **fields,
        )

    @classmethod
    def unrendered(
        cls, source: str, index: int, engine: str, model: str | None, error: str
    ) -> PageResult:
        """An error result for a page that never became an image (its size is unknown: 0)."""
        return cls(
            source=source,
            index=index,
            width=0,
            height=0,
            dpi=None,
            engine=engine,
            model=model,
            status="error",
            error=error,
        )

    @classmethod
    def failed(
        cls, page: PageImage, engine: str, error: str, model: str | None = None
    ) -> PageResult:
        """An error result for ``page``."""
        return cls.for_page(page, engine, model=model, status="error", error=error)


@dataclass
class DocumentResult:
    """All pages of one input, in page order; ``error`` set when the input itself failed."""

    source: str
    pages: list[PageResult] = field(default_factory=list)
    error: str | None = None
    rel: str = ""  # output path relative to -o DIR, without suffix
    skipped: bool = False  # outputs were already complete (resume)

    @property
    def ok(self) -> bool:
        return self.error is None and all(p.status != "error" for p in self.pages)

    def to_dict(self, keep_raw: bool = False) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "source": self.source,
            "error": self.error,
            "pages": [p.to_dict(keep_raw) for p in self.pages],
        }
