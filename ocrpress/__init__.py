"""ocrpress: high-throughput OCR document conversion.

>>> import ocrpress
>>> docs = ocrpress.convert(["scan.pdf"], engine="rapid")  # doctest: +SKIP
>>> print(docs[0].pages[0].text)  # doctest: +SKIP

The names below are imported on first use: ``import ocrpress.procs`` (the first thing a
render worker's forkserver does, to die with its parent) must not wait for PyMuPDF.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "convert": ".api",
    "Block": ".document",
    "DocumentResult": ".document",
    "PageImage": ".document",
    "PageResult": ".document",
    "EngineOptions": ".engines",
    "Converter": ".pipeline",
    "ConvertOptions": ".pipeline",
}

__all__ = [
    "Block",
    "ConvertOptions",
    "Converter",
    "DocumentResult",
    "EngineOptions",
    "PageImage",
    "PageResult",
    "__version__",
    "convert",
]

if TYPE_CHECKING:
    from .api import convert
    from .document import Block, DocumentResult, PageImage, PageResult
    from .engines import EngineOptions
    from .pipeline import Converter, ConvertOptions


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
