"""One decode across batches (ocrpress.stream_runner + the engine's stream), tiny
DeepSeek-OCR-2 on the CPU in fp32: the same tokens as batch by batch, batches that join a
running decode, and failures that cost only a re-run of the unfinished pages."""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest
from spies import before_each_call
from test_deepseek import make_engine, page

from ocrpress.engines.decode_graphs import FixedStep
from ocrpress.engines.deepseek import DeepSeekEngine
from ocrpress.engines.refill import RefillDecoder
from ocrpress.engines.refill_rows import Running, StepTokens
from ocrpress.stream_runner import StreamRunner


def batches() -> list[list]:
    # Mixed sizes: in gundam mode they make different tile grids, so prompt lengths differ.
    sizes = [(560, 620), (900, 1300), (1300, 700), (560, 620), (700, 900)]
    pages = [page(i % 5, sizes[i % len(sizes)]) for i in range(11)]
    return [pages[0:3], pages[3:8], pages[8:11]]


def reference(eng: DeepSeekEngine, groups: list[list]) -> list[list[str]]:
    return [[r.raw for r in eng.run(list(g))] for g in groups]


def streamed(eng: DeepSeekEngine, groups: list[list]) -> tuple[list[list], list]:
    runner = StreamRunner(eng)
    futs = [runner.submit(list(g), False) for g in groups]
    outs = [runner.result(f) for f in futs]
    runner.close()
    return [[r.raw for r in res] for res, _, _ in outs], outs


@pytest.fixture
def serve_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    before_each_call(
        monkeypatch, RefillDecoder, "serve", lambda self, *a, **k: calls.append(self.slots)
    )
    return calls


#: The engine's decode-step switches (off by default until a GPU run measures them).
SWITCHES = [{}, {"decode_graphs": True, "read_late": True}]


@pytest.mark.parametrize(
    "switches", [SWITCHES[0], pytest.param(SWITCHES[1], marks=pytest.mark.slow)]
)
def test_a_stream_decodes_every_batch_as_batch_by_batch(
    tiny_v2_model: Path, serve_calls: list[int], switches: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with fixed-shape decode steps and tokens read a step late: the same texts."""
    eng = make_engine(tiny_v2_model, mode="gundam", batch_size=3, max_new_tokens=10)
    groups = batches()
    want = reference(eng, groups)
    for name, value in switches.items():
        setattr(eng, name, value)
    serve_calls.clear()
    fixed: list[int] = []
    before_each_call(monkeypatch, FixedStep, "__call__", lambda self, rows, _s: fixed.append(1))
    late: list[int] = []  # steps whose tokens were copied to be read a step late
    start = StepTokens.start
    monkeypatch.setattr(StepTokens, "start", lambda *a: late.append(1) or start(*a))
    got, outs = streamed(eng, groups)
    assert got == want
    assert bool(fixed) == bool(late) == bool(switches)
    assert serve_calls == [3]  # one decoder for all three batches
    assert all(lowered == 0 for _, lowered, _ in outs)
    assert not any(t.name == "ocrpress-device" for t in threading.enumerate())


def test_batch_usages_add_up_to_the_engines(tiny_v2_model: Path) -> None:
    eng = make_engine(tiny_v2_model, mode="small", batch_size=2, max_new_tokens=8)
    eng.run([page(0), page(1)])  # work done before the run is not the run's
    before = eng.usage()
    _, outs = streamed(eng, batches())
    total = eng.usage().minus(before)
    assert sum(u.slot_tokens for _, _, u in outs) == total.slot_tokens > 0
    assert sum(u.slot_capacity for _, _, u in outs) == total.slot_capacity
    assert sum(u.device_seconds for _, _, u in outs) == pytest.approx(total.device_seconds)


@pytest.mark.parametrize("switches", SWITCHES)
def test_an_out_of_memory_error_reruns_only_unfinished_pages(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch, serve_calls: list[int], switches: dict
) -> None:
    """Also with a step's tokens still to be read when the step after it fails."""
    eng = make_engine(tiny_v2_model, mode="small", batch_size=4, max_new_tokens=10)
    groups = batches()
    want = reference(eng, groups)
    for name, value in switches.items():
        setattr(eng, name, value)
    serve_calls.clear()
    ran: list[int] = []

    def counting(self, batch):
        # The failed stream's cache is gone before the re-runs start (on a GPU it would
        # hold the memory that just ran out).
        gc.collect()
        assert not [o for o in gc.get_objects() if type(o) is Running and o.cache is not None]
        ran.append(len(batch))

    before_each_call(monkeypatch, DeepSeekEngine, "run", counting)
    state = {"steps": 0}

    def failing(self, rows, parked):
        state["steps"] += 1
        if state["steps"] == 15:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")

    before_each_call(monkeypatch, RefillDecoder, "_step", failing)
    got, _ = streamed(eng, groups)
    assert got == want
    assert eng._slot_limit.ceiling == 2  # slots halved for what follows
    # The stream had finished some pages: only the others ran again, batch by batch.
    assert 0 < sum(ran) < sum(len(g) for g in groups)
    assert len(serve_calls) >= 2  # a new stream started after the failure


def test_a_page_that_breaks_preparation_is_its_own_error(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch, serve_calls: list[int]
) -> None:
    eng = make_engine(tiny_v2_model, mode="small", batch_size=3, max_new_tokens=6)
    groups = batches()
    bad = groups[1][2]

    def damaged(self, p, key=0):
        if p is bad:
            raise ValueError("image is damaged")

    want = reference(eng, groups)
    before_each_call(monkeypatch, DeepSeekEngine, "prepare", damaged)
    reruns: list[int] = []
    monkeypatch.setattr(DeepSeekEngine, "run", lambda self, b: reruns.append(len(b)))
    serve_calls.clear()
    _, outs = streamed(eng, groups)
    assert serve_calls == [3] and reruns == []  # the stream went on; nothing ran again
    results = [r for res, _, _ in outs for r in res]
    flat_want = [raw for g in want for raw in g]
    for r, raw, p in zip(results, flat_want, [p for g in groups for p in g], strict=True):
        if p is bad:
            assert r.status == "error" and "image is damaged" in (r.error or "")
        else:
            assert r.status != "error" and r.raw == raw


def test_the_pipeline_streams_unless_truncated_pages_are_retried(
    tiny_v2_model: Path, tmp_path: Path, serve_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from docgen import labelled_pdf

    from ocrpress.inputs import discover
    from ocrpress.pipeline import Converter, ConvertOptions

    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 3) for i in range(3)]
    docs, _ = discover([str(f) for f in files])
    raws = {}
    sizes: list[int] = []
    before_each_call(
        monkeypatch, StreamRunner, "submit", lambda self, pages, retry: sizes.append(len(pages))
    )
    for retry in (False, True):
        eng = make_engine(tiny_v2_model, mode="small", batch_size=2, max_new_tokens=6)
        opts = ConvertOptions(
            output=str(tmp_path / f"out{retry}"),
            formats=["json"],
            dpi=36,
            workers=0,
            ocr="always",
            engine=eng.opts,
            retry_truncated=retry,
        )
        serve_calls.clear()
        conv = Converter(opts, engine=eng)
        raws[retry] = [[p.raw for p in d.pages] for d in conv.run(docs)]
        # Streaming: one decoder for all the run's batches (4 + 5 pages with 2 slots); with
        # the retry, one a batch and one a retry of its truncated pages.
        assert len(serve_calls) > 2 if retry else serve_calls == [2], serve_calls
        stats = conv.stats.to_dict()
        assert 0 < stats["engine_busy_fraction"] <= 1
    assert raws[False] == raws[True]
    # The stream starts on its slots' worth of pages, then batches double (to 4 x 2 slots).
    assert sizes == [2, 4, 3]
    assert not any(t.name == "ocrpress-device" for t in threading.enumerate())


def test_a_stream_that_cannot_start_falls_back_to_batch_by_batch(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = make_engine(tiny_v2_model, mode="small", batch_size=3, max_new_tokens=6)
    groups = batches()
    want = reference(eng, groups)
    tries: list[int] = []

    def broken(self, feed, deliver, stop=None):
        tries.append(1)
        raise RuntimeError("cannot start")

    monkeypatch.setattr(DeepSeekEngine, "stream", broken)
    runner = StreamRunner(eng)
    futs = [runner.submit(list(g), False) for g in groups]
    got = [[r.raw for r in f.result(timeout=120)[0]] for f in futs]
    runner.close()
    assert got == want
    assert tries == [1]  # no second attempt, no spinning


def test_close_stops_the_stream_and_cancels_what_is_left(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = make_engine(tiny_v2_model, mode="small", batch_size=2, max_new_tokens=40)
    before_each_call(
        monkeypatch, RefillDecoder, "_step", lambda self, rows, parked: time.sleep(0.02)
    )
    runner = StreamRunner(eng)
    futs = [runner.submit(list(g), False) for g in batches()]
    time.sleep(0.5)
    t0 = time.perf_counter()
    runner.close(wait=True)
    assert time.perf_counter() - t0 < 30
    assert not any(t.name == "ocrpress-device" for t in threading.enumerate())
    assert all(f.done() for f in futs)
    assert isinstance(futs[-1].exception(), CancelledError)
    # The engine is free again: a new run on it decodes normally.
    assert eng.run([page(0)])[0].status != "error"


def test_slots_lowered_by_an_oom_grow_back_within_a_stream(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocrpress import backoff

    eng = make_engine(tiny_v2_model, mode="small", batch_size=4, max_new_tokens=4)
    groups = [[page(i % 5) for i in range(k, k + 6)] for k in (0, 6, 12)]
    want = reference(eng, groups)
    monkeypatch.setattr(backoff, "GROW_AFTER", 1)  # one batch's worth of pages is enough
    eng._slot_limit.lower(2)  # as after an out-of-memory error
    eng.cache_positions = 100_000  # a cache budget (none on the CPU by default) is cut too
    budgets: list[int | None] = []
    before_each_call(
        monkeypatch,
        RefillDecoder,
        "serve",
        lambda self, *a, **k: budgets.append(self.budget.positions),
    )
    sizes: list[tuple[int, int | None]] = []
    before_each_call(
        monkeypatch, RefillDecoder, "resize", lambda self, *a: sizes.append((a[0], a[1]))
    )
    got, _ = streamed(eng, groups)
    assert got == want
    assert budgets[0] == 50_000
    assert sizes and sizes[-1] == (4, 100_000)  # back to the engine's slots, mid-stream
    assert eng._slot_limit.ceiling == 0


class _Fatal(BaseException):
    """What kills a device thread (a bug): not an Exception."""


class _DyingEngine:
    name = "dying"
    max_batch_size = 2

    def stream(self, feed, deliver, stop=None) -> None:  # type: ignore[no-untyped-def]
        feed(True)
        time.sleep(0.2)
        raise _Fatal("bug")


class _LateClear(threading.Event):
    """The scheduler's worst order: the device thread dies (and says it takes nothing more)
    between submit's check for a dead thread and submit clearing the flag."""

    runner: StreamRunner | None = None

    def clear(self) -> None:
        thread = self.runner._thread if self.runner is not None else None
        if thread is not None:
            thread.join()
        super().clear()


def test_waiting_for_a_hungry_stream_ends_when_its_thread_dies() -> None:
    """A device-pool worker waits for the stream to want its next batch: a dead device thread
    must end that wait (else the worker never takes the end of the run)."""
    runner = StreamRunner(_DyingEngine())
    flag = _LateClear()
    flag.set()
    flag.runner = runner
    runner._hungry = flag
    pages = [page(i) for i in range(2)]
    runner.submit(pages[:1], False)  # the thread starts, takes the page, dies in 0.2 s
    second = runner.submit(pages[1:], False)  # its flag cleared after the thread died
    assert "device thread died" in str(second.exception(timeout=10))
    assert runner.dead
    done = threading.Event()
    threading.Thread(target=lambda: (runner.wait_hungry(), done.set()), daemon=True).start()
    assert done.wait(5), "wait_hungry never returned"


@pytest.mark.parametrize("devices", [None, "all"])
def test_a_dead_device_thread_ends_the_run_in_one_line_exit_3(
    tmp_path: Path, devices: str | None
) -> None:
    """A bug that kills the device thread (in this process, or in a --devices replica) ends
    the run with one line and exit code 3, not a traceback."""
    from docgen import labelled_pdf
    from test_cli import ocrpress

    pdf = labelled_pdf(tmp_path / "a.pdf", 3)
    extra = ["--devices", devices] if devices else []
    r = ocrpress(
        "convert",
        str(pdf),
        "-o",
        str(tmp_path / "out"),
        "--engine",
        "scale_engines:DyingStreamEngine",
        "--ocr",
        "always",
        "--batch-size",
        "1",
        *extra,
        env={"OCRPRESS_FAKE_GPUS": "2"},
    )
    assert r.returncode == 3, r.stderr.decode()
    errors = [ln for ln in r.stderr.decode().splitlines() if "error:" in ln]
    assert len(errors) == 1 and "device thread died" in errors[0], r.stderr.decode()
    assert b"Traceback" not in r.stderr
    assert not (tmp_path / "out" / "a.md").exists()
