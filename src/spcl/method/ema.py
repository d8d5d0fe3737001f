"""EMA teacher of the online adaptation stage (DAFormer / MIC / SePiCo self-training).

The teacher is an exponential moving average of the student's weights:
``θ_T ← α_t·θ_T + (1 − α_t)·θ_S`` with the warm-up ``α_t = min(1 − 1/(t + 1), α)``, so early
steps follow the student closely (α_1 = 0.5) and α_t reaches α at ``t = 1/(1 − α) − 1``
(999 for α = 0.999) (lhoyer/DAFormer:mmseg/models/uda/dacs.py ``_update_ema``; the same rule in
BIT-DA/SePiCo:mmseg/models/uda/sepico.py and tue-mps/vfm-uda:training/uda_vit/uda_vit_generic.py).

Reference behaviour kept as defaults, each a keyword switch:

* Only ``parameters()`` are averaged; buffers (BN running statistics) are left alone
  (``include_buffers=False``, DAFormer). VFM-UDA also averages the buffers; with
  ``include_buffers=True`` floating buffers are averaged and integer buffers (BN
  ``num_batches_tracked``) are copied from the student (an integer cannot be averaged in place).
* At step 0 the teacher's parameters are copied from the student (DAFormer ``_init_ema_weights``
  copies parameters only; a teacher made with ``copy.deepcopy(student)`` already has its buffers).
* The teacher keeps train mode, so its BN layers normalise with batch statistics, but its
  Dropout and DropPath modules are switched off (:func:`disable_teacher_dropout`, DAFormer
  ``forward_train`` before the pseudo-label forward).

When the update runs: DAFormer updates at the start of iteration ``t ≥ 1`` (the student has taken
``t`` optimizer steps) with ``step = t``; VFM-UDA updates after the optimizer step of global step
``t``. Either way pass the number of optimizer steps the student has taken.

Parameters are paired by name, so a DDP-wrapped module may be passed (it is unwrapped to
``.module``); both modules must have the same architecture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = [
    "REFERENCE_EMA_ALPHA",
    "STOCHASTIC_DEPTH_CLASS_NAMES",
    "STOCHASTIC_DEPTH_MARKER",
    "disable_teacher_dropout",
    "ema_alpha",
    "init_teacher",
    "kept_batchnorm_statistics",
    "unwrap_model",
    "update_teacher",
]

REFERENCE_EMA_ALPHA = 0.999  # DAFormer final config uda.alpha (the dacs.py base has 0.99)
# Stochastic-depth modules are recognised by class name anywhere in their MRO (timm, mmcv and
# spcl.models.mit all call theirs ``DropPath``), or by a truthy marker attribute on the module.
STOCHASTIC_DEPTH_CLASS_NAMES: tuple[str, ...] = ("DropPath",)
STOCHASTIC_DEPTH_MARKER = "is_stochastic_depth"


def unwrap_model(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else the module itself."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return module.module if isinstance(module, wrappers) else module


def ema_alpha(step: int, alpha: float = REFERENCE_EMA_ALPHA) -> float:
    """DAFormer's warm-up EMA coefficient ``min(1 − 1/(step + 1), alpha)``.

    Args:
        step: optimizer steps the student has taken (≥ 0; step 0 gives 0: a plain copy).
        alpha: the final EMA coefficient.

    Returns:
        α_t as a Python float.
    """
    if step < 0:
        raise ValueError(f"EMA step must be ≥ 0, got {step}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"EMA alpha must lie in [0, 1], got {alpha}")
    return min(1.0 - 1.0 / (step + 1), alpha)


def _paired(
    teacher: nn.Module, student: nn.Module, buffers: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """Teacher and student tensors of the same names (parameters, or buffers), checked."""
    named_t = dict(teacher.named_buffers() if buffers else teacher.named_parameters())
    named_s = dict(student.named_buffers() if buffers else student.named_parameters())
    kind = "buffers" if buffers else "parameters"
    if named_t.keys() != named_s.keys():
        missing = sorted(named_s.keys() - named_t.keys())[:3]
        extra = sorted(named_t.keys() - named_s.keys())[:3]
        raise ValueError(
            f"teacher and student {kind} differ: teacher lacks {missing}, has extra {extra}; "
            "build the teacher with the student's architecture (e.g. copy.deepcopy(student))"
        )
    for name, tensor in named_t.items():
        if tensor.shape != named_s[name].shape:
            raise ValueError(
                f"{kind[:-1]} {name!r}: teacher shape {tuple(tensor.shape)} != student "
                f"{tuple(named_s[name].shape)}"
            )
    names = list(named_t)
    return [named_t[n] for n in names], [named_s[n].detach() for n in names]


@torch.no_grad()
def init_teacher(teacher: nn.Module, student: nn.Module, *, include_buffers: bool = False) -> None:
    """Copy the student's parameters (and optionally buffers) into the teacher; freeze it.

    The teacher's parameters get ``requires_grad=False`` (DAFormer detaches them), so no
    gradient is ever computed for them.

    Args:
        teacher: the EMA model (same architecture as the student).
        student: the trained model (a DDP wrapper is unwrapped).
        include_buffers: also copy every buffer (DAFormer: False, parameters only).
    """
    teacher, student = unwrap_model(teacher), unwrap_model(student)
    t_params, s_params = _paired(teacher, student, buffers=False)
    for t_param, s_param in zip(t_params, s_params, strict=True):
        t_param.requires_grad_(False)
        t_param.copy_(s_param)
    if include_buffers:
        for t_buf, s_buf in zip(*_paired(teacher, student, buffers=True), strict=True):
            t_buf.copy_(s_buf)


@torch.no_grad()
def update_teacher(
    teacher: nn.Module,
    student: nn.Module,
    step: int,
    alpha: float = REFERENCE_EMA_ALPHA,
    *,
    include_buffers: bool = False,
) -> float:
    """One EMA step ``θ_T ← α_t·θ_T + (1 − α_t)·θ_S`` with ``α_t = ema_alpha(step, alpha)``.

    Tensors are updated in place with fused multi-tensor ops (no ``.item()``, no device sync);
    each pair must share device and dtype.

    Args:
        teacher: the EMA model.
        student: the trained model (a DDP wrapper is unwrapped).
        step: optimizer steps the student has taken (DAFormer: the iteration index t ≥ 1).
        alpha: the final EMA coefficient (0.999).
        include_buffers: average floating buffers too and copy integer ones (VFM-UDA);
            False (DAFormer) leaves every buffer alone.

    Returns:
        The α_t used.
    """
    teacher, student = unwrap_model(teacher), unwrap_model(student)
    coeff = ema_alpha(step, alpha)
    pairs_t, pairs_s = _paired(teacher, student, buffers=False)
    if include_buffers:
        t_bufs, s_bufs = _paired(teacher, student, buffers=True)
        for t_buf, s_buf in zip(t_bufs, s_bufs, strict=True):
            if t_buf.is_floating_point():
                pairs_t.append(t_buf)
                pairs_s.append(s_buf)
            else:
                t_buf.copy_(s_buf)
    if pairs_t:
        torch._foreach_mul_(pairs_t, coeff)
        torch._foreach_add_(pairs_t, pairs_s, alpha=1.0 - coeff)
    return coeff


def _is_stochastic_depth(module: nn.Module) -> bool:
    if getattr(module, STOCHASTIC_DEPTH_MARKER, False):
        return True
    return any(cls.__name__ in STOCHASTIC_DEPTH_CLASS_NAMES for cls in type(module).__mro__)


def disable_teacher_dropout(teacher: nn.Module) -> int:
    """Put the teacher's Dropout and DropPath modules in eval mode; leave everything else.

    DAFormer sets ``training = False`` on every ``_DropoutNd`` (Dropout, Dropout1d/2d/3d,
    AlphaDropout, …) and every ``DropPath`` of the teacher before each pseudo-label forward and
    keeps the teacher otherwise in train mode, so its BatchNorm layers use batch statistics
    (and, as a side effect, update their running statistics). DropPath is recognised by class
    name (:data:`STOCHASTIC_DEPTH_CLASS_NAMES`, anywhere in the MRO) or by a truthy
    ``is_stochastic_depth`` attribute. ``teacher.train()`` undoes this: call it again after any
    mode change (DAFormer calls it every iteration).

    Args:
        teacher: the EMA model (a DDP wrapper is unwrapped).

    Returns:
        How many modules were switched to eval.
    """
    switched = 0
    for module in unwrap_model(teacher).modules():
        if isinstance(module, _DropoutNd) or _is_stochastic_depth(module):
            module.training = False
            switched += 1
    return switched


@contextlib.contextmanager
def kept_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every BatchNorm's running statistics as they were.

    The layers still normalise with batch statistics in train mode; only the buffers they would
    update (``running_mean``, ``running_var``, ``num_batches_tracked``) are put back afterwards.
    The online stage uses it for the teacher's extra pass on *source* images (the prototype
    statistics): without it that pass pulls the teacher's running statistics, which are target
    statistics otherwise and the ones an evaluated teacher normalises with, toward the source.
    """
    norms = [
        m for m in unwrap_model(module).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    saved = [
        {name: buf.clone() for name, buf in m.named_buffers(recurse=False) if buf is not None}
        for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)
