"""JSON layout: one document object per file; JSON Lines (one page a line) on stdout."""

from __future__ import annotations

import json

from ..document import DocumentResult, PageResult


def document_json(doc: DocumentResult, keep_raw: bool = False) -> str:
    """The document as one JSON object (pages in order)."""
    return json.dumps(doc.to_dict(keep_raw), ensure_ascii=False, indent=2) + "\n"


def page_jsonl(page: PageResult, keep_raw: bool = False) -> str:
    """One page as a single JSON line."""
    return json.dumps(page.to_dict(keep_raw), ensure_ascii=False) + "\n"
