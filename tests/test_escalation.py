"""--mode auto after decoding: which results stand, which pages go again, who reads the rest."""

from __future__ import annotations

import pytest
from PIL import Image

from ocrpress.document import Block, PageImage, PageResult
from ocrpress.engines import EngineError, EngineOptions, create_engine
from ocrpress.escalation import AutoSpec, Escalator, escalation_target, failure_reason
from ocrpress.modes import plan_tokens

SPEC = AutoSpec("v1", max_compression=10.0)


def _page(mode: str = "small", size: tuple[int, int] = (1190, 1684)) -> PageImage:
    page = PageImage("a.pdf", 0, Image.new("RGB", size, "white"), 144)
    page.mode = mode
    page.mode_estimate = {"mode": mode, "est_text_tokens": 400, "vision_tokens_gundam": 956}
    return page


def _result(page: PageImage, text_tokens: int, status: str = "ok") -> PageResult:
    tp = plan_tokens("v1", page.mode or "gundam", page.width, page.height)
    return PageResult.for_page(
        page,
        "deepseek",
        mode=page.mode,
        vision_tokens=tp.vision_tokens,
        text_tokens=text_tokens,
        status=status,  # type: ignore[arg-type]
        blocks=[Block("text", (0, 0, 10, 10), "x")],
    )


def test_failure_reasons() -> None:
    page = _page("small")  # 100 vision tokens
    assert failure_reason(_result(page, 1000), 10) is None  # exactly R
    assert failure_reason(_result(page, 1001), 10) == "10.0 text tokens per vision token > 10"
    assert failure_reason(_result(page, 50, "truncated"), 10) == "truncated"
    assert failure_reason(_result(page, 0, "empty"), 10) is None


def test_target_covers_what_the_page_produced() -> None:
    page = _page("tiny")
    # 900 text tokens need >= 90 vision tokens at R 10: small (100) is the next mode up.
    assert escalation_target(SPEC, page, _result(page, 900, "truncated")) == "small"
    # 3,000 need 300: base (256) is not enough, large (400) is.
    assert escalation_target(SPEC, page, _result(page, 3000)) == "large"
    # More than any untiled mode holds: gundam.
    assert escalation_target(SPEC, page, _result(page, 9000)) == "gundam"
    page.mode = "gundam"
    assert escalation_target(SPEC, page, _result(page, 9000)) is None


def test_one_rerun_then_the_fallback_and_notes_say_so() -> None:
    esc = Escalator(SPEC, fallback="none")
    page = _page("small")
    assert esc.review(page, _result(page, 64, "truncated")) is None
    assert page.mode == "base"  # the page goes again, one mode up
    final = esc.review(page, _result(page, 64, "truncated"))
    assert final is not None and final.status == "truncated"  # kept: --fallback none
    assert final.mode_estimate is not None
    assert final.mode_estimate["escalations"] == [
        {"from": "small", "to": "base", "reason": "truncated"}
    ]
    assert final.mode_estimate["vision_tokens_spent"] == 100 + 256
    assert "mode small -> base: truncated" in final.notes
    assert any("--fallback none" in n for n in final.notes)
    assert (esc.escalated, esc.fell_back) == (1, 0)


def test_a_good_result_stands_and_a_fixed_mode_page_is_never_reviewed() -> None:
    esc = Escalator(SPEC)
    page = _page("base")
    res = esc.review(page, _result(page, 300))
    assert res is not None and res.mode == "base" and not res.notes
    assert res.mode_estimate is not None and res.mode_estimate["vision_tokens_spent"] == 256
    fixed = _page("small")
    fixed.mode_estimate = None  # not an auto page
    assert esc.review(fixed, _result(fixed, 50, "truncated")) is not None


def test_dense_but_complete_at_gundam_is_kept_with_a_note() -> None:
    esc = Escalator(SPEC)
    page = _page("gundam")
    res = esc.review(page, _result(page, 20000))
    assert res is not None and res.engine == "deepseek"
    assert any("text tokens per vision token" in n for n in res.notes)


@pytest.mark.slow
def test_rapid_reads_what_no_mode_could() -> None:
    from docgen import render_page

    esc = Escalator(SPEC, fallback="rapid")
    image = render_page(["Fallback engines read this page"], fontsize=20)
    page = _page("gundam", image.size)
    page.image = image
    res = esc.review(page, _result(page, 8, "truncated"))
    assert res is not None and res.engine == "rapid" and res.status == "ok"
    assert "Fallback" in res.text
    assert any("read by the rapid engine" in n for n in res.notes)
    assert res.mode_estimate is page.mode_estimate


def test_vllm_refuses_auto_in_one_line() -> None:
    with pytest.raises(EngineError, match="--mode auto needs --engine deepseek"):
        create_engine(EngineOptions(engine="vllm", mode="auto"))


def test_auto_options_enter_fingerprints_only_in_auto() -> None:
    fixed = EngineOptions(engine="deepseek", mode="small", max_compression=5)
    assert "max_compression" not in fixed.fingerprint()
    auto = EngineOptions(engine="deepseek", mode="auto", max_compression=5)
    assert auto.fingerprint()["max_compression"] == 5
