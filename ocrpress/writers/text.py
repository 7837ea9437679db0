"""Plain text: block texts in reading order, tables flattened, pages split by form feeds."""

from __future__ import annotations

import html
import re

from ..document import Block, DocumentResult, PageResult

_CELL_END = re.compile(r"</t[dh]\s*>", re.I)
_ROW_END = re.compile(r"</tr\s*>", re.I)
_TAG = re.compile(r"<[^>]*>")


def block_text(block: Block) -> str:
    """A block's text without markup: table cells become tab-separated lines."""
    text = block.text
    if block.type == "table" or "<td" in text.lower():
        text = _ROW_END.sub("\n", _CELL_END.sub("\t", text))
        text = "\n".join(line.rstrip("\t") for line in _TAG.sub("", text).splitlines())
        text = html.unescape(text)
    return text.strip()


def page_text(page: PageResult) -> str:
    """Text of one page; blocks separated by blank lines."""
    return "\n\n".join(t for t in (block_text(b) for b in page.blocks) if t)


def document_text(doc: DocumentResult) -> str:
    """Text of a document; pages separated by a form feed (as pdftotext does)."""
    return "\n\f".join(page_text(p) for p in doc.pages) + "\n"
