"""ocrpress: high-throughput OCR document conversion.

>>> import ocrpress
>>> docs = ocrpress.convert(["scan.pdf"], engine="rapid")  # doctest: +SKIP
>>> print(docs[0].pages[0].text)  # doctest: +SKIP
"""

from .api import convert
from .document import Block, DocumentResult, PageImage, PageResult
from .engines import EngineOptions
from .pipeline import Converter, ConvertOptions

__version__ = "0.1.0"

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
