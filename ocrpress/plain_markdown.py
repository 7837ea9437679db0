"""Markdown for plain-text blocks (OCR'd or text-layer text), escaped so it means what JSON says.

A line engine's text is not Markdown: body text starting with ``# ``, ``- `` or ``1. ``, or
holding ``<b>`` or ``*stars*``, must stay text. Lists become real list items (nested by the
two-space indent the layout step gives them), headings are written with their level, and
rows kept one per line end in a hard line break.
"""

from __future__ import annotations

import re

from .document import Block

_INLINE = re.compile(r"([\\`*_\[\]<>|])")
_ENTITY = re.compile(r"&(?=#?\w+;)")
# Starts of a line that Markdown would read as structure.
_LINE_START = re.compile(r"^(\s*)(#{1,6}(?=\s|$)|[-+*](?=\s|$)|\d{1,9}(?=[.)](?:\s|$))|>|=+\s*$)")
_BULLET = re.compile(r"^(\s*)(?:[•●▪◦‣∙·*\-–—])\s+")
_ENUM = re.compile(r"^(\s*)\(?(\d{1,3}|[a-zA-Z])([.)])\s+")


def escape(text: str) -> str:
    """``text`` as Markdown that renders as exactly this text (single line or several)."""
    out = []
    for line in text.split("\n"):
        line = _ENTITY.sub("&amp;", line)
        line = _INLINE.sub(r"\\\1", line)
        line = _LINE_START.sub(lambda m: m.group(1) + _escape_start(m.group(2)), line, count=1)
        out.append(line)
    return "\n".join(out)


def _escape_start(token: str) -> str:
    if token[0].isdigit():
        return token  # the following "." or ")" is escaped by the caller's pattern below
    return "\\" + token


def _escape_line(line: str) -> str:
    line = escape(line)
    # "1. text" would become an ordered list: escape the dot after a leading number.
    return re.sub(r"^(\s*\d{1,9})([.)])(\s|$)", r"\1\\\2\3", line)


def plain_markdown(block: Block) -> str:
    """Markdown for a plain-text block (``format == "plain"``); "" when it has no text."""
    text = block.text.strip()
    if not text or block.type in ("header", "footer"):
        return ""
    if block.type in ("title", "sub_title"):
        marker = "#" if block.type == "title" else "##"
        return f"{marker} {escape(' '.join(text.split()))}"
    if block.type == "list":
        return "\n".join(_list_item(line) for line in block.text.split("\n") if line.strip())
    if block.type == "table":
        return text  # the layout step writes tables as escaped HTML already
    lines = [_escape_line(line.strip()) for line in text.split("\n")]
    return "  \n".join(lines)  # rows kept one per line: hard line breaks


def _list_item(line: str) -> str:
    indent = len(line) - len(line.lstrip(" "))
    body = line.strip()
    m = _ENUM.match(body)
    if m and m.group(3) == "." and m.group(2).isdigit():
        return " " * (indent * 2) + f"{m.group(2)}. " + escape(body[m.end() :])
    b = _BULLET.match(body)
    if b:
        body = body[b.end() :]
    else:
        body = _escape_line(body)  # "(a) item" and the like keep their own marker
        return " " * (indent * 2) + "- " + body
    return " " * (indent * 2) + "- " + escape(body)
