"""``--mode auto`` after decoding: re-run a page whose mode was too small, or hand it on.

The render workers choose each page's mode from an estimate of its text (see
:mod:`ocrpress.tiering`); an estimate can be low. A page that comes back truncated (the token
limit or a repetition loop) or with more text tokens than ``max_compression`` x its vision
tokens is read once more in a costlier mode: the cheapest mode whose vision tokens cover what
the page actually produced, at least the next one up, at most gundam. A page that fails in
that mode too is read by the fallback engine (``--fallback rapid``) as a last resort, or kept
as it is (``none``); either way it is never dropped, and its notes and ``mode_estimate`` say
what happened.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .document import PageImage, PageResult
from .engines import EngineOptions
from .modes import DEFAULT_MAX_COMPRESSION, plan_tokens

log = logging.getLogger("ocrpress")

FALLBACKS = ("rapid", "none")


@dataclass(frozen=True)
class AutoSpec:
    """What the render workers need to choose a page's mode (picklable, no torch)."""

    family: str
    max_compression: float = DEFAULT_MAX_COMPRESSION
    min_tiles: int = 2
    max_tiles: int = 6


def auto_spec(planner: Any, opts: EngineOptions) -> AutoSpec | None:
    """The AutoSpec of a ``--mode auto`` run on a planner that knows its model family."""
    family = getattr(planner, "family", None)
    if not opts.auto_mode or family is None:
        return None
    return AutoSpec(family, opts.max_compression, opts.min_tiles, opts.max_tiles)


def choose_page_mode(page: PageImage, renderer: Any, doc: Any, spec: AutoSpec) -> None:
    """In a render worker: estimate ``page``'s text and set its mode and ``mode_estimate``.

    ``renderer`` (an :class:`ocrpress.inputs.PageRenderer`) gives a PDF page's text layer, an
    exact count where it exists. A page whose estimate fails is read in gundam, noted.
    """
    from .tiering import choose_mode, estimate_rendered

    gundam = plan_tokens(
        spec.family, "gundam", page.width, page.height, spec.min_tiles, spec.max_tiles
    )
    try:
        estimate = estimate_rendered(renderer, doc, page.index, page.image, page.dpi)
        choice = choose_mode(
            spec.family,
            page.width,
            page.height,
            estimate,
            spec.max_compression,
            spec.min_tiles,
            spec.max_tiles,
        )
    except Exception as e:  # the page is still read, at the costliest mode
        page.mode = "gundam"
        page.notes.append(f"mode auto: no estimate ({type(e).__name__}: {e}); read in gundam")
        page.mode_estimate = {"mode": "gundam", "vision_tokens_gundam": gundam.vision_tokens}
        return
    page.mode = choice.mode
    page.mode_estimate = choice.to_json() | {"vision_tokens_gundam": gundam.vision_tokens}


def failure_reason(res: PageResult, max_compression: float) -> str | None:
    """Why ``res`` shows its mode was too small, or None if it does not."""
    if res.status == "truncated":
        return "truncated"
    if res.vision_tokens and res.text_tokens is not None:
        ratio = res.text_tokens / res.vision_tokens
        if ratio > max_compression:
            return f"{ratio:.1f} text tokens per vision token > {max_compression:g}"
    return None


def escalation_target(spec: AutoSpec, page: PageImage, res: PageResult) -> str | None:
    """The mode to read ``page`` in again; None when it was already read in the costliest."""
    from .tiering import ladder

    names = list(ladder(spec.family))
    current = res.mode or page.mode or names[-1]
    if current not in names or current == names[-1]:
        return None
    # Truncated output is a lower bound on the page's text; a complete one is its size.
    need = (res.text_tokens or 0) / spec.max_compression
    for name in names[names.index(current) + 1 :]:
        cost = plan_tokens(
            spec.family, name, page.width, page.height, spec.min_tiles, spec.max_tiles
        )
        if cost.vision_tokens >= need:
            return name
    return names[-1]


class Escalator:
    """Decides, page by page, whether a ``--mode auto`` result stands."""

    def __init__(self, spec: AutoSpec, fallback: str = "rapid") -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, not {fallback!r}")
        self.spec = spec
        self.fallback = fallback
        self._fallback_engine: Any = None
        self.escalated = 0  # pages read again in a costlier mode
        self.fell_back = 0  # pages read by the fallback engine

    def review(self, page: PageImage, res: PageResult) -> PageResult | None:
        """The result to keep, or None when ``page`` (its mode raised) must be read again."""
        if res.status == "error" or page.mode_estimate is None:
            return res  # errors have their own handling; a page without an estimate is fixed
        est = page.mode_estimate
        est["vision_tokens_spent"] = est.get("vision_tokens_spent", 0) + (res.vision_tokens or 0)
        reason = failure_reason(res, self.spec.max_compression)
        if reason is None:
            return self._final(page, res)
        tried = est.setdefault("escalations", [])
        target = escalation_target(self.spec, page, res) if not tried else None
        if target is not None:
            tried.append({"from": res.mode, "to": target, "reason": reason})
            page.mode = target
            self.escalated += 1
            return None
        if res.status != "truncated":
            # Complete text at the costliest mode (or after the one re-run): denser than the
            # ratio allows, but nothing suggests the text is wrong.
            res.notes.append(f"mode {res.mode}: {reason}")
            return self._final(page, res)
        return self._final(page, self._fall_back(page, res, reason))

    def _final(self, page: PageImage, res: PageResult) -> PageResult:
        est = page.mode_estimate
        if est is not None:
            steps = [
                f"mode {s['from']} -> {s['to']}: {s['reason']}" for s in est.get("escalations", [])
            ]
            res.notes[:0] = [n for n in steps if n not in res.notes]  # what happened first
            res.mode_estimate = est
        return res

    def _fall_back(self, page: PageImage, res: PageResult, reason: str) -> PageResult:
        if self.fallback == "none":
            res.notes.append(f"mode {res.mode}: {reason}; kept as it is (--fallback none)")
            return res
        engine = self._rapid()
        try:
            [fb] = engine.run([page])
        except Exception as e:  # the VLM's truncated text is better than nothing
            log.warning("%s page %d: fallback engine failed: %s", page.source, page.index + 1, e)
            res.notes.append(f"mode {res.mode}: {reason}; fallback engine failed ({e})")
            return res
        self.fell_back += 1
        fb.notes.append(
            f"read by the {fb.engine} engine: {res.engine} in mode {res.mode}: {reason}"
        )
        return fb

    def _rapid(self) -> Any:
        if self._fallback_engine is None:
            from .engines.rapid import RapidEngine

            self._fallback_engine = RapidEngine(EngineOptions(engine="rapid"))
        return self._fallback_engine
