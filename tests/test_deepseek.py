"""DeepSeek engine on the tiny random DeepSeek-OCR-2 checkpoint (CPU, fp32)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from ocrpress.document import PageImage
from ocrpress.engines import EngineError, EngineOptions
from ocrpress.engines.deepseek import (
    DEFAULT_MODEL,
    PROMPTS,
    DeepSeekEngine,
    model_available,
    model_family,
    prompt_for,
    row_status,
)
from ocrpress.grounding import parse_grounded
from ocrpress.modes import plan_tokens

SMALL_PAGE = (560, 620)  # under 640 px: never tiled (v1 or v2), cheap on CPU


def page(i: int, size: tuple[int, int] = SMALL_PAGE) -> PageImage:
    """A page with a coloured box whose place and colour depend on ``i``."""
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    w, h = size
    d.rectangle(
        [w * (0.05 + 0.1 * i), h * 0.1, w * (0.5 + 0.05 * i), h * (0.6 - 0.05 * i)],
        fill=((60 * i) % 256, 30, 220 - 40 * i),
    )
    d.text((20, h - 60), f"page {i}", fill="black")
    return PageImage(source=f"doc{i}.pdf", index=i, image=im, dpi=144.0)


def make_engine(model: Path, **kw) -> DeepSeekEngine:
    kw.setdefault("max_new_tokens", 12)
    return DeepSeekEngine(EngineOptions(engine="deepseek", model=str(model), **kw))


@pytest.fixture(scope="module")
def engine(tiny_v2_model: Path) -> DeepSeekEngine:
    return make_engine(tiny_v2_model, mode="small")


def test_family_and_availability(tiny_v2_model: Path, tmp_path: Path) -> None:
    assert model_available(str(tiny_v2_model))
    assert model_family(str(tiny_v2_model)) == "v2"
    assert not model_available(str(tmp_path / "nowhere"))
    assert not model_available(str(tmp_path))  # a folder without config.json
    assert not model_available("nobody-here/NoSuchModel-xyz")


def test_engine_basics(engine: DeepSeekEngine) -> None:
    assert engine.name == "deepseek"
    assert engine.family == "v2"
    assert engine.mode == "small"
    assert engine.slots == 4  # CPU default
    assert engine.max_batch_size == 16  # pages per call: 4 slots' worth to refill from
    assert engine.device == "cpu"
    assert engine.prompt == PROMPTS["markdown"]
    p = engine.plan(page(0))
    assert p.vision_tokens == 145
    assert p.tiles is None


def test_batched_equals_one_at_a_time(engine: DeepSeekEngine) -> None:
    pages = [page(i) for i in range(3)]
    assert len({engine.plan(p).batch_key for p in pages}) == 1
    batched = engine.generate_ids(pages)
    single = [engine.generate_ids([p])[0] for p in pages]
    assert batched == single
    # the test means something only if the pages produce different outputs
    assert len({tuple(r) for r in batched}) == 3
    results = engine.run(pages)
    decode = engine.tokenizer.decode
    assert [r.raw for r in results] == [
        decode(row_status(row, engine.eos_ids, 12)[0], skip_special_tokens=False) for row in single
    ]


def test_results_record_costs_and_truncation(engine: DeepSeekEngine, caplog) -> None:
    pages = [page(0), page(1)]
    rows = engine.generate_ids(pages)
    with caplog.at_level(logging.WARNING, logger="ocrpress"):
        results = engine.run(pages)
    assert "mode arithmetic says" not in caplog.text
    for p, r, row in zip(pages, results, rows, strict=True):
        assert (r.source, r.index, r.width, r.height, r.dpi) == (
            p.source,
            p.index,
            p.width,
            p.height,
            p.dpi,
        )
        assert (r.engine, r.model, r.mode) == ("deepseek", engine.model, "small")
        assert r.vision_tokens == plan_tokens("v2", "small", p.width, p.height).vision_tokens
        if not engine.eos_ids & set(row):
            assert r.status == "truncated"
            assert r.text_tokens == engine.opts.max_new_tokens
            assert r.raw  # truncated pages keep their text
        assert r.compression == r.text_tokens / r.vision_tokens
    # a random model essentially never emits EOS within 12 tokens
    assert any(r.status == "truncated" for r in results)


def test_eos_ends_a_page(engine: DeepSeekEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a token the model is about to emit count as EOS: the page stops there."""
    p = page(2)
    row = engine.generate_ids([p])[0]
    k = next(i for i in range(2, len(row)) if row[i] not in row[:i])
    monkeypatch.setattr(engine, "eos_ids", engine.eos_ids | {row[k]})
    r = engine.run([p])[0]
    assert r.text_tokens == k
    assert r.status in ("ok", "empty")
    assert r.raw == engine.tokenizer.decode(row[:k], skip_special_tokens=False)
    monkeypatch.setattr(engine, "eos_ids", engine.eos_ids | {row[0]})
    first = engine.run([p])[0]
    assert (first.status, first.text_tokens, first.raw, first.blocks) == ("empty", 0, "", [])


def test_row_status() -> None:
    assert row_status([5, 6, 2, 9, 9], {2}, 5) == ([5, 6], False)
    assert row_status([5, 6, 7], {2}, 3) == ([5, 6, 7], True)
    assert row_status([2, 0, 0], {2}, 3) == ([], False)


def test_markdown_blocks_come_from_grounding(engine: DeepSeekEngine) -> None:
    p = page(1)
    r = engine.run([p])[0]
    assert r.blocks == parse_grounded(r.raw, p.width, p.height)


def test_mixed_batch_keeps_order(tiny_v2_model: Path) -> None:
    # max_tiles=2 keeps the tiled page cheap on CPU: 1000x700 gets a 2x1 grid
    eng = make_engine(tiny_v2_model, mode="gundam", max_tiles=2, max_new_tokens=4)
    pages = [page(0), page(1, (1000, 700)), page(2)]
    results = eng.run(pages)
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.vision_tokens for r in results] == [257, 257 + 2 * 144, 257]
    assert [r.tiles for r in results] == [None, (2, 1), None]
    assert results[0].raw == eng.run([pages[0]])[0].raw


def test_text_task_prompt_and_block(tiny_v2_model: Path) -> None:
    eng = make_engine(tiny_v2_model, mode="small", task="text", max_new_tokens=8)
    assert eng.prompt == "<image>\nFree OCR."
    p = page(0)
    r = eng.run([p])[0]
    # The random model's first 8 tokens for this page are not all EOS or whitespace: the
    # assertions below always run (a model change that empties the page fails here).
    assert r.raw.strip(), f"tiny model gave no text for the page ({r.status})"
    assert r.status in ("ok", "truncated")
    assert len(r.blocks) == 1
    assert r.blocks[0].type == "text"
    assert r.blocks[0].bbox == (0.0, 0.0, float(p.width), float(p.height))
    assert r.blocks[0].text == r.raw.strip()


def test_prompts() -> None:
    assert prompt_for("markdown") == "<image>\n<|grounding|>Convert the document to markdown."
    assert prompt_for("text") == "<image>\nFree OCR."
    assert prompt_for("figure") == "<image>\nParse the figure."
    assert prompt_for("text", "Read the table.") == "<image>\nRead the table."
    assert prompt_for("text", "<image>Locate <|ref|>x<|/ref|>") == "<image>Locate <|ref|>x<|/ref|>"
    with pytest.raises(EngineError, match="unknown task"):
        prompt_for("poem")


def test_ngram_guard_wiring(engine: DeepSeekEngine, tiny_v2_model: Path) -> None:
    (guard,) = engine.logits_processors(prompt_length=150)
    assert (guard.ngram_size, guard.window, guard.prompt_length) == (30, 90, 150)
    tok = engine.tokenizer
    assert set(guard.whitelist_token_ids) == {
        tok.convert_tokens_to_ids(t) for t in ("<td>", "</td>")
    }
    off = make_engine(tiny_v2_model, mode="small", ngram_size=0)
    assert off.logits_processors(prompt_length=150) == []


def test_ngram_guard_acts_during_generation(tiny_v2_model: Path) -> None:
    eng = make_engine(tiny_v2_model, mode="small", ngram_size=2, ngram_window=90, max_new_tokens=30)
    wl = set(eng.whitelist_ids)
    for row in eng.generate_ids([page(0), page(1)]):
        text, _ = row_status(row, eng.eos_ids, 30)
        bigrams = [tuple(text[i : i + 2]) for i in range(len(text) - 1)]
        plain = [b for b in bigrams if not set(b) & wl]
        assert len(plain) == len(set(plain)), "a bigram repeated despite the guard"


def test_missing_model_message(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as e:
        DeepSeekEngine(EngineOptions(engine="deepseek", model="nobody-here/NoSuchModel-xyz"))
    msg = str(e.value)
    assert "nobody-here/NoSuchModel-xyz" in msg
    assert "hf download nobody-here/NoSuchModel-xyz" in msg
    assert "--model PATH" in msg
    with pytest.raises(EngineError, match="does not exist"):
        DeepSeekEngine(EngineOptions(engine="deepseek", model=str(tmp_path / "missing")))
    with pytest.raises(EngineError, match=r"no config\.json"):
        DeepSeekEngine(EngineOptions(engine="deepseek", model=str(tmp_path)))


def test_default_model_name() -> None:
    assert DEFAULT_MODEL == "deepseek-community/DeepSeek-OCR-2"


@pytest.mark.parametrize(
    ("mode", "needle"),
    [("tiny", "512-px view"), ("large", "1280-px view"), ("bogus", "unknown mode 'bogus'")],
)
def test_bad_mode(tiny_v2_model: Path, mode: str, needle: str) -> None:
    with pytest.raises(EngineError) as e:
        make_engine(tiny_v2_model, mode=mode)
    assert "supports modes small, base, gundam" in str(e.value)
    assert needle in str(e.value)


def test_bad_tiles_and_dtype(tiny_v2_model: Path) -> None:
    with pytest.raises(EngineError, match="tile range"):
        make_engine(tiny_v2_model, max_tiles=12)
    with pytest.raises(EngineError, match="dtype"):
        make_engine(tiny_v2_model, dtype="int3")


def test_loads_hub_id_from_cache(
    tiny_v2_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hub id found in the local HF cache loads without network."""
    import huggingface_hub.constants as hub_constants

    repo = tmp_path / "hub" / "models--acme--tiny-ocr2"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_v2_model, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_available("acme/tiny-ocr2")
    assert model_family("acme/tiny-ocr2") == "v2"
    eng = DeepSeekEngine(
        EngineOptions(engine="deepseek", model="acme/tiny-ocr2", mode="small", max_new_tokens=2)
    )
    assert eng.model == "acme/tiny-ocr2"
    assert eng.run([page(0)])[0].model == "acme/tiny-ocr2"


def test_v1_checkpoint_dispatch(tiny_v1_model: Path) -> None:
    """v1 checkpoints go through ocrpress.engines.deepseek_v1 with v1 token arithmetic."""
    pytest.importorskip("ocrpress.engines.deepseek_v1")
    assert model_family(str(tiny_v1_model)) == "v1"
    eng = make_engine(tiny_v1_model, mode="gundam", max_tiles=2, max_new_tokens=4)
    pages = [page(0, (1000, 700)), page(1, (1000, 700)), page(2)]
    batched = eng.generate_ids(pages[:2])
    assert batched == [eng.generate_ids([p])[0] for p in pages[:2]]
    results = eng.run(pages)
    assert [r.vision_tokens for r in results] == [256 + 200, 256 + 200, 256]
    assert [r.tiles for r in results] == [(2, 1), (2, 1), None]


def test_output_is_capped_at_the_context(
    engine: DeepSeekEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompt + new tokens never exceed max_position_embeddings; a page stopped there is
    truncated and says why."""
    p = page(0)
    ids = engine.prepare(p).inputs["input_ids"]
    prompt = ids.shape[1]
    assert engine.new_token_budget(prompt) == 12  # 4096 positions: the option rules
    monkeypatch.setattr(engine, "context_limit", lambda: prompt + 5)
    assert engine.new_token_budget(prompt) == 5
    r = engine.run([p])[0]
    assert (r.status, r.text_tokens) == ("truncated", 5)
    assert any("model's context" in n for n in r.notes)


def test_refill_decoding_matches_pages_decoded_alone(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots, five pages of three prompt lengths (untiled, 2x1 and 1x2 tiles) ending at
    different steps: finished pages hand their slot on, and every page's greedy output is
    token for token what transformers' generate gives it alone (fp32)."""
    eng = make_engine(
        tiny_v2_model,
        mode="gundam",
        max_tiles=2,
        max_new_tokens=14,
        batch_size=2,
        ngram_size=2,
        ngram_window=6,
    )
    sizes = [SMALL_PAGE, (1000, 700), (700, 1000), SMALL_PAGE, (1000, 700)]
    pages = [page(i, s) for i, s in enumerate(sizes)]
    plain = [eng.generate_ids([p])[0] for p in pages]
    # A token most pages emit somewhere becomes EOS, so pages end at different steps.
    counts: dict[int, int] = {}
    for row in plain:
        for t in set(row[1:10]):
            counts[t] = counts.get(t, 0) + 1
    stop = max(counts, key=counts.__getitem__)
    monkeypatch.setattr(eng, "eos_ids", eng.eos_ids | {stop})
    alone = [row_status(eng.generate_ids([p])[0], eng.eos_ids, 14)[0] for p in pages]
    assert len({len(t) for t in alone}) >= 3, "pages should end at different steps"
    before = eng.decode_stats.prefills
    results = eng.run(pages)
    assert [r.index for r in results] == list(range(5))
    assert [r.tiles for r in results] == [None, (2, 1), (1, 2), None, (2, 1)]
    decode = eng.tokenizer.decode
    assert [r.raw for r in results] == [decode(t, skip_special_tokens=False) for t in alone]
    assert [r.text_tokens for r in results] == [len(t) for t in alone]
    assert eng.decode_stats.prefills - before >= 3  # pages joined a running decode
    u = eng.usage()
    assert 0 < u.slot_tokens <= u.slot_capacity
    assert u.device_seconds > 0


def test_a_page_that_cannot_be_prepared_fails_the_call_and_the_back_off_isolates_it(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocrpress.backoff import run_with_backoff

    eng = make_engine(tiny_v2_model, mode="small", batch_size=2, max_new_tokens=6)
    pages = [page(i) for i in range(4)]
    want = [r.raw for r in eng.run(pages)]
    prepare = DeepSeekEngine.prepare

    def damaged(self, p, key=0):
        if p is pages[2]:
            raise ValueError("image is damaged")
        return prepare(self, p, key)

    monkeypatch.setattr(DeepSeekEngine, "prepare", damaged)
    with pytest.raises(ValueError, match="damaged"):
        eng.run(pages)
    results = run_with_backoff(eng, pages)
    assert results[2].status == "error" and "image is damaged" in (results[2].error or "")
    assert [r.raw for i, r in enumerate(results) if i != 2] == want[:2] + want[3:]
