"""Optimisers, per-parameter groups, and the poly learning-rate schedule (with DAFormer's warm-up).

The SPCL reference decays the lr as ``lr · (1 − it / MAX_ITER) ** 0.9`` but stops training at
``STOP_ITER < MAX_ITER``, so the lr never reaches 0 (a quirk kept as the default of the reference
configs). The classifier head trains at ``head_lr_mult`` × the backbone lr.

For transformer recipes, :func:`param_groups` builds groups from named parameters as mmcv's
``DefaultOptimizerConstructor`` does for DAFormer (``configs/_base_/schedules/adamw.py``: head
lr × 10, norm and position-embedding weight decay × 0), with VFM-UDA's backbone multiplier (0.1)
and layer-wise lr decay (VFM-UDA++: 0.9); :func:`poly_scheduler` adds mmcv's linear warm-up and
``min_lr`` (``mmcv/runner/hooks/lr_updater.py``, DAFormer ``poly10warm.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from spcl.models.segmenter import Segmenter

__all__ = [
    "EMBED_PARAM_NAMES",
    "NORM_TYPES",
    "OptimizerKind",
    "WarmupPolyLR",
    "build_optimizer",
    "optimizer_from_groups",
    "param_groups",
    "poly_factor",
    "poly_scheduler",
    "vfmuda_warmup_factor",
    "warmup_poly_factor",
]

OptimizerKind = Literal["sgd", "adam", "adamw"]
ADAM_BETAS = (0.9, 0.999)  # torch default; DAFormer adamw.py betas=(0.9, 0.999)
# mmcv DefaultOptimizerConstructor's is_norm: _BatchNorm, _InstanceNorm, GroupNorm, LayerNorm
NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)
# name components of position embeddings and learned tokens: DINOv2's, and DAFormer's custom key
# pos_block (a PVT-style positional conv; nothing in MiT matches it)
EMBED_PARAM_NAMES = frozenset(
    {"pos_embed", "cls_token", "register_tokens", "mask_token", "pos_block"}
)
DEFAULT_WARMUP_RATIO = 1e-6  # DAFormer poly10warm.py warmup_ratio


def build_optimizer(
    backbone_params: Iterable[nn.Parameter],
    head_params: Iterable[nn.Parameter],
    *,
    kind: OptimizerKind = "sgd",
    lr: float,
    head_lr_mult: float = 10.0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    betas: Sequence[float] = ADAM_BETAS,
) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW with two groups: backbone at ``lr``, head at ``lr × head_lr_mult``.

    Parameters with ``requires_grad=False`` (e.g. frozen BatchNorm affine) are left out.
    """
    groups = [
        {"params": [p for p in backbone_params if p.requires_grad], "lr": lr},
        {"params": [p for p in head_params if p.requires_grad], "lr": lr * head_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    return optimizer_from_groups(
        groups, kind=kind, lr=lr, momentum=momentum, weight_decay=weight_decay, betas=betas
    )


def optimizer_from_groups(
    groups: list[dict[str, Any]],
    *,
    kind: OptimizerKind,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    betas: Sequence[float] = ADAM_BETAS,
) -> torch.optim.Optimizer:
    """The optimiser over ``groups`` (each may set ``lr``/``weight_decay``; defaults otherwise).

    Raises:
        ValueError: unknown ``kind``, or no group has a parameter (e.g. everything frozen).
    """
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters to optimise (is everything frozen?)")
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if len(betas) != 2:
        raise ValueError(f"betas must be two numbers, got {list(betas)}")
    beta_pair = (float(betas[0]), float(betas[1]))
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=beta_pair, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=beta_pair, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {kind!r}")


def _norm_param_ids(module: nn.Module) -> set[int]:
    """ids of the parameters owned directly by normalisation layers (found by type)."""
    return {
        id(p)
        for m in module.modules()
        if isinstance(m, NORM_TYPES)
        for p in m.parameters(recurse=False)
    }


def _lr_scale(model: Segmenter, name: str, backbone_lr_mult: float, layer_decay: float) -> float:
    """Backbone lr factor: ``backbone_lr_mult · layer_decay ** (num_layers − layer_id)``."""
    if layer_decay == 1.0:
        return backbone_lr_mult
    return backbone_lr_mult * layer_decay ** (model.num_layers - model.layer_id(name))


def param_groups(
    model: Segmenter,
    *,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    backbone_lr_mult: float = 1.0,
    layer_decay: float = 1.0,
    norm_decay_mult: float = 1.0,
    embed_decay_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups with per-parameter lr and weight decay, from the named parameters.

    Rules, for every parameter with ``requires_grad``:

    * a head parameter (name starts with one of ``model.head_prefixes``): lr × ``head_lr_mult``,
      weight decay × 1. This is mmcv's precedence in DAFormer: the custom key ``head`` is tried
      before ``norm`` (keys sorted by length, then alphabetically), so head norms keep their decay.
    * a backbone parameter: lr × ``backbone_lr_mult`` × ``layer_decay ** (num_layers −
      model.layer_id(name))`` (the segmenter contract, :class:`~spcl.models.segmenter.Segmenter`;
      VFM-UDA++ on a ViT: blocks decay from the last one down, the stems most; ResNet and MiT
      decay by stage); weight decay × ``norm_decay_mult`` if it
      belongs to a normalisation layer (:data:`NORM_TYPES`, found by module type),
      × ``embed_decay_mult`` if a component of its name is a position embedding or token
      (:data:`EMBED_PARAM_NAMES`), × 1 otherwise.

    Parameters with equal (lr, weight decay) share one group, in order of first appearance; with
    every multiplier 1 this is ``[backbone at lr, head at lr × head_lr_mult]`` in the order of
    ``model.param_groups()``, the optimiser SPCL's reference builds.

    Returns:
        ``[{"params": [...], "lr": float, "weight_decay": float}, ...]``.

    Raises:
        TypeError: ``model`` is not a Segmenter (unwrap DDP first).
    """
    if not isinstance(model, Segmenter):
        raise TypeError(f"param_groups needs a Segmenter (spcl.models), got {type(model).__name__}")
    norms = _norm_param_ids(model)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if model.is_head(name):
            key = (lr * head_lr_mult, weight_decay)
        else:
            decay = 1.0
            if id(param) in norms:
                decay = norm_decay_mult
            elif not EMBED_PARAM_NAMES.isdisjoint(name.split(".")):
                decay = embed_decay_mult
            scale = _lr_scale(model, name, backbone_lr_mult, layer_decay)
            key = (lr * scale, weight_decay * decay)
        groups.setdefault(key, []).append(param)
    return [{"params": ps, "lr": g_lr, "weight_decay": g_wd} for (g_lr, g_wd), ps in groups.items()]


def poly_factor(iteration: int, max_iter: int, power: float = 0.9) -> float:
    """``(1 − iteration / max_iter) ** power``, clamped at 0 past ``max_iter``."""
    return max(0.0, 1.0 - iteration / max_iter) ** power


def vfmuda_warmup_factor(iteration: int, warmup_iters: int, warmup_ratio: float) -> float:
    """VFM-UDA's warm-up multiplier (``WarmupAndLinearScheduler``: ``linspace(ratio, 1, W)``),
    which replaces the decayed lr during the warm-up: ``ratio + (1 − ratio)·t/(W − 1)``."""
    if warmup_iters <= 1:
        return warmup_ratio
    return warmup_ratio + (1.0 - warmup_ratio) * iteration / (warmup_iters - 1)


def warmup_poly_factor(
    iteration: int, warmup_iters: int, warmup_ratio: float = DEFAULT_WARMUP_RATIO
) -> float:
    """mmcv's linear warm-up multiplier: ``1 − (1 − t / W)(1 − ratio)`` for t < W, else 1."""
    if iteration >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)


class WarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """mmcv's ``PolyLrUpdaterHook`` by iteration with linear warm-up (DAFormer ``poly10warm``).

    At iteration t each group's lr is ``((base − min_lr) · (1 − t/T) ** power + min_lr) · w(t)``
    with ``w`` from :func:`warmup_poly_factor` (the warm-up scales the regular, decayed lr, as
    ``get_warmup_lr`` does). ``min_lr`` is absolute and the same for every group (mmcv).
    Stepped once per iteration; the closed form makes it resumable from ``last_epoch``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iter: int,
        power: float = 1.0,
        *,
        min_lr: float = 0.0,
        warmup_iters: int = 0,
        warmup_ratio: float = DEFAULT_WARMUP_RATIO,
        warmup_mode: str = "mmcv",
    ) -> None:
        self.max_iter, self.power, self.min_lr = max_iter, power, min_lr
        self.warmup_iters, self.warmup_ratio = warmup_iters, warmup_ratio
        self.warmup_mode = warmup_mode
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        t = self.last_epoch
        if self.warmup_mode == "vfmuda" and t < self.warmup_iters:
            warm = vfmuda_warmup_factor(t, self.warmup_iters, self.warmup_ratio)
            return [base * warm for base in self.base_lrs]
        coeff = poly_factor(t, self.max_iter, self.power)
        warm = warmup_poly_factor(t, self.warmup_iters, self.warmup_ratio)
        return [((base - self.min_lr) * coeff + self.min_lr) * warm for base in self.base_lrs]


def poly_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iter: int,
    power: float = 0.9,
    *,
    min_lr: float = 0.0,
    warmup_iters: int = 0,
    warmup_ratio: float = DEFAULT_WARMUP_RATIO,
    warmup_mode: str = "mmcv",
) -> torch.optim.lr_scheduler.LRScheduler:
    """The poly schedule over ``max_iter`` (step once per iteration).

    Without warm-up and ``min_lr`` it is a LambdaLR applying :func:`poly_factor` to every group's
    initial lr (the SPCL reference); otherwise :class:`WarmupPolyLR`. ``warmup_mode`` "mmcv"
    scales the decayed lr during the warm-up (DAFormer); "vfmuda" replaces it by VFM-UDA's
    linear ramp from ``warmup_ratio`` to 1 over the warm-up (:func:`vfmuda_warmup_factor`).

    Raises:
        ValueError: ``max_iter`` ≤ 0, ``warmup_iters`` < 0, ``warmup_ratio`` outside (0, 1] or
            ``min_lr`` < 0 (mmcv's checks).
    """
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
    if warmup_iters and not 0.0 < warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in (0, 1], got {warmup_ratio}")
    if min_lr < 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr}")
    if warmup_iters == 0 and min_lr == 0.0:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda it: poly_factor(it, max_iter, power)
        )
    return WarmupPolyLR(
        optimizer,
        max_iter,
        power,
        min_lr=min_lr,
        warmup_iters=warmup_iters,
        warmup_ratio=warmup_ratio,
        warmup_mode=warmup_mode,
    )
