"""Ray Data runner: the same conversion on a Ray cluster (``--ray auto|ADDRESS``).

documents -> pages (CPU tasks: count, render) -> OCR in an actor pool (one GPU per actor when
the cluster has GPUs; CPU engines take CPUs) -> results. Workers write to storage every node
shares (``-o DIR`` must be such a folder, and so must the inputs):

- each finished page goes to ``DIR/.ocrpress/<rel>.pages/<index>.json`` (atomic), so a killed
  job resumes page by page;
- the actor that completes a document's last page writes its outputs and done marker with the
  pipeline's own writers and fingerprints; the driver finishes any document left over
  (two actors finishing one document at once write the same bytes, atomically).

Errors never leave the stages as exceptions: a corrupt document or a failed page becomes an
error row, because Ray's ``max_errored_blocks`` would drop whole blocks silently. Documents whose
outputs are complete and current are skipped before the dataset is built.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from . import inputs
from .backoff import BatchLimit, measured_batch
from .devices import make_planner
from .document import DocumentResult, PageImage, PageResult
from .engines import EngineOptions, Usage, create_engine
from .figures import crop_figures
from .inputs import InputDoc, InputError
from .journal import STATE_DIR, document_error, fingerprint, is_current, write_document
from .lock import locked_output
from .pipeline import RUN_STATS_FILE, ConvertOptions, EngineLoadError
from .routing import TextLayerPage, route
from .stats import RunStats
from .writers import atomic_write

log = logging.getLogger("ocrpress")

#: Engines that never use a GPU: their actors ask Ray for CPUs instead.
CPU_ENGINES = ("rapid",)

#: Rows per Ray batch when neither --batch-size nor the planner says: enough for the largest
#: automatic DeepSeek batch (``MAX_AUTO_BATCH``); each actor then runs its own engine's batch
#: size, which it learns only once the model is on its GPU.
RAY_AUTO_ROWS = 128

USAGE_FIELDS = ("device_seconds", "slot_tokens", "slot_capacity")


def import_ray() -> Any:
    """``ray`` (with Ray Data), or EngineLoadError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise EngineLoadError(
            f"--ray needs Ray Data ({e}); install it with: pip install 'ocrpress[ray]'"
        ) from None
    return ray


def _shard_dir(out_dir: str, rel: str) -> str:
    return os.path.join(out_dir, STATE_DIR, rel + ".pages")


@dataclass
class _Job:
    """What every stage needs; travels to the workers as a plain dict."""

    opts: dict[str, Any]
    engine: dict[str, Any]

    def convert_options(self) -> ConvertOptions:
        return ConvertOptions(**self.opts, engine=EngineOptions(**self.engine))


def _doc(row: dict[str, Any]) -> InputDoc:
    return InputDoc(path=row["path"], display=row["display"], rel=row["rel"], kind=row["kind"])


def _load_shards(out_dir: str, rel: str, fp: dict[str, Any]) -> dict[int, PageResult]:
    """Pages finished by earlier batches (or runs) with the same fingerprint."""
    folder = _shard_dir(out_dir, rel)
    found: dict[int, PageResult] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if not name.endswith(".json"):
            continue  # temp files of writes in progress
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if data.get("fingerprint") == fp:
            res = PageResult.from_dict(data["result"])
            found[res.index] = res
    return found


def finish_document(
    opts: ConvertOptions, doc: InputDoc, wanted: list[int], fp: dict[str, Any]
) -> tuple[bool, str | None, list[PageResult]]:
    """Write ``doc``'s outputs if all its pages are finished: (finished, error, pages)."""
    assert opts.output is not None
    done = _load_shards(opts.output, doc.rel, fp)
    if any(i not in done for i in wanted):
        return False, None, []
    pages = [done[i] for i in wanted]
    error = document_error(pages)
    if error is None:
        write_document(opts, doc, pages, fp)
        if all(p.status != "error" for p in pages):
            # Failed pages keep their shards' company: the next run redoes only those.
            shutil.rmtree(_shard_dir(opts.output, doc.rel), ignore_errors=True)
    return True, error, pages


# ------------------------------------------------------------------ stages (run on workers)


def _expand(row: dict[str, Any], job: dict[str, Any]) -> list[dict[str, Any]]:
    """A document -> one row per page still to do (or one error row)."""
    opts = _Job(**job).convert_options()
    base = {k: row[k] for k in ("order", "path", "display", "rel", "kind", "fp")}
    err = {"index": -1, "wanted": "[]", "image": b"", "size": "", "dpi": "null", "notes": "[]"}
    try:
        count = inputs.count_pages(_doc(row))
    except InputError as e:
        return [base | err | {"error": str(e)}]
    except OSError as e:
        return [base | err | {"error": f"cannot read ({e.strerror or e})"}]
    wanted = inputs.select_pages(inputs.parse_page_ranges(opts.pages), count)
    if not wanted:
        return [base | err | {"error": f"--pages {opts.pages} selects none of its {count} pages"}]
    assert opts.output is not None
    done = _load_shards(opts.output, row["rel"], json.loads(row["fp"]))
    todo = [i for i in wanted if i not in done or done[i].status == "error"]
    # Every page already finished (a run killed before the outputs were written): one row
    # with index -1 and no error asks the OCR stage to finish the document.
    rows = [base | err | {"index": i, "error": ""} for i in todo] or [base | err | {"error": ""}]
    for r in rows:
        r["wanted"] = json.dumps(wanted)
    return rows


_RENDERER: inputs.PageRenderer | None = None


def _render(row: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """Render one page into raw RGB bytes (a render failure becomes the row's error).

    A page read from its text layer (``--ocr auto|never``) is stored here, and its row only
    asks the OCR stage to finish the document: it never takes a place in an engine batch.
    """
    global _RENDERER
    if row["index"] < 0 or row["error"]:
        return row
    if _RENDERER is None:
        _RENDERER = inputs.PageRenderer()
    opts = job["opts"]
    try:
        page = route(_RENDERER, _doc(row), row["index"], opts["dpi"], opts.get("ocr", "auto"))
        if isinstance(page, TextLayerPage):
            if page.image is not None:
                crop_figures(page.result, page.image, opts["output"], row["rel"])
            _store_shard(opts["output"], row, page.result)
            return row | {"index": -1}
        image = page.image if page.image.mode == "RGB" else page.image.convert("RGB")
    except Exception as e:  # one page must never fail the task (and its block)
        return row | {"error": f"cannot render ({e})"}
    return row | {
        "notes": json.dumps(page.notes),
        "image": image.tobytes(),
        "size": f"{image.width}x{image.height}",
        "dpi": json.dumps(page.dpi),  # JSON keeps int vs float vs None exactly as rendered
    }


def ray_batch_rows(opts: ConvertOptions, planner: Any) -> int:
    """Rows Ray hands an actor at once: the engine's own batch size when the driver's planner
    is the engine (rapid, plugins; it honours --batch-size), else (DeepSeek, whose actors size
    their batches from their own GPU) :data:`RAY_AUTO_ROWS` or --batch-size decode slots'
    worth of pages to refill from, whichever is more. An actor splits what it gets into its
    engine's batches either way."""
    size = getattr(planner, "max_batch_size", None)
    if isinstance(size, int) and size > 0:
        return size
    from .engines.deepseek_spec import REFILL_DEPTH

    return max(RAY_AUTO_ROWS, (opts.engine.batch_size or 0) * REFILL_DEPTH)


class OcrActor:
    """One engine replica; Ray gives it its own GPU (CUDA_VISIBLE_DEVICES) when it asks."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.opts = _Job(**job).convert_options()
        self.engine = create_engine(self.opts.engine)
        self.limit = BatchLimit()  # lowered after a CUDA out-of-memory error in this replica
        self.usage = Usage()  # device use since the last batch of rows went back

    def __call__(self, batch: Any) -> Any:
        import pandas as pd
        from PIL import Image

        rows = batch.to_dict("records")
        out: list[dict[str, Any]] = []
        pages: list[tuple[dict[str, Any], PageImage]] = []
        for row in rows:
            if row["index"] < 0:
                out.append(self._finish(row, row["error"] or None))
                continue
            if row["error"]:
                self._store(row, _failed(row, row["error"], self.engine))
                continue
            w, h = (int(v) for v in row["size"].split("x"))
            image = Image.frombytes("RGB", (w, h), row["image"])
            dpi = json.loads(row["dpi"])
            page = PageImage(row["display"], row["index"], image, dpi, doc_key=str(row["order"]))
            page.notes = json.loads(row["notes"])
            pages.append((row, page))
        # Equal batch keys run together (prompt lengths match: no padding).
        groups: dict[Any, list[tuple[dict[str, Any], PageImage]]] = {}
        for item in pages:
            groups.setdefault(self.engine.plan(item[1]).batch_key, []).append(item)
        for group in groups.values():
            k = 0
            while k < len(group):
                chunk = group[k : k + self.limit.cap(self.engine.max_batch_size)]
                k += len(chunk)
                forced: list[int] = []
                results, usage = measured_batch(
                    self.engine, [p for _, p in chunk], self.opts.retry_truncated, forced.append
                )
                self.usage.device_seconds += usage.device_seconds
                self.usage.slot_tokens += usage.slot_tokens
                self.usage.slot_capacity += usage.slot_capacity
                if forced:
                    self.limit.lower(min(forced))
                else:
                    self.limit.succeeded(self.engine.max_batch_size)
                for (row, page), res in zip(chunk, results, strict=True):
                    res.notes[:0] = page.notes  # why a page with a text layer was OCR'd
                    crop_figures(res, page, self.opts.output or "", row["rel"])
                    self._store(row, res)
        touched = {r["order"]: r for r in rows if r["index"] >= 0}
        for row in touched.values():
            out.append(self._finish(row, None))
        for i, r in enumerate(out):  # this call's device use rides on its first row
            r |= asdict(self.usage) if i == 0 else asdict(Usage())
        if out:
            self.usage = Usage()
        return pd.DataFrame(out, columns=["order", "finished", "error", "pages", *USAGE_FIELDS])

    def _store(self, row: dict[str, Any], res: PageResult) -> None:
        assert self.opts.output is not None
        _store_shard(self.opts.output, row, res)

    def _finish(self, row: dict[str, Any], error: str | None) -> dict[str, Any]:
        """The document's row: finished or not, its error, its pages (JSON) when finished."""
        pages: list[PageResult] = []
        finished = True
        if error is None:
            try:
                wanted = json.loads(row["wanted"])
                fp = json.loads(row["fp"])
                finished, error, pages = finish_document(self.opts, _doc(row), wanted, fp)
            except Exception as e:  # a write failure is this document's error, not the job's
                error = f"cannot write outputs ({type(e).__name__}: {e})"
        return {
            "order": row["order"],
            "finished": finished,
            "error": error or "",
            "pages": json.dumps([p.to_dict(keep_raw=True) for p in pages]),
        }


def _store_shard(out_dir: str, row: dict[str, Any], res: PageResult) -> None:
    """Save a finished page for its document (atomic: a killed job resumes page by page)."""
    path = os.path.join(_shard_dir(out_dir, row["rel"]), f"{res.index}.json")
    data = {"fingerprint": json.loads(row["fp"]), "result": res.to_dict(keep_raw=True)}
    atomic_write(path, json.dumps(data))


def _failed(row: dict[str, Any], reason: str, engine: Any) -> PageResult:
    return PageResult.unrendered(row["display"], row["index"], engine.name, engine.model, reason)


# ------------------------------------------------------------------ driver


@dataclass
class RayConverter:
    """Runs one conversion on Ray; ``run`` mirrors :meth:`ocrpress.pipeline.Converter.run`."""

    opts: ConvertOptions
    address: str = "auto"
    actors: int | None = None  # None: one per GPU, else half the CPUs
    stats: RunStats = field(default_factory=RunStats)

    def run(self, docs: list[InputDoc]) -> list[DocumentResult]:
        if self.opts.output in (None, "-"):
            raise EngineLoadError("--ray writes from the workers: give -o DIR on shared storage")
        if self.address.startswith("ray://"):
            raise EngineLoadError(
                "ray:// (Ray Client) cannot drive Ray Data: run on the head node with "
                "RAY_ADDRESS=auto, or submit: ray job submit -- ocrpress convert ... --ray auto"
            )
        ray = import_ray()
        with locked_output(self.opts.output, wait=self.opts.wait):  # type: ignore[arg-type]
            return self._run(ray, docs)

    def _run(self, ray: Any, docs: list[InputDoc]) -> list[DocumentResult]:
        self.stats.start()
        try:
            planner, resolved = make_planner(self.opts.engine)
        except Exception as e:
            raise EngineLoadError(str(e)) from e
        self.stats.engine, self.stats.model, self.stats.mode = (
            planner.name,
            planner.model,
            planner.mode,
        )
        opts = self.opts
        out_dir = os.path.abspath(opts.output)  # type: ignore[arg-type]
        job_opts = {
            k: v for k, v in asdict(opts).items() if k not in ("engine", "output", "progress")
        }
        job = asdict(_Job(opts=job_opts | {"output": out_dir}, engine=asdict(resolved)))
        run_opts = _Job(**job).convert_options()

        rows, skipped = [], set()
        for i, doc in enumerate(docs):
            try:
                fp = fingerprint(doc, planner, opts)
            except OSError:
                fp = {}  # unreadable: the expand stage reports it as the document's error
            if fp and not opts.overwrite and is_current(run_opts, doc, fp):
                skipped.add(i)
                continue
            path = os.path.abspath(doc.path)
            rows.append(asdict(doc) | {"path": path, "order": i, "fp": json.dumps(fp)})
        self.stats.skipped_documents = len(skipped)
        done: dict[int, tuple[str | None, list[PageResult]]] = {}
        if rows:
            started_here = not ray.is_initialized()
            if started_here:
                try:
                    ray.init(address=self.address, log_to_driver=False)
                except ConnectionError as e:
                    # No cluster at that address: one line and exit 3, not a traceback.
                    raise EngineLoadError(f"--ray {self.address}: {e}") from None
            try:
                ds = self._dataset(ray, rows, job, resolved.engine, ray_batch_rows(opts, planner))
                for r in ds.iter_rows():
                    self.stats.add_usage(Usage(*(r[k] for k in USAGE_FIELDS)))
                    if r["finished"]:
                        pages = [PageResult.from_dict(p) for p in json.loads(r["pages"])]
                        done[int(r["order"])] = (r["error"] or None, pages)
            finally:
                if started_here:
                    ray.shutdown()
        results = []
        for row in rows:
            i = row["order"]
            if i not in done:
                # No actor saw the document complete (two finished its last pages at once).
                done[i] = self._finish_here(run_opts, docs[i], json.loads(row["fp"]))
        for i, doc in enumerate(docs):
            results.append(self._result(run_opts, doc, i in skipped, *done.get(i, (None, []))))
        self.stats.stop()
        atomic_write(
            os.path.join(out_dir, RUN_STATS_FILE), json.dumps(self.stats.to_dict(), indent=2) + "\n"
        )
        return results

    def _dataset(
        self, ray: Any, rows: list[dict[str, Any]], job: dict[str, Any], name: str, batch: int
    ) -> Any:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        use_gpu = gpus > 0 and name not in CPU_ENGINES
        size = self.actors or (gpus if use_gpu else max(1, cpus // 2))
        self.stats.engine_replicas = size
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = self.opts.progress
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * size)))
        # Rendering asks for less CPU than an OCR actor, so Ray keeps the stages apart instead
        # of fusing rendering into the actors (where it would starve them).
        ds = ds.flat_map(_expand, fn_kwargs={"job": job}, num_cpus=0.5)
        ds = ds.map(_render, fn_kwargs={"job": job}, num_cpus=0.5)
        # A GPU actor's CPU share is a scheduling hint only: a small one leaves CPUs to the
        # render tasks (asking for a whole CPU per GPU deadlocks a 2-CPU, 2-GPU node).
        res = {"num_gpus": 1, "num_cpus": 0.25} if use_gpu else {"num_cpus": 1}
        return ds.map_batches(
            OcrActor,
            fn_constructor_kwargs={"job": job},
            compute=ray.data.ActorPoolStrategy(size=size),
            batch_size=batch,
            batch_format="pandas",
            **res,
        )

    def _finish_here(
        self, opts: ConvertOptions, doc: InputDoc, fp: dict[str, Any]
    ) -> tuple[str | None, list[PageResult]]:
        try:
            count = inputs.count_pages(doc)
        except (InputError, OSError) as e:
            return str(e), []
        wanted = inputs.select_pages(inputs.parse_page_ranges(opts.pages), count)
        finished, error, pages = finish_document(opts, doc, wanted, fp)
        if not finished:
            return "some pages were not converted (a worker was lost?); run again to resume", []
        return error, pages

    def _result(
        self,
        opts: ConvertOptions,
        doc: InputDoc,
        skipped: bool,
        error: str | None,
        pages: list[PageResult],
    ) -> DocumentResult:
        if skipped:
            return DocumentResult(source=doc.display, pages=[], rel=doc.rel, skipped=True)
        if error is not None:
            log.error("%s: %s", doc.display, error)
            self.stats.failed_documents += 1
            pages = []
        else:
            self.stats.add_pages(pages)
            for p in pages:
                if p.status == "error":
                    log.error("%s: page %d: %s", doc.display, p.index + 1, p.error)
        return DocumentResult(
            source=doc.display,
            pages=pages if opts.keep_results else [],
            error=error,
            rel=doc.rel,
        )
