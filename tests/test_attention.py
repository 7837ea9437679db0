"""Flash attention 2 for the decoder where flash-attn is installed; SDPA otherwise."""

from __future__ import annotations

import functools
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


@pytest.mark.parametrize("graphs", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_decode_steps_of_a_flash_decoder_run_on_sdpa(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch, graphs: bool
) -> None:
    """A decoder loaded with flash attention 2 keeps it for prefills, but its decode steps
    run on SDPA: transformers' flash path would gather the whole live cache by the 2D mask
    at every step. Fixed-shape (graph) steps are allowed too, the pages' tokens are those
    they get decoded alone, and the model's setting is its own again after each step. (No
    flash-attn on the CPU: a stand-in registered under its name records its calls and
    computes with SDPA.)"""
    from test_refill import cpu_decoder, mixed_pages, prepared_with
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from ocrpress.engines.deepseek_runtime import text_config

    eng, pages, budgets, alone = mixed_pages(tiny_v2_model)
    config = text_config(eng.hf_model)
    calls: list[int] = []  # query lengths the flash stand-in saw

    def flash(module: Any, query: Any, key: Any, value: Any, mask: Any, **kw: Any) -> Any:
        assert mask is None, "prefills here have no padding"
        calls.append(query.shape[2])
        return sdpa_attention_forward(module, query, key, value, None, **kw)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", flash)
    monkeypatch.setattr(config, "_attn_implementation", "flash_attention_2")
    seen: list[str] = []  # the implementation each decode step's forward ran with
    forward = eng.hf_model.forward

    @functools.wraps(forward)  # the decoder reads the cache argument's name off it
    def recording(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] == 1:
            seen.append(config._attn_implementation)
        return forward(*args, **kwargs)

    monkeypatch.setattr(eng.hf_model, "forward", recording)
    decoder = cpu_decoder(eng, slots=2, graphs=graphs)
    assert (decoder.fixed is not None) == graphs
    tokens = decoder.run(prepared_with(eng, pages, budgets))
    assert [tokens[i] for i in range(5)] == alone
    layers = config.num_hidden_layers
    assert calls and all(n > 1 for n in calls)  # prefills only
    assert len(calls) == decoder.stats.prefills * layers
    assert seen and set(seen) == {"sdpa"} and len(seen) == decoder.stats.steps
    assert config._attn_implementation == "flash_attention_2"


def test_every_flash_flavour_switches_its_decode_steps_to_sdpa() -> None:
    from types import SimpleNamespace

    from ocrpress.engines.refill_items import step_attention

    def model(attention: str | None) -> Any:
        return SimpleNamespace(
            config=SimpleNamespace(text_config=SimpleNamespace(_attn_implementation=attention))
        )

    for name in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2"):
        assert step_attention(model(name)) == ("sdpa", name)
    for name in ("sdpa", "eager", None):
        assert step_attention(model(name)) is None
    assert step_attention(SimpleNamespace()) is None  # a stand-in model without a config
