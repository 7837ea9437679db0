"""Scale-out: several engine replicas (``--devices``) and Ray Data (``--ray``), on CPU.

Fake GPUs: ``OCRPRESS_FAKE_GPUS`` for the device pool, ``ray.init(num_gpus=2)`` for Ray. Each
replica's CUDA_VISIBLE_DEVICES is observed by the engine itself (``DeviceEchoEngine``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docgen import labelled_pdf

from ocrpress.engines import EngineOptions
from ocrpress.inputs import discover
from ocrpress.pipeline import RUN_STATS_FILE, Converter, ConvertOptions

TESTS = Path(__file__).parent


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    """Three good documents (two page shapes, so two batch keys) and a corrupt one between."""
    src = tmp_path / "in"
    src.mkdir()
    bad = src / "b_bad.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    return [
        labelled_pdf(src / "a.pdf", 4),
        bad,
        labelled_pdf(src / "c.pdf", 3, landscape=True),
        labelled_pdf(src / "d.pdf", 2),
    ]


def _opts(out: Path, engine: str, **kw: object) -> ConvertOptions:
    return ConvertOptions(
        output=str(out),
        formats=["markdown", "json"],
        dpi=36,
        workers=0,
        engine=EngineOptions(engine=engine, batch_size=2),
        **{"ocr": "always"} | kw,  # type: ignore[arg-type]  # labelled_pdf pages have text
    )


def _texts(out: Path, strip_device: bool = False) -> dict[str, str]:
    files = {
        str(p.relative_to(out)): p.read_text()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".ocrpress" not in p.parts and p.name != RUN_STATS_FILE
    }
    if strip_device:
        files = {k: re.sub(r" cvd=\S+ pid=\d+", "", v) for k, v in files.items()}
    return files


def _single(corpus: list[Path], out: Path, engine: str = "fake_engines:EchoEngine") -> None:
    docs, _ = discover([str(p) for p in corpus])
    Converter(_opts(out, engine)).run(docs)


def _devices_seen(out: Path) -> dict[str, str]:
    """pid -> CUDA_VISIBLE_DEVICES, from the text DeviceEchoEngine wrote."""
    seen: dict[str, str] = {}
    for p in out.glob("*.json"):
        if p.name == RUN_STATS_FILE:
            continue
        for page in json.loads(p.read_text())["pages"]:
            m = re.search(r"cvd=(\S+) pid=(\d+)", page["blocks"][0]["text"])
            assert m, page
            assert seen.setdefault(m[2], m[1]) == m[1]  # one process, one device
    return seen


# ------------------------------------------------------------------ --devices


def test_devices_match_single_process_and_isolate_errors(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _single(corpus, tmp_path / "single")
    monkeypatch.setenv("OCRPRESS_FAKE_GPUS", "2")
    # Slow pages, so the second worker is up before the first has done everything.
    monkeypatch.setenv("ECHO_DELAY", "0.3")
    errors: list[str] = []
    docs, _ = discover([str(p) for p in corpus])
    out = tmp_path / "devices"
    opts = _opts(out, "scale_engines:DeviceEchoEngine", devices="all")
    conv = Converter(opts, on_error=errors.append)
    results = conv.run(docs)
    assert [r.ok for r in results] == [True, False, True, True]
    assert [len(r.pages) for r in results] == [4, 0, 3, 2]
    assert len(errors) == 1 and "b_bad.pdf" in errors[0]
    assert _texts(out, strip_device=True) == _texts(tmp_path / "single")
    # Each worker process saw exactly one device of its own, and both devices worked.
    assert sorted(_devices_seen(out).values()) == ["0", "1"]
    assert conv.device_pool is not None and sum(conv.device_pool.pages_per_device.values()) == 9
    # Resume: a second run skips every good document and starts no batch.
    conv = Converter(_opts(out, "scale_engines:DeviceEchoEngine", devices="0,1"))
    conv.run(docs)
    assert conv.stats.skipped_documents == 3 and conv.stats.pages == 0


def test_render_workers_prepare_for_replicas_only_when_they_keep_up() -> None:
    from ocrpress.pipeline import WORKERS_PER_REPLICA, workers_prepare_for_replicas

    enough = WORKERS_PER_REPLICA * 2
    assert workers_prepare_for_replicas(enough, 2, window=600, room=600)
    assert not workers_prepare_for_replicas(enough - 1, 2, window=600, room=600)
    # 8 H100s in gundam mode want ~2,700 pages in flight; with 64 GiB free, 624 would fit.
    assert not workers_prepare_for_replicas(64, 8, window=2686, room=624)


def _on_two_fake_gpus(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> tuple[Converter, Path]:
    """The corpus's good documents through ``scale_engines:<engine>`` on 2 fake GPUs."""
    monkeypatch.setenv("OCRPRESS_FAKE_GPUS", "2")
    out = tmp_path / "devices"
    conv = Converter(_opts(out, f"scale_engines:{engine}", devices="all"))
    results = conv.run(discover([str(p) for p in _corpus_good(corpus)])[0])
    assert all(r.ok for r in results)
    return conv, out


def test_a_busy_replica_leaves_queued_batches_to_an_idle_one(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streaming replica takes its next batch only once its stream has taken every page of
    the last: a slow GPU does not sit on a batch that an idle one could run."""
    monkeypatch.setenv("SLOW_DEVICE_DELAY", "1.5")
    conv, _ = _on_two_fake_gpus(corpus, tmp_path, monkeypatch, "PageAtATimeEngine")
    assert conv.device_pool is not None
    # 9 pages in batches of 2: the slow replica (1.5 s a page) finishes one batch and may have
    # taken a second by then; holding two from the start, it took 4 pages or more.
    done = conv.device_pool.pages_per_device
    assert sum(done.values()) == 9 and done["0"] <= 3, done


def test_default_render_workers_grow_with_the_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render workers prepare every replica's pages: a core left to each replica, up to 4
    workers a replica (one device: cores - 1, at most 4, as before)."""
    from ocrpress.render import default_workers

    for cores, replicas, want in ((64, 1, 4), (64, 8, 32), (16, 8, 8), (8, 2, 6), (2, 1, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert default_workers(replicas) == want, (cores, replicas)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_workers(2) == 1  # never none


def test_streaming_replicas_hold_two_batches_each(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica whose engine streams holds two batches: pages of the next batch join its
    stream while the last pages of one finish; outputs are those of one process."""
    _single(corpus, tmp_path / "single")
    monkeypatch.setenv("ECHO_DELAY", "0.3")
    conv, out = _on_two_fake_gpus(corpus, tmp_path, monkeypatch, "StreamEchoEngine")
    texts = _texts(out, strip_device=True)
    held = [int(n) for t in texts.values() for n in re.findall(r" open=(\d+)", t)]
    assert len(held) == 2 * 9  # every page, in its .md and its .json
    assert max(held) > 2, held  # more than one batch (2 pages) in a stream at once
    stripped = {k: re.sub(r" open=\d+", "", v) for k, v in texts.items()}
    single = {k: v for k, v in _texts(tmp_path / "single").items() if "b_bad" not in k}
    assert stripped == single
    assert sorted(_devices_seen(out).values()) == ["0", "1"]
    assert conv.device_pool is not None and conv.device_pool.capacity == 4
    assert conv.stats.engine_replicas == 2


def _failing_run(
    corpus: list[Path], out: Path, engine: str, match: str, monkeypatch: pytest.MonkeyPatch
) -> float:
    """Seconds a run on two fake GPUs took to end in the DeviceError ``match`` describes;
    no device worker is left running."""
    import time

    from ocrpress.devices import DeviceError

    monkeypatch.setenv("OCRPRESS_FAKE_GPUS", "2")
    conv = Converter(_opts(out, engine, devices="all"))
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=match):
        conv.run(discover([str(p) for p in _corpus_good(corpus)])[0])
    seconds = time.monotonic() - t0
    assert conv.device_pool is not None
    assert not any(p.is_alive() for p in conv.device_pool._procs.values())
    return seconds


def test_a_dying_replica_ends_the_run_at_once_with_a_device_error(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process that dies fails the open batches with DeviceError (exit 3, resume)
    instead of leaving the run waiting, and the other worker is not waited for: its two
    batches of 20-second pages would take 80 s, and their results would be thrown away."""
    engine = "scale_engines:HalfDyingEngine"
    assert _failing_run(corpus, tmp_path, engine, "device worker died", monkeypatch) < 30


def test_a_result_that_cannot_be_read_back_fails_the_run_not_hangs_it(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    match = r"unreadable result.*cannot be read back"
    _failing_run(corpus, tmp_path, "scale_engines:UnreadableEngine", match, monkeypatch)


def test_a_replica_that_cannot_load_fails_the_run_without_waiting_for_the_others(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device 0's engine fails to load while device 1's takes 20 s: the error comes at once,
    naming the device, and the slow one is not waited for."""
    match = "device 0: RuntimeError: no model here"
    assert _failing_run(corpus, tmp_path, "scale_engines:LoadFailEngine", match, monkeypatch) < 15


def test_a_pool_closed_while_its_replicas_load_does_not_wait_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that fails before its first batch (pages rendered while the replicas load, see
    early_start.py) closes its pool at once: replicas still loading are killed, not waited
    for until they have loaded (30 s here)."""
    from ocrpress.device_pool import DevicePool

    monkeypatch.setenv("OCRPRESS_FAKE_GPUS", "2")
    pool = DevicePool(["0", "1"], EngineOptions(engine="scale_engines:SlowLoadEngine"))
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 15
    assert not any(p.is_alive() for p in pool._procs.values())


def test_a_dead_worker_is_noticed_when_a_child_keeps_its_pipe_open(
    corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's process ending is what counts, not only its pipe's end: a forked child
    still holding the pipe (for 15 s) does not leave the run waiting."""
    import signal

    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("FORK_PID_FILE", str(pid_file))
    engine = "scale_engines:ForkThenDieEngine"
    try:
        assert _failing_run(corpus, tmp_path, engine, "device worker died", monkeypatch) < 12
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _corpus_good(corpus: list[Path]) -> list[Path]:
    return [p for p in corpus if "bad" not in p.name]


def test_devices_cli_needs_cuda(tmp_path: Path) -> None:
    pdf = labelled_pdf(tmp_path / "a.pdf", 1)
    env = {k: v for k, v in os.environ.items() if k != "OCRPRESS_FAKE_GPUS"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, even on a GPU machine
    cmd = [sys.executable, "-m", "ocrpress", "convert", str(pdf), "-o", str(tmp_path / "o")]
    proc = subprocess.run(
        [*cmd, "--engine", "rapid", "--devices", "all"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert "needs CUDA GPUs" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "ocrpress", "convert", str(pdf), "--devices", "0,x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--devices" in proc.stderr


_CLI = [sys.executable, "-m", "ocrpress", "convert"]


@pytest.mark.ray
def test_ray_without_a_cluster_is_one_line_exit_3(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pdf = labelled_pdf(tmp_path / "a.pdf", 1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocrpress",
            "convert",
            str(pdf),
            "-o",
            str(tmp_path / "o"),
            "--engine",
            "rapid",
            "--ray",
            "auto",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ray auto" in lines[0] and "Traceback" not in proc.stderr


def test_deepseek_planner_matches_engine(tiny_v2_model: Path) -> None:
    """The model-free planner batches exactly as the loaded engine would."""
    from PIL import Image

    from ocrpress.devices import make_planner
    from ocrpress.document import PageImage
    from ocrpress.engines.deepseek import DeepSeekEngine

    for mode in (None,):
        opts = EngineOptions(engine="deepseek", model=str(tiny_v2_model), mode=mode, device="cpu")
        planner, _ = make_planner(opts)
        engine = DeepSeekEngine(opts)
        assert (planner.name, planner.model, planner.mode) == (
            engine.name,
            engine.model,
            engine.mode,
        )
        for w, h in ((600, 800), (1191, 1684), (1684, 1191), (500, 500), (3000, 700)):
            page = PageImage("x", 0, Image.new("RGB", (w, h), "white"), 144)
            assert planner.plan(page).batch_key == engine.plan(page).batch_key, (w, h)


# ------------------------------------------------------------------ Ray


@pytest.fixture
def ray_local() -> Iterator[object]:
    """A local Ray with 2 CPUs and 2 fake GPUs; shut down afterwards."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        # Workers import the test engines by name, as the CLI would with PYTHONPATH set.
        runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}},
    )
    yield ray
    ray.shutdown()


def _ray_run(out: Path, corpus: list[Path], engine: str) -> tuple[list, object]:
    from ocrpress.cluster import RayConverter

    docs, _ = discover([str(p) for p in corpus])
    conv = RayConverter(_opts(out, engine))
    return conv.run(docs), conv


@pytest.mark.ray
@pytest.mark.slow
def test_ray_fake_gpus_match_single_process(
    ray_local: object, corpus: list[Path], tmp_path: Path
) -> None:
    _single(corpus, tmp_path / "single")
    out = tmp_path / "ray"
    results, conv = _ray_run(out, corpus, "scale_engines:DeviceEchoEngine")
    assert [r.ok for r in results] == [True, False, True, True]
    assert [len(r.pages) for r in results] == [4, 0, 3, 2]
    assert "corrupt PDF" in (results[1].error or "")
    assert _texts(out, strip_device=True) == _texts(tmp_path / "single")
    # Two actors, one fake GPU each (Ray sets CUDA_VISIBLE_DEVICES per actor).
    seen = _devices_seen(out)
    assert set(seen.values()) <= {"0", "1"} and len(set(seen.values())) == len(seen)
    # Resume: every good document is skipped before the dataset is built.
    results, conv = _ray_run(out, corpus, "scale_engines:DeviceEchoEngine")
    assert conv.stats.skipped_documents == 3  # type: ignore[attr-defined]
    assert [r.skipped for r in results] == [True, False, True, True]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_two_node_cluster(corpus: list[Path], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    _single(corpus, tmp_path / "single")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        ray.init(
            address=cluster.address,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}},
        )
        out = tmp_path / "ray"
        results, _ = _ray_run(out, corpus, "fake_engines:EchoEngine")
        assert [r.ok for r in results] == [True, False, True, True]
        assert _texts(out) == _texts(tmp_path / "single")
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_streaming_actor_decodes_across_calls(corpus: list[Path], tmp_path: Path) -> None:
    """An actor whose engine streams keeps one decode across Ray's calls: pages of the next
    call join while the last call's pages finish (a call holds at most 2 pages here)."""
    ray = pytest.importorskip("ray")
    from ocrpress.cluster import RayConverter

    _single(corpus, tmp_path / "single")
    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(TESTS), "ECHO_DELAY": "0.3"}},
    )
    try:
        out = tmp_path / "ray"
        docs, _ = discover([str(p) for p in corpus])
        conv = RayConverter(_opts(out, "scale_engines:StreamEchoEngine"), actors=1)
        results = conv.run(docs)
    finally:
        ray.shutdown()
    assert [r.ok for r in results] == [True, False, True, True]
    texts = _texts(out, strip_device=True)
    held = [int(n) for t in texts.values() for n in re.findall(r" open=(\d+)", t)]
    assert len(held) == 2 * 9  # every page went through the stream, in its .md and .json
    assert max(held) > 2, held  # pages of two calls in the stream at once
    stripped = {k: re.sub(r" open=\d+", "", v) for k, v in texts.items()}
    assert stripped == _texts(tmp_path / "single")


def test_ray_batches_follow_the_engine(tiny_v2_model: Path) -> None:
    """Ray hands actors --batch-size rows, else the engine's own batch size (not a fixed 4)."""
    from ocrpress.cluster import RAY_AUTO_ROWS, ray_batch_rows
    from ocrpress.devices import make_planner

    echo = EngineOptions(engine="fake_engines:EchoEngine", batch_size=None)
    planner, _ = make_planner(echo)
    planner.max_batch_size = 12
    assert ray_batch_rows(ConvertOptions(engine=echo), planner) == 12
    sized = EngineOptions(engine="fake_engines:EchoEngine", batch_size=3)
    sized_planner, _ = make_planner(sized)
    assert ray_batch_rows(ConvertOptions(engine=sized), sized_planner) == 3
    # DeepSeek's planner holds no model: the actors learn their batch size on their GPU
    ds = EngineOptions(engine="deepseek", model=str(tiny_v2_model))
    ds_planner, _ = make_planner(ds)
    assert ray_batch_rows(ConvertOptions(engine=ds), ds_planner) == RAY_AUTO_ROWS
    big = EngineOptions(engine="deepseek", model=str(tiny_v2_model), batch_size=64)
    assert ray_batch_rows(ConvertOptions(engine=big), ds_planner) == 256  # 64 slots x 4
