"""Tolerant parser for DeepSeek-OCR grounded output, and Markdown rendering of blocks.

The model writes ``<|ref|>label<|/ref|><|det|>[[x1,y1,x2,y2], ...]<|/det|>`` followed by the
block's content, block after block. Coordinates are integers 0..999 relative to the original,
unpadded image. Generation can stop anywhere (token limit, repetition guard) and small models
emit odd tag sequences, so nothing here raises on malformed text: the input is split on the four
tag tokens only and walked by a small state machine; numbers are read with a regex (never eval).

A block given several boxes gets their **union** as its ``bbox`` (``Block`` has one box);
:func:`parse_regions` keeps every box for callers that need them, in 0..999 units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .document import Block
from .plain_markdown import plain_markdown

#: Labels seen in DeepSeek-OCR output, mapped to ocrpress block types.
LABEL_TYPES: dict[str, str] = {
    "title": "title",
    "sub_title": "sub_title",
    "text": "text",
    "table": "table",
    "table_caption": "caption",
    "image": "figure",
    "figure": "figure",
    "image_caption": "caption",
    "figure_caption": "caption",
    "header": "header",
    "footer": "footer",
    "equation": "formula",
    "formula": "formula",
    "list": "list",
}

#: Largest coordinate the model emits; pixel = v * size / COORD_MAX.
COORD_MAX = 999

_MAX_LABEL = 40  # a runaway label (e.g. a lost <|/ref|>) must not become a giant type name

_TAG = re.compile(r"<\|(/?)(ref|det)\|>")
# A tag cut off by the token limit: "<|", "<|re", "<|/det|" ... at the very end of the text.
_PARTIAL_TAG_AT_END = re.compile(r"<\|/?(?:r(?:e(?:f\|?)?)?|d(?:e(?:t\|?)?)?)?$")
# Other special tokens that may survive decoding (EOS, prompt markers); never part of content.
_STRAY_TOKEN = re.compile(r"<\|[^\s|<>]{1,40}\|>|<｜[^｜<>]{0,40}｜>")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_COORD_CHARS = re.compile(r"[\s\d\[\],.+\-]*")
_HEADING = re.compile(r"^\s{0,3}#{1,6}(?:\s+|$)")
_NOT_LABEL_CHAR = re.compile(r"[^a-z0-9_]+")

Box = tuple[float, float, float, float]


@dataclass
class GroundedRegion:
    """One ref/det group as written by the model, before scaling.

    ``label`` is the raw label (None when a ``<|det|>`` came without a ``<|ref|>``, or for text
    outside any group); ``boxes`` are normalised (x1<=x2, y1<=y2) and clamped to 0..999.
    """

    label: str | None
    boxes: list[Box] = field(default_factory=list)
    content: str = ""


def normalise_label(label: str | None) -> str:
    """Map a model label to a block type; unknown labels are kept, lowercased and sanitised."""
    if label is None:
        return "text"
    key = _NOT_LABEL_CHAR.sub("_", label.strip().lower()).strip("_")[:_MAX_LABEL]
    if not key:
        return "text"
    return LABEL_TYPES.get(key, key)


def _parse_boxes(coords: str) -> list[Box]:
    """Read ``[[x1,y1,x2,y2], ...]``; boxes of the wrong arity are skipped, values clamped."""
    groups = _BRACKET.findall(coords)
    if not groups:
        groups = [coords]  # bare "x1,y1,x2,y2" without brackets
    boxes: list[Box] = []
    for group in groups:
        nums = _NUMBER.findall(group)
        if len(nums) != 4:
            continue
        x1, y1, x2, y2 = (min(float(COORD_MAX), max(0.0, float(n))) for n in nums)
        boxes.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return boxes


def _clean(content: str) -> str:
    return _STRAY_TOKEN.sub("", content).strip()


class _Builder:
    """Collects one region while the tokens are walked."""

    def __init__(self, label: str | None = None) -> None:
        self.label = label
        self.boxes: list[Box] = []
        self.parts: list[str] = []

    def has_content(self) -> bool:
        return any(p.strip() for p in self.parts)

    def build(self) -> GroundedRegion | None:
        content = _clean("".join(self.parts))
        # Neither a location nor text (e.g. "<|ref|>tex" cut off): nothing worth a block.
        if not self.boxes and not content:
            return None
        return GroundedRegion(self.label, list(self.boxes), content)


def _tokens(text: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and tag tokens ("ref", "/ref", "det", "/det")."""
    text = _PARTIAL_TAG_AT_END.sub("", text)
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _TAG.finditer(text):
        if m.start() > pos:
            out.append(("text", text[pos : m.start()]))
        out.append((m.group(1) + m.group(2), ""))
        pos = m.end()
    if pos < len(text):
        out.append(("text", text[pos:]))
    return out


def parse_regions(text: str) -> list[GroundedRegion]:
    """Split grounded model output into regions, tolerating cut-off and malformed tags.

    Text before the first tag (or text without any tags) becomes a region with label None and
    no boxes. A ``<|ref|>`` without ``<|/ref|>`` takes its first word as the label and the rest
    as content; a ``<|det|>`` without ``<|/det|>`` reads boxes up to its last ``]``.
    """
    regions: list[GroundedRegion] = []
    cur = _Builder()
    mode = "content"  # or "label" (inside ref) or "coords" (inside det)
    buf: list[str] = []

    def finish() -> None:
        region = cur.build()
        if region is not None:
            regions.append(region)

    def close_open_tag() -> None:
        # Called when a ref/det is left without its closing tag.
        nonlocal mode
        raw = "".join(buf)
        if mode == "label":
            m = re.match(r"\s*(\S*)", raw)
            assert m is not None  # \s*\S* matches any string
            cur.label = m.group(1)[:_MAX_LABEL]
            cur.parts.append(raw[m.end() :])
        elif mode == "coords":
            prefix = _COORD_CHARS.match(raw)
            assert prefix is not None
            if prefix.end() == len(raw):
                end = len(raw)  # only coordinates, cut off mid-list: nothing is content
            else:
                end = prefix.group(0).rfind("]") + 1 or prefix.end()
            cur.boxes.extend(_parse_boxes(raw[:end]))
            cur.parts.append(raw[end:])
        mode = "content"
        buf.clear()

    for kind, value in _tokens(text):
        if kind == "text":
            (buf if mode != "content" else cur.parts).append(value)
        elif kind == "ref":
            close_open_tag()
            finish()
            cur = _Builder()
            mode = "label"
        elif kind == "/ref":
            if mode == "label":
                cur.label = "".join(buf).strip()[:_MAX_LABEL]
                buf.clear()
                mode = "content"
        elif kind == "det":
            close_open_tag()
            # A det belongs to the ref just before it; after content or boxes it starts a block.
            if cur.boxes or cur.has_content() or cur.label is None:
                finish()
                cur = _Builder()
            mode = "coords"
        elif kind == "/det" and mode == "coords":
            cur.boxes.extend(_parse_boxes("".join(buf)))
            buf.clear()
            mode = "content"
        # any other closing tag is stray and carries nothing
    close_open_tag()
    finish()
    return regions


def parse_grounded(text: str, width: int, height: int) -> list[Block]:
    """Turn grounded model output into blocks with boxes in page pixels.

    One block per ref/det group, typed via :func:`normalise_label`. Several boxes are merged
    into their union. Blocks without a usable box (untagged text, free-OCR output, garbage
    coordinates) get the full page. Title and sub-title text loses its leading ``#`` marker.
    """
    w = max(0, int(width))
    h = max(0, int(height))
    blocks: list[Block] = []
    for region in parse_regions(text):
        btype = normalise_label(region.label)
        if region.boxes:
            x0 = min(b[0] for b in region.boxes)
            y0 = min(b[1] for b in region.boxes)
            x1 = max(b[2] for b in region.boxes)
            y1 = max(b[3] for b in region.boxes)
            bbox = (x0 * w / COORD_MAX, y0 * h / COORD_MAX, x1 * w / COORD_MAX, y1 * h / COORD_MAX)
        else:
            bbox = (0.0, 0.0, float(w), float(h))
        content = region.content
        if btype in ("title", "sub_title"):
            content = _HEADING.sub("", content, count=1).strip()
        blocks.append(Block(type=btype, bbox=bbox, text=content))
    return blocks


def strip_grounding(text: str) -> str:
    """The model's text without grounding tags: block contents separated by blank lines."""
    return "\n\n".join(r.content for r in parse_regions(text) if r.content)


def _is_display_math(s: str) -> bool:
    # Already delimited by the model: wrapping again would break the formula.
    return "$$" in s or (s.startswith("\\[") and s.endswith("\\]"))


def _image_target(path: str) -> str:
    # CommonMark link destinations may not contain spaces or unbalanced parens unless <...>.
    return f"<{path}>" if re.search(r"[\s()<>]", path) else path


def _italic(s: str) -> str:
    if s.startswith(("*", "_")) and s.endswith(("*", "_")) and len(s) > 1:
        return s  # the model already emphasised it
    # Emphasis cannot span a blank line: emphasise each paragraph.
    paras = [p.strip() for p in re.split(r"\n\s*\n", s) if p.strip()]
    return "\n\n".join(f"*{p}*" for p in paras)


def block_to_markdown(block: Block) -> str:
    """Markdown for one block; empty string when the block is left out of Markdown."""
    if block.format == "plain":
        return plain_markdown(block)
    text = block.text.strip()
    t = block.type
    if t in ("header", "footer"):
        return ""  # page furniture: kept in JSON, noise in reading text
    if t == "figure":
        image = f"![]({_image_target(block.image)})" if block.image else "<!-- figure -->"
        return f"{image}\n\n{text}" if text else image
    if not text:
        return ""
    if t in ("title", "sub_title"):
        marker = "#" if t == "title" else "##"
        return f"{marker} {' '.join(text.split())}"
    if t == "formula":
        return text if _is_display_math(text) else f"$$\n{text}\n$$"
    if t == "caption":
        return _italic(text)
    return text  # text, table (HTML kept), list, unknown types


def blocks_to_markdown(blocks: list[Block]) -> str:
    """Render blocks in order as Markdown paragraphs separated by blank lines (no final newline)."""
    return "\n\n".join(md for md in map(block_to_markdown, blocks) if md)


def blocks_from_output(text: str, width: int, height: int, grounded: bool) -> list[Block]:
    """Blocks of a VLM's page output: parsed grounding markup, or one full-page text block."""
    if grounded:
        return parse_grounded(text, width, height)
    body = text.strip()
    if not body:
        return []
    return [Block(type="text", bbox=(0.0, 0.0, float(width), float(height)), text=body)]
