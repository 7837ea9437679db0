"""The Ray run's engine actor (ocrpress.cluster_ocr.OcrActor) called in this process, as Ray
would call it, with rows made by the run's own CPU stages: no Ray needed, only pandas."""

from __future__ import annotations

import gc
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from docgen import labelled_pdf

from ocrpress.cluster import document_row, ray_job
from ocrpress.cluster_ocr import OcrActor
from ocrpress.cluster_render import expand_document, render_page
from ocrpress.devices import make_planner
from ocrpress.engines import EngineOptions
from ocrpress.inputs import discover
from ocrpress.journal import fingerprint
from ocrpress.pipeline import ConvertOptions

pd = pytest.importorskip("pandas")


def _rows(tmp_path: Path, engine: str) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """The job and the rendered page rows of two documents (3 + 2 pages)."""
    src = tmp_path / "in"
    src.mkdir()
    docs, _ = discover([str(labelled_pdf(src / "a.pdf", 3)), str(labelled_pdf(src / "b.pdf", 2))])
    out = tmp_path / "out"
    opts = ConvertOptions(
        output=str(out),
        formats=["markdown"],
        dpi=36,
        ocr="always",  # labelled_pdf pages have text layers
        engine=EngineOptions(engine=engine, batch_size=2),
    )
    planner, resolved = make_planner(opts.engine)
    job = ray_job(opts, resolved)
    rows = []
    for i, doc in enumerate(docs):
        row = document_row(doc, i, fingerprint(doc, planner, opts))
        rows += [render_page(r, job) for r in expand_document(row, job)]
    assert [r["index"] for r in rows] == [0, 1, 2, 0, 1]
    return job, rows, out


def test_concurrent_calls_share_one_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two of Ray's calls at once, of 2 pages each (one engine batch each): the second call's
    pages join the stream the first call's pages are decoding in, and every document is
    written once all its pages are done."""
    monkeypatch.setenv("ECHO_DELAY", "0.2")
    job, rows, out = _rows(tmp_path, "scale_engines:StreamEchoEngine")
    actor = OcrActor(job)
    answers: list[Any] = []
    calls = [
        threading.Thread(
            target=lambda part=part, call=actor: answers.append(call(pd.DataFrame(part)))
        )
        for part in (rows[:2], rows[2:4])
    ]
    for t in calls:
        t.start()
    for t in calls:
        t.join(timeout=60)
    calls.clear()  # the threads' targets hold the actor
    answers.append(actor(pd.DataFrame(rows[4:])))  # the last page, alone
    assert len(answers) == 3
    finished = pd.concat(answers)
    assert sorted(finished[finished["finished"]]["order"]) == [0, 1]  # each document once
    assert not finished["error"].any()
    texts = {p.name: p.read_text() for p in out.glob("*.md")}
    assert sorted(texts) == ["a.md", "b.md"]
    held = [re.findall(r" open=(\d+)", t) for t in (texts["a.md"], texts["b.md"])]
    # a's 3 pages and b's first came in the two concurrent calls (2 pages a call): a page
    # that saw more than 2 open saw pages of both calls in one stream.
    first_four = [int(n) for n in held[0] + held[1][:1]]
    assert len(first_four) == 4 and max(first_four) > 2, held
    del actor  # as Ray Data's pool does at the end: the decode's thread goes with it
    gc.collect()
    for t in threading.enumerate():
        if t.name == "ocrpress-device":
            t.join(timeout=10)
    assert not any(t.name == "ocrpress-device" for t in threading.enumerate())


def test_a_dead_device_thread_fails_its_pages_not_the_call(tmp_path: Path) -> None:
    """Ray would drop a block whose call raised: the pages fail instead, with the reason, and
    the actor's next call gets a new stream rather than failing too."""
    job, rows, out = _rows(tmp_path, "scale_engines:DyingStreamEngine")
    actor = OcrActor(job)
    answer = actor(pd.DataFrame(rows))
    assert sorted(answer["order"]) == [0, 1] and answer["finished"].all()
    for order in (0, 1):
        pages = json.loads(answer[answer["order"] == order]["pages"].iloc[0])
        assert pages and all(p["status"] == "error" for p in pages)
        assert all("device thread died" in p["error"] for p in pages)
    assert not list(out.glob("*.md"))  # no output for documents whose every page failed
    again = actor(pd.DataFrame(rows))
    assert again["finished"].all() and not again["error"].any()
    assert sorted(p.name for p in out.glob("*.md")) == ["a.md", "b.md"]


def test_the_actor_pool_asks_for_two_calls_at_once_where_ray_can() -> None:
    from types import SimpleNamespace

    from ocrpress.cluster_ocr import CALLS_PER_ACTOR, actor_compute

    class Old:  # a Ray without multi-threaded actor calls
        def __init__(self, *, size: int) -> None:
            self.kw = {"size": size}

    class Threads:  # enable_true_multi_threading; concurrency through max_concurrency
        def __init__(
            self,
            *,
            size: int,
            max_tasks_in_flight_per_actor: int | None = None,
            enable_true_multi_threading: bool = False,
        ) -> None:
            self.kw = {
                "size": size,
                "sent": max_tasks_in_flight_per_actor,
                "threads": enable_true_multi_threading,
            }

    class Calls:  # and max_concurrent_calls_per_actor
        def __init__(
            self,
            *,
            size: int,
            max_tasks_in_flight_per_actor: int | None = None,
            max_concurrent_calls_per_actor: int | None = None,
            enable_true_multi_threading: bool = False,
        ) -> None:
            self.kw = {
                "size": size,
                "sent": max_tasks_in_flight_per_actor,
                "calls": max_concurrent_calls_per_actor,
                "threads": enable_true_multi_threading,
            }

    def compute(cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
        pool, options = actor_compute(
            SimpleNamespace(data=SimpleNamespace(ActorPoolStrategy=cls)), 3
        )
        return pool.kw, options

    assert compute(Old) == ({"size": 3}, {})
    two = CALLS_PER_ACTOR
    threads = {"size": 3, "sent": two, "threads": True}
    assert compute(Threads) == (threads, {"max_concurrency": two})  # and no call queued
    assert compute(Calls) == (threads | {"calls": two}, {})
    ray = pytest.importorskip("ray")  # the installed Ray's own pool takes what is asked
    pytest.importorskip("ray.data")
    pool, _ = actor_compute(ray, 2)
    assert isinstance(pool, ray.data.ActorPoolStrategy) and pool.enable_true_multi_threading
    assert pool.max_tasks_in_flight_per_actor == CALLS_PER_ACTOR
