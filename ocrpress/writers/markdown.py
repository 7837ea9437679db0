"""Markdown: headings, paragraphs, HTML tables, $$ formulas and linked figure crops."""

from __future__ import annotations

from ..document import DocumentResult, PageResult
from ..grounding import blocks_to_markdown


def page_markdown(page: PageResult) -> str:
    """Markdown of one page (an HTML comment says why a failed page is empty)."""
    if page.status == "error":
        return f"<!-- page {page.index + 1}: error: {page.error} -->"
    body = blocks_to_markdown(page.blocks).strip()
    if page.status == "truncated":
        body += f"\n\n<!-- page {page.index + 1}: truncated at the token limit -->"
    return body


def document_markdown(doc: DocumentResult) -> str:
    """Markdown of a document; pages after the first start with a ``<!-- page N -->`` comment."""
    parts = []
    for i, page in enumerate(doc.pages):
        md = page_markdown(page)
        parts.append(md if i == 0 else f"<!-- page {page.index + 1} -->\n\n{md}")
    return "\n\n".join(parts).strip() + "\n"
