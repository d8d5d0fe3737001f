"""Optimiser groups and the poly schedule (decay over max_iter, training stops at stop_iter)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spcl.engine.optim import build_optimizer, poly_factor, poly_scheduler


def test_head_gets_ten_times_the_lr_and_frozen_params_are_left_out() -> None:
    backbone, head = nn.Linear(2, 2), nn.Linear(2, 2)
    backbone.bias.requires_grad_(False)
    opt = build_optimizer(backbone.parameters(), head.parameters(), lr=2.5e-4, head_lr_mult=10)
    assert [g["lr"] for g in opt.param_groups] == [2.5e-4, 2.5e-3]
    assert len(opt.param_groups[0]["params"]) == 1  # the frozen bias is not optimised
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(backbone.parameters(), head.parameters(), kind="lbfgs", lr=1.0)  # type: ignore[arg-type]


def test_poly_schedule_matches_the_formula_and_never_reaches_zero_before_max() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    schedule = poly_scheduler(opt, max_iter=100, power=0.9)
    seen = []
    for _ in range(60):  # stop_iter < max_iter, as the reference
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    expected = [(1 - i / 100) ** 0.9 for i in range(60)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[-1] > 0.4
    assert poly_factor(150, 100) == 0.0
    with pytest.raises(ValueError, match="max_iter"):
        poly_scheduler(opt, max_iter=0)
