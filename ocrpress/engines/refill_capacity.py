"""How many pages the refill decoder (:mod:`.refill`) runs and admits: its slots, within the
cache's budget of positions, with headroom left for the running rows to grow."""

from __future__ import annotations

from .refill_rows import CacheBudget


class Capacity:
    """Rows the decoder may run, admit, and make a cache buffer for, at a window width."""

    def __init__(self, slots: int, cache_positions: int | None) -> None:
        self.resize(slots, cache_positions)

    def resize(self, slots: int, cache_positions: int | None) -> None:
        """New slots and budget: they apply from the next admission or buffer on."""
        self.slots = max(1, slots)
        # Pages join in groups of at least a quarter of the slots: see refill's docstring.
        self.refill_group = max(1, self.slots // 4)
        # Positions the cache may hold (None: no bound): rows beyond it wait in host memory.
        self.budget = CacheBudget(cache_positions)

    def fit(self, width: int, admitting: bool = False) -> int:
        """Rows the cache may run at ``width`` columns: the slots, or fewer within the budget
        (``admitting``: with headroom for growth)."""
        fit = self.budget.rows_for(width, admitting)
        return self.slots if fit is None else max(1, min(self.slots, fit))

    def room(self, running: int, width: int) -> int:
        """Rows that may join ``running`` rows at a window of ``width`` columns: free slots
        within the budget (with headroom for growth); at least one if none runs."""
        return max(self.fit(width, admitting=True) - running, 0 if running else 1)

    def group(self, width: int) -> int:
        """Free rows worth a prefill call: a quarter of the rows the cache can run."""
        return max(1, min(self.refill_group, self.fit(width, admitting=True) // 4))

    def buffer_rows(self, width: int) -> int:
        """Rows a new cache buffer makes room for: the slots, or fewer within the budget."""
        return self.fit(width)
