"""The refill decoder's sizing (slots within the cache budget) and experts switching, on
their own."""

from __future__ import annotations

from typing import Any

import pytest

from ocrpress.engines.kv_slab import columns_for
from ocrpress.engines.refill_capacity import Capacity
from ocrpress.engines.refill_items import ExpertsPhase
from ocrpress.engines.refill_rows import ADMIT_SHARE


def test_without_a_budget_the_slots_decide() -> None:
    cap = Capacity(16, None)
    assert cap.fit(10_000) == 16
    assert cap.room(running=10, width=5_000) == 6
    assert cap.room(running=16, width=5_000) == 0
    assert cap.group(5_000) == 4  # a quarter of the slots
    assert cap.buffer_rows(5_000) == 16


def test_a_budget_caps_rows_and_leaves_headroom_when_admitting() -> None:
    width = 1_000
    positions = 8 * columns_for(width)  # eight rows' buffers at this width
    cap = Capacity(64, positions)
    assert cap.fit(width) == 8
    admitting = int(positions * ADMIT_SHARE) // columns_for(width)
    assert admitting < 8
    assert cap.fit(width, admitting=True) == admitting
    assert cap.room(running=admitting, width=width) == 0
    assert cap.group(width) == max(1, admitting // 4)
    # Wider rows take more of the budget: fewer of them fit.
    assert cap.fit(4 * width) < cap.fit(width)


def test_one_row_may_always_start_and_resize_applies() -> None:
    cap = Capacity(8, 1)  # a budget no row fits
    assert cap.fit(2_000) == 1
    assert cap.room(running=0, width=2_000) == 1
    assert cap.room(running=1, width=2_000) == 0
    cap.resize(4, None)
    assert (cap.slots, cap.refill_group, cap.budget.positions) == (4, 1, None)
    assert Capacity(0, None).slots == 1


class _Model:
    def __init__(self) -> None:
        self.setting = {"": "grouped_mm"}
        self.switches: list[dict[str, Any]] = []

    def get_experts_implementation(self) -> dict[str, Any]:
        return dict(self.setting)

    def set_experts_implementation(self, setting: dict[str, Any]) -> None:
        self.setting = dict(setting)
        self.switches.append(dict(setting))


def test_experts_switch_for_steps_of_few_rows_only_and_only_on_a_change() -> None:
    model = _Model()
    phase = ExpertsPhase(model, {"": "batched_mm"}, decode_rows=4)
    phase.step(3)
    phase.step(2)
    assert model.setting == {"": "batched_mm"} and phase.decoding
    phase.step(5)  # more rows than decode_rows: the prefill setting
    assert model.setting == {"": "grouped_mm"} and not phase.decoding
    phase.step(1)
    phase.prefill()
    phase.prefill()
    assert len(model.switches) == 4  # batched, grouped, batched, grouped


def test_experts_setting_restored_when_the_decode_fails() -> None:
    model = _Model()
    phase = ExpertsPhase(model, {"": "batched_mm"}, decode_rows=None)
    with pytest.raises(RuntimeError), phase.restoring():
        phase.step(100)
        assert model.setting == {"": "batched_mm"}
        raise RuntimeError("out of memory")
    assert model.setting == {"": "grouped_mm"} and not phase.decoding


def test_without_a_decode_setting_nothing_switches() -> None:
    model = _Model()
    phase = ExpertsPhase(model, None, decode_rows=None)
    phase.step(1)
    with phase.restoring():
        phase.prefill()
    assert model.switches == [] and not phase.decoding
