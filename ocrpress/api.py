"""The Python face of ``ocrpress convert``: one call, the same options as the CLI."""

from __future__ import annotations

import logging
from typing import Any

from .discovery import discover
from .document import DocumentResult
from .engines import Engine, EngineOptions
from .pipeline import Converter, ConvertOptions

log = logging.getLogger("ocrpress")


def convert(
    paths: list[str] | str,
    output: str | None = None,
    *,
    formats: list[str] | str = "markdown",
    engine: str | Engine = "auto",
    **options: Any,
) -> list[DocumentResult]:
    """Convert documents; the Python face of ``ocrpress convert``.

    ``paths``: files, folders or glob patterns. ``output``: a folder to write to, or None to only
    return results. ``engine``: a name (``auto``, ``rapid``, ``deepseek``, ``vllm``) or an Engine.
    Other keywords are :class:`ConvertOptions` fields (``dpi``, ``pages``, ``workers``, ``ocr``
    = ``"auto"``, ``"always"`` or ``"never"`` ...) or
    :class:`EngineOptions` fields (``model``, ``mode``, ``task`` ...).
    """
    from .writers import check_output, parse_formats

    if isinstance(paths, str):
        paths = [paths]
    eng_fields = set(EngineOptions.__dataclass_fields__)
    eng_opts = EngineOptions(
        engine=engine if isinstance(engine, str) else engine.name,
        **{k: v for k, v in options.items() if k in eng_fields},
    )
    conv_kwargs = {k: v for k, v in options.items() if k not in eng_fields}
    fmts = parse_formats(formats) if isinstance(formats, str) else list(formats)
    check_output(fmts, output)
    opts = ConvertOptions(output=output, formats=fmts, engine=eng_opts, **conv_kwargs)
    docs, problems = discover(paths)
    for p in problems:
        log.error("%s", p)
    conv = Converter(opts, engine=None if isinstance(engine, str) else engine)
    return conv.run(docs)
