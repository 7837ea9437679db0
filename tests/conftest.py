"""Shared fixtures. Tiny random-weight models are built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub: loading by hub id must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_v2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a tiny random DeepSeek-OCR-2 checkpoint (config, weights, tokenizer)."""
    from tiny_models import build_tiny_v2

    path = tmp_path_factory.mktemp("tiny-deepseek-ocr2")
    build_tiny_v2(path)
    return path


@pytest.fixture(scope="session")
def tiny_v1_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a tiny random DeepSeek-OCR (v1) checkpoint with v1 key names and config."""
    from tiny_models_v1 import build_tiny_v1

    path = tmp_path_factory.mktemp("tiny-deepseek-ocr1")
    build_tiny_v1(path)
    return path
