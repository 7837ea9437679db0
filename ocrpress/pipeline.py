"""The streaming pipeline: render workers -> batcher -> engine -> results -> writers.

Pages are rendered in worker processes (:mod:`ocrpress.render`) while the engine works on the
previous batch; the :class:`~ocrpress.batcher.Batcher` keeps at most ``window`` pages in
flight, so memory is bounded by the window, not by document size. Finished pages go to a
per-document journal (:mod:`ocrpress.ledger`) so a killed run resumes from its last finished
page; a document's outputs appear, atomically, when its last page is done. This module
decides where batches run (the engine here, or one replica per device) and owns the run's
resources: the output folder's lock, the render workers and the device workers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from .backoff import BatchLimit
from .batcher import Batcher
from .devices import DevicePool, Planner, make_planner, resolve_devices
from .document import DocumentResult
from .early_start import BackgroundLoad, Tasks, early_pages, render_early
from .engines import Engine, create_engine, resolve_engine_name
from .engines.page_inputs import InputsRecipe, window_for
from .errors import EngineLoadError, Terminated, describe
from .escalation import Escalator, auto_spec
from .inputs import InputDoc
from .isolation import output_guard
from .journal import fingerprint
from .ledger import Ledger
from .lock import locked_output
from .options import ConvertOptions
from .render import PRELOAD_INPUTS, RenderQueue, default_workers, main_is_importable
from .routing import OCR_MODES
from .runners import InlineRunner, Runner
from .stats import RunStats
from .stream_runner import StreamRunner, Streams
from .writers import atomic_write

__all__ = ["RUN_STATS_FILE", "ConvertOptions", "Converter", "EngineLoadError"]

log = logging.getLogger("ocrpress")

RUN_STATS_FILE = "_ocrpress_run.json"

#: Runners whose engine is in this process (render workers can prepare its inputs).
LOCAL_RUNNERS = (InlineRunner, StreamRunner)

#: Render workers per ``--devices`` replica for them to prepare the replicas' pages: as many
#: as the preparation threads a replica would use itself.
WORKERS_PER_REPLICA = 2


def worker_recipe(engine: Any) -> InputsRecipe | None:
    """The engine's (or the device replicas') inputs recipe if render workers can follow it
    (it names a checkpoint folder to load the processor from), else None."""
    recipe = getattr(engine, "inputs_recipe", None)
    return recipe if recipe is not None and recipe.folder else None


def workers_keep_up(workers: int, replicas: int) -> bool:
    """Whether there are render workers enough (:data:`WORKERS_PER_REPLICA` a replica) to
    prepare the ``--devices`` replicas' pages as fast as they decode them."""
    return workers >= WORKERS_PER_REPLICA * replicas


def workers_prepare_for_replicas(workers: int, replicas: int, window: int, room: int) -> bool:
    """Whether render workers prepare the ``--devices`` replicas' pages: only when they
    :func:`keep up <workers_keep_up>` and the prepared pages of the whole window fit the
    budget (``room``: the pages :func:`window_for` lets be in flight): a smaller window would
    leave the replicas' decode slots empty. Else each replica prepares its own pages, on its
    own threads."""
    return workers_keep_up(workers, replicas) and room >= window


class Converter:
    """Runs one conversion; see :func:`convert` for the simple entry point."""

    def __init__(
        self,
        opts: ConvertOptions,
        engine: Engine | None = None,
        stdout: IO[str] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if opts.ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {', '.join(OCR_MODES)}, not {opts.ocr!r}")
        self.opts = opts
        self._engine = engine
        self.stdout = stdout or sys.stdout
        self.on_error = on_error or (lambda msg: log.error("%s", msg))
        self.stats = RunStats()
        self.to_dir = opts.output not in (None, "-")
        self.limit = BatchLimit()  # lowered after a CUDA out-of-memory error, may grow back
        self._planner: Planner | None = None
        self._loading: BackgroundLoad[Engine] | None = None  # a load on its thread, if any
        self.device_pool: DevicePool | None = None

    # -------------------------------------------------------------- engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            loading = self._loading
            if loading is None:
                self._engine = self._load_engine()
            else:  # started on its thread (early_start): waited for, not repeated
                try:
                    self._engine = loading.result()
                finally:
                    if loading.future.done():  # else interrupted: a later run waits again
                        self._loading = None
        return self._engine

    def _load_engine(self) -> Engine:
        try:
            return create_engine(self.opts.engine)
        except Exception as e:
            raise EngineLoadError(str(e)) from e

    @property
    def planner(self) -> Planner:
        """What plans batches here: the engine, or (with devices) a model-free planner."""
        return self._planner if self._planner is not None else self.engine

    @property
    def batch_limit(self) -> int:
        """Pages per batch an out-of-memory error imposed now; 0 for none."""
        return self.limit.ceiling

    def _fingerprint(self, doc: InputDoc) -> dict[str, Any]:
        return fingerprint(doc, self.planner, self.opts)

    # -------------------------------------------------------------- the run

    def run(self, docs: list[InputDoc]) -> list[DocumentResult]:
        """Convert ``docs``; returns one DocumentResult per document, in input order.

        With an output folder, the run holds its lock (one run per folder, see lock.py).
        """
        self.stats = RunStats()  # this run's, also when the converter ran (or failed) before
        if not self.to_dir:
            return self._run(docs)
        assert self.opts.output is not None
        with locked_output(self.opts.output, wait=self.opts.wait):
            return self._run(docs)

    def _run(self, docs: list[InputDoc]) -> list[DocumentResult]:
        self.stats.start()
        never = self.opts.ocr == "never" and self._engine is None  # no page reaches an engine
        devices = None if never else self._start_devices()
        workers = self.opts.workers
        if workers is None:  # replicas' pages are prepared by the render workers too
            workers = default_workers(devices.replicas if devices is not None else 1)
        if workers and not main_is_importable():
            # Worker processes re-import __main__; from `python -` or `-c` there is no file
            # to import, so render in this process instead of failing.
            workers = 0
        # Workers that will prepare a VLM's inputs import torch once, in their forkserver,
        # while this process loads the model.
        preload = PRELOAD_INPUTS if workers and not never and self._vlm_inputs() else None
        renders: RenderQueue | None = None
        try:
            renders = RenderQueue(workers, self.opts.dpi, ocr=self.opts.ocr, preload=preload)
            ledger = Ledger(
                docs, self.opts, self.stats, self._fingerprint, self.on_error, self.stdout
            )
        except BaseException:
            # Processes already started are not left behind.
            if renders is not None:
                renders.close(wait=False)
            if devices is not None:
                devices.close(wait=False)
            raise
        interrupted = False
        runner: Runner | None = None
        try:
            tasks = None if never else self._render_while_loading(devices, workers, renders, ledger)
            planner, max_batch, runner = self._runner(never, devices)
            # --mode auto: render workers choose each page's mode before the first is sent.
            renders.auto = auto_spec(planner, self.opts.engine)
            escalator = Escalator(renders.auto, self.opts.engine.fallback) if renders.auto else None
            # The engine copies working at once (a stream runner queues a second batch on one).
            self.stats.engine_replicas = getattr(runner, "replicas", runner.capacity)
            self.stats.engine_ready = time.perf_counter()
            window = self.opts.window or (
                max(2 * max_batch, max_batch + 2 * max(workers, 1))
                + (runner.capacity - 1) * max_batch  # one more batch per extra replica
            )
            recipe = worker_recipe(devices if devices is not None else planner)
            if workers and recipe:
                # Render workers prepare the engine's inputs too (engines.page_inputs).
                if devices is None:
                    floor = max_batch + 2 * workers
                    renders.inputs = recipe
                    window = window_for(recipe, window, floor, renders.spool)
                else:
                    n = devices.replicas
                    room = window_for(recipe, window, 0, renders.spool, n)  # what fits
                    prepare = workers_prepare_for_replicas(workers, n, window, room)
                    # (Pages the workers prepared while the replicas loaded keep their files.)
                    renders.inputs = recipe if prepare else None
            else:
                renders.inputs = None  # none workers can follow: drop a guess made before the load
            self.stats.engine, self.stats.model, self.stats.mode = (
                planner.name,
                planner.model,
                planner.mode,
            )
            batcher = Batcher(
                ledger,
                renders,
                planner,
                runner,
                self.limit,
                self.stats,
                self.opts.retry_truncated,
                escalator,
            )
            batcher.run(max_batch, window, self._first_batch(planner, runner), tasks)
            ledger.close()  # the progress bar goes before the last documents stream out
            ledger.emit_ready()
        except (KeyboardInterrupt, Terminated):
            interrupted = True
            raise
        finally:
            ledger.close()  # on every way out: a failed load, an error, an interrupt
            # Interrupted: no waiting for workers (they die with this process); a worker
            # still starting must not find the pool's semaphores already gone.
            try:
                renders.close(wait=not interrupted)
            finally:
                try:
                    if isinstance(runner, StreamRunner):
                        runner.close(wait=not interrupted)
                finally:
                    if devices is not None:
                        devices.close(wait=not interrupted)
        self.stats.stop()
        if self.to_dir:
            assert self.opts.output is not None
            with output_guard(self.opts.output):
                atomic_write(
                    os.path.join(self.opts.output, RUN_STATS_FILE),
                    json.dumps(self.stats.to_dict(), indent=2) + "\n",
                )
        return ledger.results()

    def _vlm_inputs(self) -> bool:
        """Whether this run's engine (loaded or not) will want its inputs made by workers."""
        if self._engine is not None:
            return worker_recipe(self._engine) is not None
        try:
            return resolve_engine_name(self.opts.engine)[0] == "deepseek"
        except Exception:  # the engine's own load reports it
            return False

    def _render_while_loading(
        self, devices: DevicePool | None, workers: int, renders: RenderQueue, ledger: Ledger
    ) -> Tasks | None:
        """Load the VLM (on a thread here, or in the ``--devices`` replicas' processes) while
        the render workers render and prepare the first pages (see :mod:`ocrpress.early_start`);
        returns the page tasks to go on with, or None when nothing was sent (no workers; an
        engine given loaded; not a VLM)."""
        if not workers or not self._vlm_inputs():
            return None
        if devices is None and (self._engine is not None or self._loading is not None):
            return None
        try:
            # Before the load's thread starts: two threads importing torch's and transformers'
            # modules at once can see them half-initialised.
            planner = self._planner if devices is not None else make_planner(self.opts.engine)[0]
            assert planner is not None
            recipe = planner.load_recipe() if hasattr(planner, "load_recipe") else None
            batch = planner.batch_hint() if hasattr(planner, "batch_hint") else None
        except Exception as e:  # the load reports what is wrong
            log.debug("no pages rendered while the model loads: %s", describe(e))
            return None
        loading: BackgroundLoad[Engine] | None = None
        replicas = 1
        if devices is None:
            loading = self._loading = BackgroundLoad(self._load_engine)
            self._planner = planner  # journals' fingerprints without waiting for the model
        else:
            replicas = devices.replicas
            if not workers_keep_up(workers, replicas):
                recipe = None  # each replica prepares its pages (the window fits later)
        ledger.hold()  # a failed load leaves the output folder's resume state as it was
        try:
            renders.auto = auto_spec(planner, self.opts.engine)
            renders.inputs = recipe
            tasks = ledger.page_tasks()
            count = early_pages(recipe, renders.spool, batch, self.opts.window, replicas)
            sent = render_early(tasks, renders, count)
            log.debug("%d pages sent to render while the model loads", sent)
            if devices is None:
                self.engine  # noqa: B018 - waits for the load, raises its error
            else:
                devices.max_batch_size()  # waits for every replica, raises the first's error
        except (KeyboardInterrupt, Terminated):
            raise  # the CLI exits at once; the load's thread is a daemon
        except BaseException:
            if loading is not None:
                loading.wait()  # no thread left inside torch when the error ends the process
                if loading.future.exception() is not None:
                    self._loading = None  # a later run loads afresh rather than re-raise this
            raise
        finally:
            if devices is None:
                self._planner = None
        ledger.release()
        return tasks

    @staticmethod
    def _first_batch(planner: Planner, runner: Runner) -> int | None:
        """The first batch of an engine that decodes in slots (see Batcher.run): its slots
        when its decode takes the next batches' pages as it goes (nothing to lose by starting
        small), else twice its slots, to have pages to refill its slots with."""
        slots = getattr(planner, "slots", None)
        if not slots or not isinstance(runner, LOCAL_RUNNERS):
            return None
        return slots if isinstance(runner, StreamRunner) else 2 * slots

    def _runner(self, never: bool, devices: DevicePool | None) -> tuple[Planner, int, Runner]:
        """What plans batches, the most pages a batch may have, and where batches run."""
        if never:
            return self._plan_only(), 1, InlineRunner(lambda: self.engine)
        if devices is None:
            engine = self.engine  # load the model while the render pool spins up
            max_batch = max(1, engine.max_batch_size)
            if isinstance(engine, Streams) and not self.opts.retry_truncated:
                # One decode across batches on a device thread (the truncation retry is a
                # per-batch step: it keeps the inline runner).
                return engine, max_batch, StreamRunner(engine)
            return engine, max_batch, InlineRunner(lambda: self.engine)
        # The replicas' pages per batch (for DeepSeek, 2x its decode slots when it streams,
        # else 4x).
        return self.planner, devices.max_batch_size(), devices

    def _plan_only(self) -> Planner:
        """Name the run and fingerprint it without loading a model (``--ocr never``)."""
        try:
            self._planner = make_planner(self.opts.engine)[0]
        except Exception as e:
            raise EngineLoadError(str(e)) from e
        return self._planner

    def _start_devices(self) -> DevicePool | None:
        """With ``devices``: plan without the model and start one worker per device."""
        if not self.opts.devices:
            return None
        if self._engine is not None:
            raise ValueError("devices need an engine name, not an engine instance")
        try:
            ids = resolve_devices(self.opts.devices)
            self._planner, resolved = make_planner(self.opts.engine)
        except EngineLoadError:
            raise
        except Exception as e:
            raise EngineLoadError(str(e)) from e
        log.info("devices: %s (one engine replica each)", ",".join(ids))
        self.device_pool = DevicePool(ids, resolved, per_batch=self.opts.retry_truncated)
        return self.device_pool
