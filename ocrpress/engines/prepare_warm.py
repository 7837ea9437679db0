"""Preloaded by the render workers' forkserver when the workers will prepare model inputs.

Importing torch and transformers' processors takes seconds (~9 s on a 2-core VM). Done once in
the forkserver, while the main process loads the model, every worker forked from it starts
with them; done in each worker, it would be at its first page, while the engine waits.
Nothing here starts a thread or touches CUDA: forking after it is safe.
"""

from __future__ import annotations

import contextlib

import torch  # noqa: F401

with contextlib.suppress(ImportError):  # a transformers without DeepSeek-OCR-2
    import transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2
    import transformers.models.deepseek_ocr2.processing_deepseek_ocr2  # noqa: F401

from . import deepseek_v1_processor, page_inputs  # noqa: F401
