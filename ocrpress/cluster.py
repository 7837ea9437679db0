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

This module is the driver; the stages it chains live beside it: :mod:`.cluster_render`
(documents to page rows, pages to images), :mod:`.cluster_ocr` (the engine actors) and
:mod:`.cluster_shards` (the per-page shards and document finishing they share).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from . import inputs
from .cluster_ocr import USAGE_FIELDS, OcrActor, actor_compute
from .cluster_render import expand_document, render_page
from .cluster_shards import Job, finish_document
from .devices import make_planner
from .document import DocumentResult, PageResult
from .engines import EngineOptions, Usage
from .inputs import InputDoc, InputError
from .journal import fingerprint, is_current
from .lock import locked_output
from .pipeline import RUN_STATS_FILE, ConvertOptions, EngineLoadError
from .stats import RunStats
from .writers import atomic_write

log = logging.getLogger("ocrpress")

#: Engines that never use a GPU: their actors ask Ray for CPUs instead.
CPU_ENGINES = ("rapid",)

#: Rows per Ray batch when neither --batch-size nor the planner says: enough for the largest
#: automatic DeepSeek batch (``MAX_AUTO_BATCH``); each actor then runs its own engine's batch
#: size, which it learns only once the model is on its GPU.
RAY_AUTO_ROWS = 128


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


def ray_job(opts: ConvertOptions, engine: EngineOptions) -> dict[str, Any]:
    """What every stage of the run needs, as the plain dict that travels to the workers."""
    keep = {k: v for k, v in asdict(opts).items() if k not in ("engine", "output", "progress")}
    output = os.path.abspath(opts.output)  # type: ignore[arg-type]
    return asdict(Job(opts=keep | {"output": output}, engine=asdict(engine)))


def document_row(doc: InputDoc, order: int, fp: dict[str, Any]) -> dict[str, Any]:
    """A document's dataset row: where it is, its place in the run, its fingerprint."""
    path = os.path.abspath(doc.path)
    return asdict(doc) | {"path": path, "order": order, "fp": json.dumps(fp)}


def usage_of(row: dict[str, Any]) -> Usage:
    """The device use a Ray result row carries (its numbers as Python's: they go to JSON)."""
    return Usage(**{k: type(getattr(Usage, k))(row[k]) for k in USAGE_FIELDS})


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
        job = ray_job(opts, resolved)
        run_opts = Job(**job).convert_options()

        rows, skipped = [], set()
        for i, doc in enumerate(docs):
            try:
                fp = fingerprint(doc, planner, opts)
            except OSError:
                fp = {}  # unreadable: the expand stage reports it as the document's error
            if fp and not opts.overwrite and is_current(run_opts, doc, fp):
                skipped.add(i)
                continue
            rows.append(document_row(doc, i, fp))
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
                    self.stats.add_usage(usage_of(r))
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
        ds = ds.flat_map(expand_document, fn_kwargs={"job": job}, num_cpus=0.5)
        ds = ds.map(render_page, fn_kwargs={"job": job}, num_cpus=0.5)
        # A GPU actor's CPU share is a scheduling hint only: a small one leaves CPUs to the
        # render tasks (asking for a whole CPU per GPU deadlocks a 2-CPU, 2-GPU node).
        res = {"num_gpus": 1, "num_cpus": 0.25} if use_gpu else {"num_cpus": 1}
        pool, actor_options = actor_compute(ray, size)
        return ds.map_batches(
            OcrActor,
            fn_constructor_kwargs={"job": job},
            compute=pool,
            batch_size=batch,
            batch_format="pandas",
            **res,
            **actor_options,
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
