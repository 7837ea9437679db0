"""Flash attention 2 for the decoder where flash-attn is installed; SDPA otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from ocrpress.engines import EngineOptions
from ocrpress.engines import deepseek_runtime as rt
from ocrpress.engines.deepseek import DeepSeekEngine


def test_attempts_follow_what_is_installed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rt, "flash_attn_installed", lambda: True)
    assert rt.attention_attempts("cuda") == [rt.FLASH_DECODER, "sdpa"]
    assert rt.attention_attempts("cuda:1")[0]["text_config"] == "flash_attention_2"
    assert rt.FLASH_DECODER["vision_config"] == "sdpa"  # SAM has no flash kernel
    assert rt.attention_attempts("cpu") == ["sdpa"]
    monkeypatch.setattr(rt, "flash_attn_installed", lambda: False)
    with caplog.at_level(logging.DEBUG, logger="ocrpress"):
        assert rt.attention_attempts("cuda") == ["sdpa"]
    lines = [r for r in caplog.records if "flash-attn" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG


@pytest.mark.parametrize("family", ["v2", "v1"])
def test_loader_asks_for_flash_then_falls_back(
    family: str,
    tiny_v2_model: Path,
    tiny_v1_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both families' loaders pass the per-part setting first; where the load refuses it
    (here: no flash-attn on a CPU machine) the engine loads with SDPA and says so once."""
    asked: list[Any] = []
    if family == "v2":
        from transformers import AutoModelForImageTextToText as cls

        model = tiny_v2_model
    else:
        from transformers import UnlimitedOcrForConditionalGeneration as cls

        model = tiny_v1_model
    real = cls.from_pretrained.__func__

    def recording(klass: Any, *args: Any, **kw: Any) -> Any:
        asked.append(kw.get("attn_implementation"))
        return real(klass, *args, **kw)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(recording))
    monkeypatch.setattr(rt, "attention_attempts", lambda device: [rt.FLASH_DECODER, "sdpa"])
    with caplog.at_level(logging.WARNING, logger="ocrpress"):
        eng = DeepSeekEngine(
            EngineOptions(engine="deepseek", model=str(model), max_new_tokens=2, batch_size=1)
        )
    assert asked == [rt.FLASH_DECODER, "sdpa"]
    assert eng.attn_implementation == "sdpa"
    assert sum("flash attention unavailable" in r.getMessage() for r in caplog.records) == 1


def test_flash_setting_is_described() -> None:
    assert rt.describe_attention(rt.FLASH_DECODER) == "flash_attention_2 (text) + sdpa (vision)"
    assert rt.describe_attention("sdpa") == "sdpa"
