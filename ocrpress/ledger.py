"""Per-document bookkeeping of a run: which pages are wanted, done, journaled and written.

The batcher hands every page result to :meth:`Ledger.record`; the ledger journals it, and
when a document's last page is in, harmonises its headings, writes its outputs atomically
(or streams it to stdout in input order) and counts it in the run's stats. A failure while
recording or writing is that document's error only (the isolation rule); a broken output
folder (:class:`OutputError`) stops the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from . import inputs, journal
from .document import DocumentResult, PageImage, PageResult
from .errors import OutputError
from .figures import crop_figures
from .headings import harmonise as harmonise_headings
from .inputs import InputDoc, InputError
from .isolation import close_quietly, failure, output_guard
from .journal import document_error, output_paths, write_document
from .options import ConvertOptions
from .stats import RunStats
from .writers import atomic_write, render_page_stream

log = logging.getLogger("ocrpress")


@dataclass
class DocState:
    """One input document's progress through the run."""

    doc: InputDoc
    order: int
    fingerprint: dict[str, Any] = field(default_factory=dict)
    wanted: list[int] = field(default_factory=list)
    results: dict[int, PageResult] = field(default_factory=dict)
    error: str | None = None
    skipped: bool = False
    resumed_pages: int = 0
    journal: IO[str] | None = None
    finished: bool = False
    uncommitted: bool = False  # opened while the ledger holds: its journal not yet rewritten

    @property
    def complete(self) -> bool:
        return self.error is not None or self.skipped or len(self.results) == len(self.wanted)


class Ledger:
    """The documents of one run, from opening (and resuming) to their written outputs."""

    def __init__(
        self,
        docs: list[InputDoc],
        opts: ConvertOptions,
        stats: RunStats,
        fingerprint_of: Callable[[InputDoc], dict[str, Any]],
        on_error: Callable[[str], None],
        stdout: IO[str],
    ) -> None:
        self.states = [DocState(doc=d, order=i) for i, d in enumerate(docs)]
        self.opts = opts
        self.stats = stats
        self.fingerprint_of = fingerprint_of  # may load the engine: called only when writing
        self.on_error = on_error
        self.stdout = stdout
        self.page_ranges = inputs.parse_page_ranges(opts.pages)
        self.to_dir = opts.output not in (None, "-")
        self.out_dir = opts.output if self.to_dir else None  # the folder written to, if any
        self.progress = _progress_bar(opts.progress)
        self._emit_next = 0
        self._held: dict[int, DocState] | None = None  # see hold()

    def close(self) -> None:
        """End of the run (or its interruption): the progress bar and open journals go."""
        self.progress.close()
        for st in self.states:
            if st.journal is not None:
                close_quietly(st.journal)
                st.journal = None

    def hold(self) -> None:
        """Until :meth:`release`, open documents without changing anything: no journal
        rewritten, no done marker removed, no document finished or its error reported.

        Pages render while the model loads (:mod:`ocrpress.early_start`); a load that fails
        or is interrupted must leave the previous run's resume state as it found it.
        """
        self._held = {}

    def release(self) -> None:
        """The model loaded: do, in order, what the documents opened since :meth:`hold`
        put off."""
        held, self._held = self._held or {}, None
        for st in held.values():
            if st.uncommitted:
                st.uncommitted = False
                self._guarded(st, self._commit)
            if st.complete:
                self.finish(st)

    def results(self) -> list[DocumentResult]:
        return [self._document_result(s) for s in self.states]

    # -------------------------------------------------------------- opening

    def page_tasks(self) -> Iterator[tuple[DocState, int]]:
        """Open documents lazily, in order, and yield the pages still to do."""
        for st in self.states:
            self._guarded(st, self._open)
            if st.complete:
                if self._held is not None:
                    self._held[st.order] = st
                else:
                    self.finish(st)
                continue
            for idx in st.wanted:
                if st.finished:
                    break  # failed while its pages were in flight
                if idx not in st.results:
                    yield st, idx

    def _guarded(self, st: DocState, step: Callable[[DocState], None]) -> None:
        """Open a document or its journal; any failure is this document's error."""
        try:
            step(st)
        except OutputError:
            raise
        except Exception as e:
            st.error = failure(e, "cannot read")
            if st.journal is not None:
                close_quietly(st.journal)
                st.journal = None

    def _open(self, st: DocState) -> None:
        doc = st.doc
        try:
            count = inputs.count_pages(doc)
        except InputError as e:
            st.error = str(e)
            return
        st.wanted = inputs.select_pages(self.page_ranges, count)
        if not st.wanted:
            # Not a failure: a range like 2- over a folder of one-page images selects nothing
            # from them by design.
            log.info(
                "%s: --pages %s selects none of its %d pages", doc.display, self.opts.pages, count
            )
            st.skipped = True
            self.stats.unselected_documents += 1
            return
        if not self.to_dir:
            self._progress_total(len(st.wanted))
            return
        assert self.opts.output is not None
        st.fingerprint = self.fingerprint_of(doc)
        journal_path, done_path = journal.state_paths(self.opts.output, doc.rel)
        outputs = output_paths(self.opts.output, doc.rel, self.opts.formats)
        if not self.opts.overwrite and journal.done_matches(done_path, st.fingerprint, outputs):
            st.skipped = True
            self.stats.skipped_documents += 1
            self.stats.skipped_pages += len(st.wanted)
            return
        self._progress_total(len(st.wanted))
        if not self.opts.overwrite:
            for res in journal.read_journal(journal_path, st.fingerprint):
                if res.index in st.wanted and res.status != "error":
                    st.results[res.index] = res
            st.resumed_pages = len(st.results)
            self.stats.resumed_pages += st.resumed_pages
            self.progress.update(st.resumed_pages)
        if self._held is not None:
            st.uncommitted = True
            self._held[st.order] = st
            return
        self._commit(st)

    def _commit(self, st: DocState) -> None:
        """Start a document's journal afresh, from the pages it kept."""
        assert self.opts.output is not None
        journal_path, done_path = journal.state_paths(self.opts.output, st.doc.rel)
        with output_guard(self.out_dir):
            os.makedirs(os.path.dirname(journal_path), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(done_path)
            # Rewrite the journal from what we kept: it drops a torn last line and stale pages.
            atomic_write(
                journal_path,
                "".join(
                    [json.dumps({"fingerprint": st.fingerprint}) + "\n"]
                    + [json.dumps(r.to_dict(keep_raw=True)) + "\n" for r in st.results.values()]
                ),
            )
            st.journal = open(journal_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish

    def _progress_total(self, n: int) -> None:
        self.progress.total = (self.progress.total or 0) + n
        self.progress.refresh()

    # -------------------------------------------------------------- results

    def record(self, st: DocState, res: PageResult, page: PageImage | None) -> None:
        """Keep one page's result (``page``: its image, for figure crops and notes)."""
        if st.finished:
            return  # the document already failed; pages still in flight are dropped
        try:
            with output_guard(self.out_dir):
                self._keep(st, res, page)
        except OutputError:
            raise
        except Exception as e:
            st.error = failure(e, "cannot write")
            self.finish(st)

    def _keep(self, st: DocState, res: PageResult, page: PageImage | None) -> None:
        if page is not None and page.notes:
            res.notes[:0] = page.notes  # e.g. why a page with a text layer went to the engine
        if self.to_dir and page is not None:
            assert self.opts.output is not None
            crop_figures(res, page, self.opts.output, st.doc.rel)
        if res.status == "error":
            # A one-page document (an image) failing is the document failing: no "page 1".
            where = "" if len(st.wanted) == 1 else f"page {res.index + 1}: "
            self.on_error(f"{st.doc.display}: {where}{res.error}")
        st.results[res.index] = res
        if st.journal is not None and res.status != "error":
            st.journal.write(json.dumps(res.to_dict(keep_raw=True)) + "\n")
            st.journal.flush()  # survives kill -9; fsync also survives a power cut
            if res.text_source != "text-layer":  # ...which a text-layer page (~10 ms) need not
                os.fsync(st.journal.fileno())
        self.progress.update(1)
        if st.complete:
            self.finish(st)

    def finish(self, st: DocState) -> None:
        """A document is complete (or failed): write it, count it, stream what is ready."""
        if st.finished:
            return
        st.finished = True
        if st.journal is not None:
            close_quietly(st.journal)
            st.journal = None
        pages = [st.results[i] for i in st.wanted if i in st.results]
        harmonise_headings(pages)
        if st.error is None:
            st.error = document_error(pages)
        if st.error is not None:
            if not (pages and all(p.status == "error" for p in pages)):
                self.on_error(f"{st.doc.display}: {st.error}")
            self.stats.failed_documents += 1
        elif not st.skipped:
            if self.to_dir and not self._write_outputs(st, pages):
                self.stats.failed_documents += 1
            else:
                self.stats.add_pages(pages, resumed=st.resumed_pages)
        if st.error is not None:
            self.stats.failed.append(st.doc.display)
        self.emit_ready()

    def _write_outputs(self, st: DocState, pages: list[PageResult]) -> bool:
        """Write a finished document; False (and its one-line error) if that fails."""
        assert self.opts.output is not None
        try:
            with output_guard(self.out_dir):
                write_document(self.opts, st.doc, pages, st.fingerprint)
        except OutputError:
            raise
        except Exception as e:
            st.error = failure(e, "cannot write")
            self.on_error(f"{st.doc.display}: {st.error}")
            return False
        return True

    def emit_ready(self) -> None:
        """Stream finished documents to stdout in input order (only with ``-o -``)."""
        if self.opts.output != "-":
            return
        fmt = self.opts.formats[0]
        while self._emit_next < len(self.states) and self.states[self._emit_next].finished:
            st = self.states[self._emit_next]
            if st.error is None:
                for i in st.wanted:
                    self.stdout.write(render_page_stream(st.results[i], fmt, self.opts.keep_raw))
                self.stdout.flush()
            self._emit_next += 1

    def _document_result(self, st: DocState) -> DocumentResult:
        pages = [st.results[i] for i in st.wanted if i in st.results]
        return DocumentResult(
            source=st.doc.display,
            pages=pages if self.opts.keep_results else [],
            error=st.error,
            rel=st.doc.rel,
            skipped=st.skipped,
        )


def _progress_bar(enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=0,
        unit="page",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )
