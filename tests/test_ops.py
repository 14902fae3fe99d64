"""The MAC formula registry (costplan/trace/ops.py): one formula per op, replaced only on purpose."""

from __future__ import annotations

import pytest
import torch

from costplan.trace import trace
from costplan.trace.ops import MAC_FORMULAS, mac_formula, mm_macs

aten = torch.ops.aten


def test_a_second_registration_of_an_op_is_refused_unless_it_overrides() -> None:
    with pytest.raises(ValueError, match="already has a MAC formula"):
        mac_formula(aten.mm)(lambda *shapes, out_shape: 0)
    assert MAC_FORMULAS[aten.mm] is mm_macs

    def doubled(*shapes: object, out_shape: object) -> int:
        return 2 * mm_macs(*shapes, out_shape=out_shape)
    try:
        mac_formula(aten.mm, override=True)(doubled)
        assert MAC_FORMULAS[aten.mm] is doubled
    finally:
        MAC_FORMULAS[aten.mm] = mm_macs


def test_one_trace_may_use_its_own_formulas_and_the_registry_stays() -> None:
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.zeros(4, 16)
    plain = trace(layer, (x,)).total_macs
    custom = trace(layer, (x,), mac_formulas={aten.mm: lambda *shapes, out_shape: 7}).total_macs
    assert plain == 4 * 16 * 8
    assert custom == 7
    assert trace(layer, (x,)).total_macs == plain
