"""Model inputs made by the render workers (ocrpress.engines.page_inputs): the same tensors as
the engine's own, used only when made for the page's mode under the engine's recipe, never
a reason for a page to fail, and bounded in memory through the pipeline's window."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_deepseek import make_engine, page

from ocrpress.engines import page_inputs
from ocrpress.engines.page_inputs import (
    PreparedFile,
    make_inputs,
    prepare_in_worker,
    window_for,
)


@pytest.fixture(autouse=True)
def _fresh_worker_cache() -> None:
    # prepare_in_worker keeps a processor per recipe, as a worker does: start each test bare.
    page_inputs._PROCESSORS.clear()


@pytest.mark.parametrize(
    ("fixture", "mode"),
    [("tiny_v2_model", "small"), ("tiny_v2_model", "gundam"), ("tiny_v1_model", "tiny")],
)
def test_worker_inputs_are_the_engines_own(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, mode: str
) -> None:
    eng = make_engine(request.getfixturevalue(fixture), mode=mode)
    p = page(1, (900, 1300))
    own = make_inputs(eng.processor, eng.inputs_recipe, p)
    prepare_in_worker(p, eng.inputs_recipe, str(tmp_path))  # loads its own processor
    ref = p.prepared
    assert isinstance(ref, PreparedFile) and Path(ref.path).is_file()
    assert ref.mode == mode and ref.recipe == eng.inputs_recipe
    made = ref.load()
    assert not Path(ref.path).exists()  # read once
    assert made.keys() == own.keys()
    for k, v in own.items():
        assert torch.equal(made[k], v) if torch.is_tensor(v) else made[k] == v, k


def test_engine_reads_a_matching_file_and_prepares_other_pages_itself(
    tiny_v2_model: Path, tmp_path: Path
) -> None:
    eng = make_engine(tiny_v2_model, mode="small")
    recipe = eng.inputs_recipe

    # A file made for this recipe and mode is what the engine decodes (doctored to show it).
    p = page(0)
    prepare_in_worker(p, recipe, str(tmp_path))
    doctored = p.prepared.load()
    doctored["pixel_values"] = torch.zeros_like(doctored["pixel_values"])
    torch.save(doctored, p.prepared.path)
    item = eng.prepare(p)
    assert torch.count_nonzero(item.inputs["pixel_values"]) == 0
    assert eng.prepared_by_workers == 1 and p.prepared is None
    assert not list(tmp_path.iterdir())

    # Made for another mode (an escalated page), or under other options: not used, removed.
    for other in (replace(recipe, mode="base"), replace(recipe, prompt="<image>\nFree OCR.")):
        q = page(2)
        prepare_in_worker(q, other, str(tmp_path))
        assert q.prepared is not None
        item = eng.prepare(q)
        own = make_inputs(eng.processor, recipe, page(2))
        assert torch.equal(item.inputs["pixel_values"], own["pixel_values"])
        assert torch.equal(item.inputs["input_ids"], own["input_ids"])
        assert not list(tmp_path.iterdir())
    assert eng.prepared_by_workers == 1

    # A damaged file: the engine prepares the page itself.
    r = page(3)
    prepare_in_worker(r, recipe, str(tmp_path))
    Path(r.prepared.path).write_bytes(b"not a tensor file")
    item = eng.prepare(r)
    assert torch.equal(
        item.inputs["input_ids"], make_inputs(eng.processor, recipe, page(3))["input_ids"]
    )
    assert eng.prepared_by_workers == 1 and not list(tmp_path.iterdir())


def test_a_failed_worker_preparation_leaves_the_page_to_the_engine(
    tiny_v2_model: Path, tmp_path: Path
) -> None:
    eng = make_engine(tiny_v2_model, mode="small")
    p = page(0)
    prepare_in_worker(p, replace(eng.inputs_recipe, folder=str(tmp_path / "gone")), str(tmp_path))
    assert p.prepared is None and not list(tmp_path.iterdir())
    assert eng.run([p])[0].status != "error"


def test_pipeline_workers_prepare_every_page(tiny_v2_model: Path, tmp_path: Path) -> None:
    """Through the pipeline with one render worker: every page's inputs come from it, the
    outputs are those of a run without workers, and no inputs file outlives its page."""
    from multiprocessing import util as mp_util

    from docgen import labelled_pdf

    from ocrpress.inputs import discover
    from ocrpress.pipeline import Converter, ConvertOptions

    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 2 + i) for i in range(2)]
    docs, _ = discover([str(f) for f in files])
    texts = {}
    for workers in (0, 1):
        eng = make_engine(tiny_v2_model, mode="small", max_new_tokens=6)
        opts = ConvertOptions(
            output=None, formats=["json"], dpi=36, workers=workers, ocr="always", engine=eng.opts
        )
        conv = Converter(opts, engine=eng)
        results = conv.run(docs)
        texts[workers] = [[p.raw for p in d.pages] for d in results]
        assert eng.prepared_by_workers == (5 if workers else 0)
        assert conv.stats.to_dict()["pages_prepared_by_workers"] == (5 if workers else 0)
    assert texts[0] == texts[1]
    assert not list(Path(mp_util.get_temp_dir()).glob("inputs-*"))


def test_the_window_shrinks_to_the_prepared_budget(
    tiny_v2_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = make_engine(tiny_v2_model, mode="gundam")
    recipe = replace(eng.inputs_recipe, dtype="bfloat16")
    per_page = recipe.page_bytes()
    assert per_page == 3 * 2 * (1024**2 + 6 * 768**2)  # the global view and six tiles
    assert replace(recipe, mode="small").page_bytes() < per_page
    monkeypatch.setattr(page_inputs, "available_memory", lambda: 400 * per_page)
    assert window_for(recipe, 632, 40) == 100  # a quarter of what is free
    assert window_for(recipe, 60, 40) == 60  # a window that fits stays
    assert window_for(recipe, 632, 120) == 120  # never below the floor (a batch and more)
    monkeypatch.setattr(page_inputs, "available_memory", lambda: None)
    assert window_for(recipe, 10**6, 1) == page_inputs.PREPARED_BUDGET // per_page
    # --devices: the budget is per replica the workers prepare for.
    assert window_for(recipe, 10**6, 1, replicas=8) == 8 * page_inputs.PREPARED_BUDGET // per_page
    # The workers leave the inputs in the run's temporary folder: half its free space.
    import shutil
    from types import SimpleNamespace

    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=100 * per_page))
    assert window_for(recipe, 632, 10, "/tmp") == 50


def test_a_page_copy_carries_its_prepared_handle(tiny_v2_model: Path, tmp_path: Path) -> None:
    """The handle is small and picklable: it travels from the worker with the page."""
    import pickle

    eng = make_engine(tiny_v2_model, mode="small")
    p = page(0)
    prepare_in_worker(p, eng.inputs_recipe, str(tmp_path))
    back = pickle.loads(pickle.dumps(copy.copy(p)))
    assert back.prepared == p.prepared and len(pickle.dumps(p.prepared)) < 2000


def test_a_worker_that_cannot_write_leaves_no_partial_file(
    tiny_v2_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    eng = make_engine(tiny_v2_model, mode="small")

    def full_disk(obj, path):
        Path(path).write_bytes(b"half a tensor file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    p = page(0)
    prepare_in_worker(p, eng.inputs_recipe, str(tmp_path))
    assert p.prepared is None and not list(tmp_path.iterdir())
