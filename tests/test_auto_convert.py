"""``convert --mode auto`` end to end on tiny random v1 and v2 checkpoints.

Random weights rarely stop before ``--max-new-tokens``, so their pages come back truncated:
that is the escalation path (one costlier mode, then the fallback) on every page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from densitygen import density_pdf
from test_cli import ocrpress

from ocrpress.modes import plan_tokens
from ocrpress.tiering import ladder


@pytest.fixture(scope="module")
def density_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slide, a letter and a dense two-column page (their text layers give the estimate)."""
    folder = tmp_path_factory.mktemp("auto-docs")
    for kind in ("slide", "letter", "paper"):
        density_pdf(folder / f"{kind}.pdf", kind)
    return folder


def _convert(model: Path, docs: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return ocrpress(
        "convert",
        str(docs),
        "-o",
        str(out),
        "-f",
        "json",
        "--engine",
        "deepseek",
        "--model",
        str(model),
        "--mode",
        "auto",
        "--ocr",
        "always",  # the pages have text layers; the model must read them
        "--max-new-tokens",
        "6",
        "--max-tiles",
        "2",
        "--workers",
        "1",
        *extra,
    )


def _pages(out: Path) -> dict[str, dict]:
    return {
        kind: json.loads((out / f"{kind}.json").read_text())["pages"][0]
        for kind in ("slide", "letter", "paper")
    }


@pytest.fixture(scope="module")
def v2_batched(
    tiny_v2_model: Path, density_docs: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """One v2 run, 4 pages a batch: (output folder, stderr)."""
    out = tmp_path_factory.mktemp("auto-v2") / "out"
    r = _convert(tiny_v2_model, density_docs, out, "--fallback", "none", "--batch-size", "4")
    assert r.returncode == 0, r.stderr.decode()
    return out, r.stderr.decode()


@pytest.mark.parametrize("family", ["v2", pytest.param("v1", marks=pytest.mark.slow)])
def test_each_page_is_read_in_its_own_mode(
    request: pytest.FixtureRequest, density_docs: Path, tmp_path: Path, family: str
) -> None:
    if family == "v2":
        out, stderr = request.getfixturevalue("v2_batched")
    else:
        out = tmp_path / "out"
        model = request.getfixturevalue("tiny_v1_model")
        r = _convert(model, density_docs, out, "--fallback", "none")
        assert r.returncode == 0, r.stderr.decode()
        stderr = r.stderr.decode()
    pages = _pages(out)
    steps = ladder(family)
    chosen = {k: p["mode_estimate"]["mode"] for k, p in pages.items()}
    # Denser pages never get cheaper modes; the paper page needs more than the slide.
    assert steps.index(chosen["slide"]) <= steps.index(chosen["letter"])
    assert steps.index(chosen["letter"]) <= steps.index(chosen["paper"])
    assert steps.index(chosen["slide"]) < steps.index(chosen["paper"])
    spent = gundam = 0
    for p in pages.values():
        est = p["mode_estimate"]
        assert est["source"] == "text-layer"
        escalations = est.get("escalations", [])
        # Truncated (random weights): read once more one mode up, unless chosen at the top.
        if est["mode"] != steps[-1]:
            assert p["status"] == "truncated" and len(escalations) == 1
            step = escalations[0]
            assert (step["from"], step["reason"]) == (est["mode"], "truncated")
            assert steps.index(step["to"]) > steps.index(est["mode"])
            assert p["mode"] == step["to"]
            assert f"mode {step['from']} -> {step['to']}: truncated" in p["notes"]
        else:
            assert p["mode"] == est["mode"] and not escalations
        assert any("--fallback none" in n for n in p["notes"])
        want = plan_tokens(family, p["mode"], p["width"], p["height"], 2, 2).vision_tokens
        assert p["vision_tokens"] == want
        spent += est["vision_tokens_spent"]
        gundam += est["vision_tokens_gundam"]
    stats = json.loads((out / "_ocrpress_run.json").read_text())
    assert stats["mode"] == "auto"
    assert sum(stats["auto"]["pages_by_mode"].values()) == 3
    assert stats["auto"]["vision_tokens"] == spent
    assert stats["auto"]["vision_tokens_gundam"] == gundam
    assert "mode auto:" in stderr


def test_batched_auto_equals_page_by_page(
    tiny_v2_model: Path, density_docs: Path, tmp_path: Path, v2_batched: tuple[Path, str]
) -> None:
    """Batching by mode across documents changes nothing in fp32."""
    out = tmp_path / "one-by-one"
    r = _convert(tiny_v2_model, density_docs, out, "--fallback", "none", "--batch-size", "1")
    assert r.returncode == 0, r.stderr.decode()
    assert _pages(out) == _pages(v2_batched[0])


@pytest.mark.slow
def test_a_page_no_mode_can_read_goes_to_rapid(
    tiny_v1_model: Path, density_docs: Path, tmp_path: Path
) -> None:
    one = tmp_path / "in"
    one.mkdir()
    (one / "slide.pdf").write_bytes((density_docs / "slide.pdf").read_bytes())
    out = tmp_path / "out"
    r = _convert(tiny_v1_model, one, out, "-f", "json,markdown")
    assert r.returncode == 0, r.stderr.decode()
    page = json.loads((out / "slide.json").read_text())["pages"][0]
    assert page["engine"] == "rapid" and page["status"] == "ok"
    assert any(n.startswith("read by the rapid engine: deepseek") for n in page["notes"])
    assert len(page["mode_estimate"]["escalations"]) == 1
    assert (out / "slide.md").read_text().strip()  # the slide's words, read by rapid
    stats = json.loads((out / "_ocrpress_run.json").read_text())
    assert stats["auto"]["pages_by_mode"] == {"fallback rapid": 1}


def test_ray_and_vllm_refuse_auto_in_one_line(tmp_path: Path, density_docs: Path) -> None:
    r = ocrpress("convert", str(density_docs), "-o", str(tmp_path / "o"), "--mode", "auto",
                 "--ray", "auto")  # fmt: skip
    assert r.returncode == 2 and b"--mode auto runs on one machine" in r.stderr
    r = ocrpress("convert", str(density_docs), "-o", str(tmp_path / "o"), "--mode", "auto",
                 "--engine", "vllm")  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert b"--mode auto needs --engine deepseek" in r.stderr
