"""Optimisers and the poly learning-rate schedule of DeepLab / the SPCL reference.

The reference decays the lr as ``lr · (1 − it / MAX_ITER) ** 0.9`` but stops training at
``STOP_ITER < MAX_ITER``, so the lr never reaches 0 (a quirk kept as the default of the reference
configs). The classifier head trains at ``head_lr_mult`` × the backbone lr.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

__all__ = ["build_optimizer", "poly_factor", "poly_scheduler"]


def build_optimizer(
    backbone_params: Iterable[nn.Parameter],
    head_params: Iterable[nn.Parameter],
    *,
    kind: Literal["sgd", "adam"] = "sgd",
    lr: float,
    head_lr_mult: float = 10.0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """SGD (or Adam) with two parameter groups: backbone at ``lr``, head at ``lr × head_lr_mult``.

    Parameters with ``requires_grad=False`` (e.g. frozen BatchNorm affine) are left out.
    """
    groups = [
        {"params": [p for p in backbone_params if p.requires_grad], "lr": lr},
        {"params": [p for p in head_params if p.requires_grad], "lr": lr * head_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {kind!r}")


def poly_factor(iteration: int, max_iter: int, power: float = 0.9) -> float:
    """``(1 − iteration / max_iter) ** power``, clamped at 0 past ``max_iter``."""
    return max(0.0, 1.0 - iteration / max_iter) ** power


def poly_scheduler(
    optimizer: torch.optim.Optimizer, max_iter: int, power: float = 0.9
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`poly_factor` to every group's initial lr (step once per iter)."""
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: poly_factor(it, max_iter, power))
