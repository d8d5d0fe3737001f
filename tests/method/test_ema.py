"""EMA teacher: update against a per-parameter float64 loop, buffers, Dropout/DropPath switching."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from spcl.method.ema import (
    disable_teacher_dropout,
    ema_alpha,
    init_teacher,
    unwrap_model,
    update_teacher,
)


class DropPath(nn.Module):
    """Stands for timm's / mmcv's / spcl.models.mit's DropPath (recognised by class name)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SubDropPath(DropPath):
    pass


class MarkedStochastic(nn.Module):
    is_stochastic_depth = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Dropout2d(0.1),
        DropPath(),
        nn.Conv2d(4, 2, 1),
        nn.Dropout(0.5),
        SubDropPath(),
        MarkedStochastic(),
    )


def _perturb(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(torch.rand(b.shape, generator=gen))
            else:
                b.add_(3)


def test_ema_alpha_warm_up() -> None:
    assert ema_alpha(0, 0.999) == 0.0
    assert ema_alpha(1, 0.999) == 0.5
    assert ema_alpha(3, 0.999) == 0.75
    assert ema_alpha(998, 0.999) == pytest.approx(1 - 1 / 999)  # still below α
    assert ema_alpha(999, 0.999) == 0.999  # 1 − 1/1000 = α
    assert ema_alpha(5000, 0.999) == 0.999
    with pytest.raises(ValueError, match="step"):
        ema_alpha(-1)


def test_update_matches_naive_loop_over_steps() -> None:
    alpha = 0.8  # 1/(1 − α) = 5: steps 1..4 use α_t < α, steps ≥ 4 use α
    student, teacher = _net(0), _net(1)
    init_teacher(teacher, student)
    naive = {n: p.detach().double().numpy().copy() for n, p in student.named_parameters()}
    buffers_before = {n: b.clone() for n, b in teacher.named_buffers()}
    gen = torch.Generator().manual_seed(7)
    used = []
    for step in range(1, 9):
        _perturb(student, gen)
        used.append(update_teacher(teacher, student, step, alpha))
        coeff = min(1.0 - 1.0 / (step + 1), alpha)
        for name, param in student.named_parameters():
            naive[name] = coeff * naive[name] + (1 - coeff) * param.detach().double().numpy()
    assert used == pytest.approx([0.5, 2 / 3, 0.75, 0.8, 0.8, 0.8, 0.8, 0.8])
    for name, param in teacher.named_parameters():
        np.testing.assert_allclose(param.double().numpy(), naive[name], rtol=1e-5, atol=1e-6)
        assert not param.requires_grad
    for name, buf in teacher.named_buffers():  # DAFormer: buffers untouched
        assert torch.equal(buf, buffers_before[name]), name


def test_init_copies_parameters_only_by_default() -> None:
    student, teacher = _net(0), _net(1)
    _perturb(student, torch.Generator().manual_seed(0))
    before = {n: b.clone() for n, b in teacher.named_buffers()}
    init_teacher(teacher, student)
    for (name, t), s in zip(teacher.named_parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s), name
    for name, buf in teacher.named_buffers():
        assert torch.equal(buf, before[name]), name
    init_teacher(teacher, student, include_buffers=True)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        assert torch.equal(t, s)


def test_include_buffers_averages_floats_and_copies_integers() -> None:
    student, teacher = _net(0), _net(0)
    teacher_bn, student_bn = teacher[1], student[1]
    old_mean = teacher_bn.running_mean.clone()
    _perturb(student, torch.Generator().manual_seed(3))
    update_teacher(teacher, student, step=3, alpha=0.999, include_buffers=True)  # α_3 = 0.75
    expected = 0.75 * old_mean + 0.25 * student_bn.running_mean
    torch.testing.assert_close(teacher_bn.running_mean, expected)
    assert teacher_bn.num_batches_tracked.item() == student_bn.num_batches_tracked.item() == 3


def test_dataparallel_wrapper_is_unwrapped() -> None:
    student, teacher = _net(0), _net(1)
    wrapped = nn.DataParallel(student)
    assert unwrap_model(wrapped) is student
    init_teacher(teacher, wrapped)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s)
    update_teacher(nn.DataParallel(teacher), wrapped, step=1)


def test_mismatched_architecture_names_the_culprit() -> None:
    student = _net(0)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="teacher lacks"):
        update_teacher(other, student, step=1)
    wrong_shape = copy.deepcopy(student)
    wrong_shape[4] = nn.Conv2d(4, 3, 1)
    with pytest.raises(ValueError, match=r"'4\.weight'"):
        init_teacher(wrong_shape, student)


def test_disable_dropout_keeps_batchnorm_training() -> None:
    teacher = _net(0)
    teacher.train()
    switched = disable_teacher_dropout(teacher)
    assert switched == 5  # Dropout2d, DropPath, Dropout, DropPath subclass, marked module
    modes = {type(m).__name__: m.training for m in teacher}
    assert modes == {
        "Conv2d": True,
        "BatchNorm2d": True,
        "Dropout2d": False,
        "DropPath": False,
        "Dropout": False,
        "SubDropPath": False,
        "MarkedStochastic": False,
    }
    assert teacher.training
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(teacher(x), teacher(x))  # deterministic: no active dropout
