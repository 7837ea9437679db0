"""Pages render and are prepared while the model loads (ocrpress.early_start)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from docgen import labelled_pdf
from test_cli import ocrpress
from test_faults import _group, _wait_gone

from ocrpress.engines import EngineOptions
from ocrpress.inputs import discover
from ocrpress.pipeline import Converter, ConvertOptions
from ocrpress.render import RenderQueue

TESTS = Path(__file__).parent


def _run(
    model: Path, files: list[Path], workers: int = 1, devices: str | None = None, **engine: Any
) -> tuple[Converter, list[list[str]]]:
    """Convert ``files`` in memory (one render worker unless told); the converter and the
    pages' texts. ``engine``: more engine options."""
    docs, _ = discover([str(f) for f in files])
    options = EngineOptions(
        engine="deepseek", model=str(model), mode="small", max_new_tokens=6, **engine
    )
    opts = ConvertOptions(
        output=None, formats=["json"], dpi=36, workers=workers, ocr="always", engine=options,
        devices=devices,
    )  # fmt: skip
    conv = Converter(opts)
    results = conv.run(docs)
    return conv, [[p.raw for p in d.pages] for d in results]


def _spy_on_submits(monkeypatch: pytest.MonkeyPatch) -> list[RenderQueue]:
    """The render queues pages are submitted to, in order (one entry a page)."""
    queues: list[RenderQueue] = []
    submit = RenderQueue.submit

    def spying_submit(self: RenderQueue, *a: Any) -> None:
        queues.append(self)
        submit(self, *a)

    monkeypatch.setattr(RenderQueue, "submit", spying_submit)
    return queues


def _wait_for_first_page(queues: list[RenderQueue], seconds: float = 60) -> bool:
    """Wait until the first page submitted has come back from its render worker."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        first = queues[-1].items[0] if queues and queues[-1].items else None
        if first is not None and first.fut is not None and first.fut.done():
            return True
        time.sleep(0.02)
    return False


def test_the_first_pages_are_ready_when_the_model_is(
    tiny_v2_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load waits (up to 60 s) for the first page to come back rendered and prepared:
    without the early start nothing is rendered until the load ends, and the load times out.
    The outputs are those of a run that loads first, every page prepared by the worker."""
    import ocrpress.engines.deepseek as ds

    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 2 + i) for i in range(2)]
    queues = _spy_on_submits(monkeypatch)
    seen: dict[str, Any] = {}
    real_load = ds.load_v2

    def slow_load(*a: Any) -> Any:
        seen["first_done"] = _wait_for_first_page(queues)
        seen["in_flight"] = len(queues[-1]) if queues else 0
        return real_load(*a)

    monkeypatch.setattr(ds, "load_v2", slow_load)
    early, early_texts = _run(tiny_v2_model, files)
    assert seen == {"in_flight": 5, "first_done": True}
    assert early.stats.to_dict()["pages_prepared_by_workers"] == 5

    # The same run with the model loaded first.
    monkeypatch.setattr(ds, "load_v2", real_load)
    monkeypatch.setattr(Converter, "_render_while_loading", lambda *a, **k: None)
    serial, serial_texts = _run(tiny_v2_model, files)
    assert serial.stats.to_dict()["pages_prepared_by_workers"] == 5
    assert early_texts == serial_texts and all(all(t) for t in early_texts)


def _files_under(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock's (it holds the last run's process id)."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.name != "lock")
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def _after_a_good_run(
    tiny_v2_model: Path, tmp_path: Path, *options: str
) -> tuple[Path, list[str], dict[str, bytes]]:
    """Two 3-page PDFs converted into ``tmp_path/out`` with the working model; returns a
    copy of the model whose config is fine and weights are not, the command's arguments but
    ``--model``, and the output folder's files after the good run. ``bad.pdf`` is left
    beside the PDFs, unreadable."""
    model = tmp_path / "broken-model"
    shutil.copytree(tiny_v2_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 3) for i in range(2)]
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.7 truncated")
    out = tmp_path / "out"
    args = ["convert", *map(str, files), "-o", str(out), "--engine", "deepseek", "--ocr",
            "always", "--mode", "small", "--max-new-tokens", "4", *options]  # fmt: skip
    first = ocrpress(*args, "--model", str(tiny_v2_model))
    assert first.returncode == 0, first.stderr.decode()
    before = _files_under(out)
    assert sum(name.endswith(".done.json") for name in before) == 2, sorted(before)
    return model, args, before


def test_a_model_that_fails_to_load_after_pages_rendered_changes_nothing(
    tiny_v2_model: Path, tmp_path: Path
) -> None:
    """config.json is fine (so pages render while loading), the weights are not: exit 3 with
    the load's one line (not the unreadable file's, which the run never got to), and the
    output folder exactly as the last run left it: its done markers and journals are what a
    later run with the working model resumes from."""
    model, args, before = _after_a_good_run(tiny_v2_model, tmp_path, "--workers", "1")
    out = tmp_path / "out"

    r = ocrpress(*args, str(tmp_path / "bad.pdf"), "--model", str(model))
    err = r.stderr.decode()
    assert r.returncode == 3, err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "bad.pdf" not in err and "Traceback" not in err, err
    assert _files_under(out) == before


def test_a_load_in_flight_is_waited_for_not_repeated(tiny_v2_model: Path) -> None:
    """A run interrupted while its model loaded leaves the load running; the converter's next
    use of its engine takes that load's engine, and a failed load is tried afresh."""
    from ocrpress.early_start import BackgroundLoad
    from ocrpress.errors import EngineLoadError

    opts = ConvertOptions(output=None, engine=EngineOptions(model=str(tiny_v2_model)))
    conv = Converter(opts)
    loaded = object()
    conv._loading = BackgroundLoad(lambda: (time.sleep(0.2), loaded)[1])  # type: ignore[assignment]
    assert conv.engine is loaded and conv._loading is None

    def broken() -> Any:
        raise EngineLoadError("no weights")

    conv = Converter(opts)
    conv._loading = BackgroundLoad(broken)
    with pytest.raises(EngineLoadError):
        conv.engine  # noqa: B018
    assert conv._loading is None  # the next use loads again


def test_early_pages_keep_to_the_window(tmp_path: Path) -> None:
    from ocrpress.early_start import EARLY_PAGES, early_pages

    assert early_pages(None, str(tmp_path), None) == EARLY_PAGES
    assert early_pages(None, str(tmp_path), 12) == 12
    assert early_pages(None, str(tmp_path), 12, window=5) == 5


SLOW_LOAD = """
import sys, time
import ocrpress.engines.deepseek as ds

def never_loads(*a):
    time.sleep(600)

if __name__ == "__main__":
    ds.load_v2 = never_loads
    from ocrpress.cli import main
    sys.argv = ["ocrpress", *sys.argv[1:]]
    main()
"""


@pytest.mark.slow
def test_ctrl_c_while_the_model_loads_leaves_nothing(tiny_v2_model: Path, tmp_path: Path) -> None:
    """While the model loads (here: never), the worker prepares pages into its spool; Ctrl-C
    then exits 130 at once with one line, and leaves no process and no spooled page."""
    script = tmp_path / "slow_load.py"
    script.write_text(textwrap.dedent(SLOW_LOAD))
    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 4) for i in range(2)]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    env["TMPDIR"] = str(tmp)
    cmd = [sys.executable, str(script), "convert", *map(str, files), "-o", str(tmp_path / "out")]
    cmd += ["--engine", "deepseek", "--model", str(tiny_v2_model), "--ocr", "always"]
    cmd += ["--workers", "1", "--mode", "small"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(tmp.glob("pymp-*/inputs-*")):
            time.sleep(0.05)
        assert list(tmp.glob("pymp-*/inputs-*")), "no page was prepared while the model loaded"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.returncode == 130, err
        assert [ln for ln in err.splitlines() if ln.strip()] == [
            "ocrpress: error: interrupted; finished pages are kept, run the same command again"
            " to resume"
        ]
        assert _wait_gone(proc.pid) == []
        assert not list(tmp.iterdir())
    finally:
        for pid in _group(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_what_the_planner_expects_is_what_the_engine_has(tiny_v2_model: Path) -> None:
    """The recipe and pages a call known before the load are the loaded engine's own (on the
    CPU; on a GPU the pages a call wait for the free memory: no hint)."""
    from test_deepseek import make_engine

    from ocrpress.devices import make_planner

    for kw in ({"mode": "small"}, {"mode": "gundam", "batch_size": 3}, {"mode": "auto"}):
        eng = make_engine(tiny_v2_model, **kw)
        planner = make_planner(eng.opts)[0]
        assert planner.load_recipe() == eng.inputs_recipe  # type: ignore[attr-defined]
        assert planner.batch_hint() == eng.max_batch_size  # type: ignore[attr-defined]
    gpu = make_planner(EngineOptions(engine="deepseek", model=str(tiny_v2_model), device="cuda"))
    assert gpu[0].batch_hint() is None  # type: ignore[attr-defined]


def test_a_document_that_fails_when_the_load_ends_has_its_early_pages_dropped(
    tiny_v2_model: Path, tmp_path: Path
) -> None:
    """Documents opened while the model loads have their journals started only once it has
    loaded; one whose journal then cannot be written fails alone, and its pages, rendered
    and prepared meanwhile, are dropped instead of decoded for nothing."""
    from ocrpress.journal import state_paths

    files = [labelled_pdf(tmp_path / "d0.pdf", 3), labelled_pdf(tmp_path / "d1.pdf", 2)]
    docs, _ = discover([str(f) for f in files])
    out = tmp_path / "out"
    journal_path, _done = state_paths(str(out), docs[0].rel)
    (Path(journal_path) / "in-the-way").mkdir(parents=True)  # a folder where the journal goes
    engine = EngineOptions(
        engine="deepseek", model=str(tiny_v2_model), mode="small", max_new_tokens=4
    )
    opts = ConvertOptions(
        output=str(out), formats=["markdown"], dpi=36, workers=1, ocr="always", engine=engine
    )
    conv = Converter(opts, on_error=lambda msg: None)
    results = conv.run(docs)
    assert results[0].error is not None and "cannot write" in results[0].error
    assert results[1].error is None and (out / "d1.md").exists()
    assert conv.stats.to_dict()["pages_prepared_by_workers"] == 2  # d1's: none of d0's


def test_a_failed_load_leaves_no_rendered_page_behind(
    tiny_v2_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library caller's process goes on after a model that failed to load: the pages its
    workers rendered and prepared meanwhile do not stay in the temporary folder."""
    import multiprocessing.util

    import ocrpress.engines.deepseek as ds
    from ocrpress.errors import EngineLoadError

    spool = Path(multiprocessing.util.get_temp_dir())
    queues = _spy_on_submits(monkeypatch)

    def load_fails_after_a_page(*a: Any) -> Any:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(spool.glob("inputs-*")):
            time.sleep(0.02)
        raise OSError("weights unreadable")

    monkeypatch.setattr(ds, "load_v2", load_fails_after_a_page)
    files = [labelled_pdf(tmp_path / "d0.pdf", 3)]
    with pytest.raises(EngineLoadError):
        _run(tiny_v2_model, files)
    assert queues  # pages went to render while the model "loaded"
    assert not list(spool.glob("inputs-*")) and not list(spool.glob("page-*"))


# ------------------------------------------------------------------ --devices


@pytest.mark.parametrize("workers", [4, pytest.param(1, marks=pytest.mark.slow)])
def test_pages_render_while_the_device_replicas_load(
    tiny_v2_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """--devices on two (fake) GPUs: the main process waits for its replicas to load (here:
    until a page has come back from a render worker) with pages already rendering, prepared
    for the replicas when there are two workers a replica, else left for them to prepare.
    The outputs are a one-process run's."""
    from ocrpress.device_pool import DevicePool

    monkeypatch.setenv("OCRPRESS_FAKE_GPUS", "2")
    queues = _spy_on_submits(monkeypatch)
    seen: dict[str, Any] = {}
    real_wait = DevicePool.max_batch_size

    def slow_replicas(self: DevicePool) -> int:
        seen.setdefault("first_done", _wait_for_first_page(queues))
        return real_wait(self)

    monkeypatch.setattr(DevicePool, "max_batch_size", slow_replicas)
    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 2 + i) for i in range(2)]
    conv, texts = _run(tiny_v2_model, files, workers, "all", device="cpu", batch_size=1)
    assert seen == {"first_done": True}
    prepared = conv.stats.to_dict()["pages_prepared_by_workers"]
    assert prepared == (5 if workers == 4 else 0)

    monkeypatch.delenv("OCRPRESS_FAKE_GPUS")
    _, one_texts = _run(tiny_v2_model, files)
    assert texts == one_texts and all(all(t) for t in texts)


@pytest.mark.slow
def test_replicas_that_fail_to_load_after_pages_rendered_change_nothing(
    tiny_v2_model: Path, tmp_path: Path
) -> None:
    """--devices: config.json is fine, the replicas' weights are not. Pages go to render
    while they load; then exit 3 with one error line, naming the device (not the unreadable
    file's, which the run never got to), the output folder exactly as the last run left it,
    and no rendered or prepared page left in the temporary folder."""
    extra = ("--workers", "4", "--device", "cpu")
    model, args, before = _after_a_good_run(tiny_v2_model, tmp_path, *extra)
    out = tmp_path / "out"

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"OCRPRESS_FAKE_GPUS": "2", "TMPDIR": str(tmp)}
    r = ocrpress(*args, str(tmp_path / "bad.pdf"), "--model", str(model), "--devices", "all",
                 "-v", env=env)  # fmt: skip
    err = r.stderr.decode()
    assert r.returncode == 3, err
    assert "6 pages sent to render while the model loads" in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("ocrpress: error:")]
    assert len(errors) == 1 and "device" in errors[0] and "bad.pdf" not in err, err
    assert "Traceback" not in err, err
    assert _files_under(out) == before
    assert not list(tmp.iterdir())
