"""The streaming pipeline: batching, back-off, bounded memory, isolation, resume, skip."""

from __future__ import annotations

import io
import json
import weakref
from pathlib import Path

import pytest
from docgen import labelled_pdf
from fake_engines import EchoEngine, OomEngine

from ocrpress.document import PageImage, PageResult
from ocrpress.engines import EngineOptions
from ocrpress.inputs import discover
from ocrpress.pipeline import RUN_STATS_FILE, Converter, ConvertOptions


def _run(
    paths: list[Path],
    engine: EchoEngine,
    out: Path | None = None,
    workers: int = 0,
    **kw: object,
) -> Converter:
    docs, _ = discover([str(p) for p in paths])
    opts = ConvertOptions(
        output=str(out) if out else None,
        formats=list(kw.pop("formats", ["markdown", "json"])),  # type: ignore[call-overload]
        dpi=36,
        workers=workers,
        ocr=kw.pop("ocr", "always"),  # labelled_pdf pages have text layers: OCR them anyway
        **kw,  # type: ignore[arg-type]
    )
    conv = Converter(opts, engine=engine)
    conv.results = conv.run(docs)  # type: ignore[attr-defined]
    return conv


def _texts(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): p.read_text()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".ocrpress" not in p.parts and p.name != RUN_STATS_FILE
    }


def test_batches_cross_documents_and_keep_order(tmp_path: Path) -> None:
    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 3) for i in range(3)]
    eng = EchoEngine(EngineOptions(batch_size=4))
    conv = _run(files, eng, tmp_path / "out")
    assert sorted(eng.batches, reverse=True)[:2] == [4, 4]  # 9 pages of one key: 4 + 4 + 1
    assert sum(eng.batches) == 9
    doc = json.loads((tmp_path / "out" / "d1.json").read_text())
    assert [p["page"] for p in doc["pages"]] == [1, 2, 3]
    assert all(p["blocks"][0]["text"].startswith(f"d1.pdf p{p['page']} ") for p in doc["pages"])
    assert conv.stats.pages == 9 and conv.stats.documents == 3


def test_an_engine_with_decode_slots_starts_on_a_small_batch(tmp_path: Path) -> None:
    """The first batch is twice the engine's decode slots; batches then double up to the
    engine's batch size: it starts on the first pages instead of waiting for a full batch."""
    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 10) for i in range(3)]
    eng = EchoEngine(EngineOptions(batch_size=12))
    eng.slots = 2  # type: ignore[attr-defined]
    conv = _run(files, eng, tmp_path / "out")
    assert eng.batches == [4, 8, 12, 6]
    assert conv.stats.pages == 30
    plain = EchoEngine(EngineOptions(batch_size=12))
    _run(files, plain, tmp_path / "plain")
    assert plain.batches == [12, 12, 6]  # engines without slots: full batches from the start
    assert _texts(tmp_path / "out") == _texts(tmp_path / "plain")


def test_same_output_with_worker_processes(tmp_path: Path) -> None:
    files = [
        labelled_pdf(tmp_path / "a.pdf", 3),
        labelled_pdf(tmp_path / "b.pdf", 2, landscape=True),
    ]
    _run(files, EchoEngine(EngineOptions(batch_size=2)), tmp_path / "inline", workers=0)
    _run(files, EchoEngine(EngineOptions(batch_size=3)), tmp_path / "pool", workers=2)
    assert _texts(tmp_path / "inline") == _texts(tmp_path / "pool")


def test_oom_halves_batch_and_retries(tmp_path: Path) -> None:
    files = [labelled_pdf(tmp_path / "a.pdf", 8)]
    eng = OomEngine(limit=2)
    conv = _run(files, eng, tmp_path / "out")
    assert eng.batches[:3] == [-8, -4, 2]  # 8 fails, 4 fails, then halves of 2 succeed
    assert all(b <= 2 for b in eng.batches[3:])
    doc = json.loads((tmp_path / "out" / "a.json").read_text())
    assert [p["status"] for p in doc["pages"]] == ["ok"] * 8
    assert conv.batch_limit == 2


def test_oom_at_batch_of_one_records_error_and_goes_on(tmp_path: Path) -> None:
    files = [labelled_pdf(tmp_path / "a.pdf", 2), labelled_pdf(tmp_path / "b.pdf", 1)]
    errors: list[str] = []
    docs, _ = discover([str(p) for p in files])
    opts = ConvertOptions(
        output=str(tmp_path / "out"), formats=["json"], dpi=36, workers=0, ocr="always"
    )
    conv = Converter(opts, engine=OomEngine(limit=0), on_error=errors.append)
    results = conv.run(docs)
    assert [r.error for r in results] == ["CUDA out of memory"] * 2
    assert not (tmp_path / "out" / "a.json").exists()
    assert errors and "CUDA out of memory" in errors[0]


class _CountingEngine(EchoEngine):
    """Records the most pages alive at once (structural memory bound)."""

    def __init__(self, opts: EngineOptions) -> None:
        super().__init__(opts)
        self.alive = 0
        self.peak = 0

    def plan(self, page: PageImage):  # type: ignore[no-untyped-def]
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(page, self._gone)
        return super().plan(page)

    def _gone(self) -> None:
        self.alive -= 1


def test_memory_bounded_by_window_not_document(tmp_path: Path) -> None:
    files = [labelled_pdf(tmp_path / "long.pdf", 60)]
    eng = _CountingEngine(EngineOptions(batch_size=4))
    _run(files, eng, None, window=10, keep_results=False, formats=["json"])
    assert sum(eng.batches) == 60
    assert eng.peak <= 10, eng.peak


def test_corrupt_document_costs_no_other_pages(tmp_path: Path) -> None:
    a = labelled_pdf(tmp_path / "a.pdf", 3)
    bad = tmp_path / "b.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    c = labelled_pdf(tmp_path / "c.pdf", 2)
    errors: list[str] = []
    docs, _ = discover([str(a), str(bad), str(c)])
    opts = ConvertOptions(
        output=str(tmp_path / "out"), formats=["markdown"], dpi=36, workers=0, ocr="always"
    )
    results = Converter(opts, engine=EchoEngine(), on_error=errors.append).run(docs)
    assert [r.ok for r in results] == [True, False, True]
    assert [len(r.pages) for r in results] == [3, 0, 2]
    assert len(errors) == 1 and errors[0].startswith(str(bad)) and "PDF" in errors[0]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.md")) == ["a.md", "c.md"]


class _Crash(Exception):
    pass


class _CrashingEngine(EchoEngine):
    """Dies (like a killed process would) after ``after`` pages."""

    def __init__(self, after: int) -> None:
        super().__init__(EngineOptions(batch_size=1))
        self.after = after
        self.done = 0

    def run(self, batch: list[PageImage]) -> list[PageResult]:
        if self.done >= self.after:
            raise KeyboardInterrupt  # not an Exception: the pipeline must not swallow it
        self.done += len(batch)
        return super().run(batch)


def test_resume_after_crash_matches_clean_run(tmp_path: Path) -> None:
    files = [labelled_pdf(tmp_path / "a.pdf", 4), labelled_pdf(tmp_path / "b.pdf", 3)]
    _run(files, EchoEngine(), tmp_path / "clean")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _run(files, _CrashingEngine(after=5), out)
    # a.pdf (4 pages) finished; b.pdf has one page in its journal and no output yet.
    assert (out / "a.md").exists() and not (out / "b.md").exists()
    assert not list(out.rglob("*.tmp"))
    eng = EchoEngine()
    conv = _run(files, eng, out)
    assert sum(eng.batches) == 2  # only b.pdf's two unfinished pages
    assert conv.stats.skipped_documents == 1 and conv.stats.resumed_pages == 1
    assert _texts(out) == _texts(tmp_path / "clean")


def test_skip_when_current_redo_when_options_change(tmp_path: Path) -> None:
    files = [labelled_pdf(tmp_path / "a.pdf", 2)]
    out = tmp_path / "out"
    _run(files, EchoEngine(), out)
    eng = EchoEngine()
    _run(files, eng, out)
    assert eng.batches == []  # nothing redone
    eng = EchoEngine(EngineOptions(mode="other"))
    _run(files, eng, out)
    assert sum(eng.batches) == 2  # different options: redone
    eng = EchoEngine(EngineOptions(mode="other"))
    _run(files, eng, out, formats=["markdown", "json", "text"])
    assert sum(eng.batches) == 2  # new format: redone
    eng = EchoEngine(EngineOptions(mode="other"))
    _run(files, eng, out, formats=["markdown", "json", "text"], overwrite=True)
    assert sum(eng.batches) == 2
    (out / "a.txt").unlink()
    eng = EchoEngine(EngineOptions(mode="other"))
    _run(files, eng, out, formats=["markdown", "json", "text"])
    assert sum(eng.batches) == 2  # an output went missing: redone
    labelled_pdf(tmp_path / "a.pdf", 3)  # content changed
    eng = EchoEngine(EngineOptions(mode="other"))
    _run(files, eng, out, formats=["markdown", "json", "text"])
    assert sum(eng.batches) == 3


def test_each_run_of_a_converter_counts_only_its_own_work(tmp_path: Path) -> None:
    """A converter used again (a library caller retrying after an error, say) reports the
    second run's statistics, not both runs' added up."""
    files = [labelled_pdf(tmp_path / "a.pdf", 2), labelled_pdf(tmp_path / "b.pdf", 1)]
    docs, _ = discover([str(p) for p in files])
    out = tmp_path / "out"
    opts = ConvertOptions(output=str(out), dpi=36, workers=0, ocr="always")
    conv = Converter(opts, engine=EchoEngine())
    conv.run(docs)
    assert (conv.stats.documents, conv.stats.pages, conv.stats.skipped_documents) == (2, 3, 0)
    conv.run(docs)  # everything is current now: skipped
    assert (conv.stats.documents, conv.stats.pages, conv.stats.skipped_documents) == (0, 0, 2)
    saved = json.loads((out / RUN_STATS_FILE).read_text())
    assert saved["pages"] == 0 and saved["documents_skipped"] == 2


def test_stdout_streams_jsonl_in_input_order(tmp_path: Path) -> None:
    files = [
        labelled_pdf(tmp_path / "a.pdf", 2),
        labelled_pdf(tmp_path / "b.pdf", 2, landscape=True),
    ]
    docs, _ = discover([str(p) for p in files])
    buf = io.StringIO()
    opts = ConvertOptions(output="-", formats=["json"], dpi=36, workers=0, ocr="always")
    Converter(opts, engine=EchoEngine(EngineOptions(batch_size=3)), stdout=buf).run(docs)
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [(x["source"].split("/")[-1], x["page"]) for x in lines] == [
        ("a.pdf", 1),
        ("a.pdf", 2),
        ("b.pdf", 1),
        ("b.pdf", 2),
    ]


def test_run_stats_file(tmp_path: Path) -> None:
    _run([labelled_pdf(tmp_path / "a.pdf", 3)], EchoEngine(), tmp_path / "out")
    stats = json.loads((tmp_path / "out" / RUN_STATS_FILE).read_text())
    assert stats["pages"] == 3 and stats["documents"] == 1 and stats["pages_failed"] == 0
    assert stats["vision_tokens_per_page"] == 100
    # an engine without usage counters is timed around its calls; it decodes nothing
    assert 0 < stats["engine_busy_fraction"] <= 1
    assert stats["decode_slot_utilisation"] is None
    assert stats["compression"] == pytest.approx(stats["text_tokens_per_page"] / 100, abs=1e-3)
