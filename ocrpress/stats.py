"""Run statistics: pages, failures, throughput and optical compression."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .document import PageResult
from .engines import Usage

_SOURCE_ORDER = ("text-layer", "hybrid", "ocr")
_SOURCE_LABEL = {"text-layer": "from the text layer", "hybrid": "hybrid", "ocr": "OCR"}


@dataclass
class RunStats:
    """Counters for one run; ``to_dict`` is what ``_ocrpress_run.json`` holds."""

    engine: str | None = None
    model: str | None = None
    mode: str | None = None
    documents: int = 0
    failed_documents: int = 0
    skipped_documents: int = 0
    pages: int = 0  # pages converted in this run (resumed pages excluded)
    resumed_pages: int = 0  # taken from a journal of an interrupted run
    skipped_pages: int = 0  # in documents that were already complete
    failed_pages: int = 0
    unselected_documents: int = 0  # --pages selected none of their pages (not a failure)
    failed: list[str] = field(default_factory=list)  # documents that failed, as named
    truncated: list[str] = field(default_factory=list)  # "file: page N"
    empty_pages: int = 0
    vision_tokens: int = 0
    text_tokens: int = 0
    token_pages: int = 0  # pages that reported token counts
    # Pages of converted documents by where their text came from ("text-layer", "ocr", ...).
    text_sources: dict[str, int] = field(default_factory=dict)
    # --mode auto: pages per mode read in, vision tokens spent (escalations included) and
    # what reading every one of those pages in gundam would have cost.
    auto_modes: dict[str, int] = field(default_factory=dict)
    auto_vision_tokens: int = 0
    auto_vision_tokens_gundam: int = 0
    started: float = 0.0
    wall_seconds: float = 0.0
    # Device use: engine step time over wall time (x replicas); decode slots filled (VLMs).
    engine_seconds: float = 0.0
    engine_replicas: int = 1
    engine_ready: float = 0.0  # perf_counter when the engine(s) had loaded; 0: at start
    serving_seconds: float = 0.0  # wall time from then on
    slot_tokens: int = 0
    slot_capacity: int = 0
    prepared_ahead: int = 0  # pages whose model inputs the render workers made
    parked: int = 0  # pages moved to host memory mid-decode (the cache's memory ran short)

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self) -> None:
        now = time.perf_counter()
        self.wall_seconds = now - self.started
        self.serving_seconds = now - (self.engine_ready or self.started)

    def add_pages(self, pages: list[PageResult], resumed: int = 0) -> None:
        """Count a finished document's pages (the first ``resumed`` came from a journal)."""
        self.documents += 1
        for p in pages:
            if p.status == "error":
                self.failed_pages += 1
            elif p.status == "truncated":
                self.truncated.append(f"{p.source}: page {p.index + 1}")
            elif p.status == "empty":
                self.empty_pages += 1
            if p.status != "error":
                self.text_sources[p.text_source] = self.text_sources.get(p.text_source, 0) + 1
            if p.mode_estimate is not None and p.status != "error":
                self._add_auto(p, p.mode_estimate)
            if p.vision_tokens is not None and p.text_tokens is not None:
                self.vision_tokens += p.vision_tokens
                self.text_tokens += p.text_tokens
                self.token_pages += 1
        self.pages += len(pages) - resumed

    def _add_auto(self, p: PageResult, est: dict[str, Any]) -> None:
        label = p.mode or f"fallback {p.engine}"  # a page the fallback engine read
        self.auto_modes[label] = self.auto_modes.get(label, 0) + 1
        self.auto_vision_tokens += int(est.get("vision_tokens_spent", p.vision_tokens or 0))
        self.auto_vision_tokens_gundam += int(est.get("vision_tokens_gundam", 0))

    def auto_dict(self) -> dict[str, Any] | None:
        """The ``auto`` section of the run stats (None when no page was read in mode auto)."""
        if not self.auto_modes:
            return None
        gundam = self.auto_vision_tokens_gundam
        saving = 100 * (1 - self.auto_vision_tokens / gundam) if gundam else None
        return {
            "pages_by_mode": dict(sorted(self.auto_modes.items())),
            "vision_tokens": self.auto_vision_tokens,
            "vision_tokens_gundam": gundam,
            "saving_percent": round(saving, 1) if saving is not None else None,
        }

    def add_usage(self, u: Usage) -> None:
        """Count one batch's device time and decode-slot counters."""
        self.engine_seconds += u.device_seconds
        self.slot_tokens += u.slot_tokens
        self.slot_capacity += u.slot_capacity
        self.prepared_ahead += u.prepared_ahead
        self.parked += u.parked

    @property
    def engine_busy_fraction(self) -> float | None:
        # Model loading is not the engine waiting for pages: count from when it was ready.
        span = (self.serving_seconds or self.wall_seconds) * max(1, self.engine_replicas)
        return round(min(1.0, self.engine_seconds / span), 3) if span > 0 else None

    @property
    def decode_slot_utilisation(self) -> float | None:
        cap = self.slot_capacity
        return round(self.slot_tokens / cap, 3) if cap else None

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.text_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        tp = self.token_pages
        return {
            "engine": self.engine,
            "model": self.model,
            "mode": self.mode,
            "documents": self.documents
            + self.failed_documents
            + self.skipped_documents
            + self.unselected_documents,
            "documents_converted": self.documents,
            "documents_failed": self.failed_documents,
            "documents_skipped": self.skipped_documents,
            "documents_unselected": self.unselected_documents,
            "failed": list(self.failed),
            "pages": self.pages,
            "pages_resumed": self.resumed_pages,
            "pages_skipped": self.skipped_pages,
            "pages_failed": self.failed_pages,
            "pages_empty": self.empty_pages,
            "pages_truncated": len(self.truncated),
            "pages_by_text_source": dict(sorted(self.text_sources.items())),
            "truncated": list(self.truncated),
            "wall_seconds": round(self.wall_seconds, 3),
            "pages_per_second": round(self.pages_per_second, 3),
            "text_tokens_per_second": round(self.tokens_per_second, 1) if tp else None,
            "vision_tokens_per_page": round(self.vision_tokens / tp, 1) if tp else None,
            "text_tokens_per_page": round(self.text_tokens / tp, 1) if tp else None,
            "compression": round(self.text_tokens / self.vision_tokens, 3)
            if self.vision_tokens
            else None,
            "engine_busy_fraction": self.engine_busy_fraction,
            "decode_slot_utilisation": self.decode_slot_utilisation,
            # VLM engines: pages whose inputs were prepared by the render workers
            "pages_prepared_by_workers": self.prepared_ahead if self.slot_capacity else None,
            "pages_parked": self.parked if self.slot_capacity else None,
        } | ({"auto": auto} if (auto := self.auto_dict()) else {})

    def summary(self) -> str:
        """One line for stderr at the end of a run."""
        total_docs = (
            self.documents
            + self.failed_documents
            + self.skipped_documents
            + self.unselected_documents
        )
        parts = [f"{total_docs} document{'s' if total_docs != 1 else ''}"]
        parts.append(f"{self.pages} page{'s' if self.pages != 1 else ''}")
        if self.text_sources.keys() - {"ocr"}:
            by = sorted(self.text_sources.items(), key=lambda kv: _SOURCE_ORDER.index(kv[0]))
            parts[-1] += " (" + ", ".join(f"{n} {_SOURCE_LABEL[k]}" for k, n in by) + ")"
        if self.skipped_documents or self.resumed_pages:
            parts.append(
                f"{self.skipped_documents} skipped (done), {self.resumed_pages} pages resumed"
            )
        if self.unselected_documents:
            parts.append(f"{self.unselected_documents} with no page selected")
        parts.append(f"{self.failed_documents} failed" + _names(self.failed))
        if self.failed_pages:
            parts.append(f"{self.failed_pages} failed pages")
        if self.truncated:
            parts.append(f"{len(self.truncated)} truncated")
        line = (
            ", ".join(parts) + f" in {self.wall_seconds:.1f} s ({self.pages_per_second:.2f} pages/s"
        )
        if self.token_pages:
            d = self.to_dict()
            line += (
                f", {d['text_tokens_per_second']} tokens/s; per page"
                f" {d['vision_tokens_per_page']} vision / {d['text_tokens_per_page']} text tokens,"
                f" compression {d['compression']}x"
            )
        auto = self.auto_dict()
        if auto is not None:
            modes = ", ".join(f"{n} {m}" for m, n in auto["pages_by_mode"].items())
            line += f"; mode auto: {modes}"
            if auto["saving_percent"] is not None:
                line += f", {auto['saving_percent']:g}% fewer vision tokens than gundam"
        busy, slots = self.engine_busy_fraction, self.decode_slot_utilisation
        if busy is not None and self.pages:
            line += f"; engine busy {busy:.0%}"
            if slots is not None:
                line += f", decode slots {slots:.0%} used"
        return line + ")"


def _names(failed: list[str], shown: int = 3) -> str:
    """`` (a.pdf, b.png and 3 more)``: which documents failed, without a long line."""
    if not failed:
        return ""
    more = f" and {len(failed) - shown} more" if len(failed) > shown else ""
    return f" ({', '.join(failed[:shown])}{more})"
