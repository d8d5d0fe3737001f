"""Periodic validation during training: mIoU and per-class IoU on target_val every N iterations.

``run.val_every`` > 0 adds an after-step hook to a training stage's loop
(:func:`spcl.engine.loop.train_loop`): every N optimiser steps it scores the model on the
labelled target split (as the evaluation stage does) and logs ``TAG/val/miou`` and
``TAG/val/iou/CLASS`` to TensorBoard and a line to ``log.txt``. It only watches: the model handed
on is the last one, never the best on the split it is scored on, and a run with validation trains
exactly as one without: the torch RNG is restored afterwards, and so is every submodule's training
flag (an EMA teacher is validated in the middle of training with its Dropout and DropPath off and
the rest in train mode; a plain ``model.train()`` afterwards would turn them back on).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from spcl.context import RunContext
from spcl.engine.loop import AfterStep
from spcl.evaluation.scores import SegmentationScores
from spcl.stages.evaluate import target_val_scores

__all__ = ["kept_training_flags", "validation_hooks"]


@contextlib.contextmanager
def kept_training_flags(model: nn.Module) -> Iterator[None]:
    """Whatever the body does to the modes of ``model``, each submodule's ``training`` flag is
    put back as it was when the body ends (raised or not)."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def validation_hooks(
    ctx: RunContext,
    model: nn.Module,
    tag: str,
    on_scores: Callable[[int, SegmentationScores], None] | None = None,
) -> list[AfterStep]:
    """The after-step hooks that validate ``model`` every ``run.val_every`` steps (none if 0).

    Args:
        ctx: the run (its config's target_val split, device, tracker).
        model: the model the stage hands on (not a DDP wrapper: each rank scores its share of
            the images and the confusion matrices are summed).
        tag: the stage's TensorBoard prefix (``warmup``, ``adapt``, …).
        on_scores: also given each validation's scores, with the step (the collapse alert).
    """
    every = ctx.config.run.val_every
    if every <= 0:
        return []
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []

    def validate(done: int) -> None:
        if done % every:
            return
        # no draw of training's RNG, and the modes training left (not all train()) come back
        with torch.random.fork_rng(devices=devices), kept_training_flags(model):
            scores = target_val_scores(ctx, model, desc=f"{tag} val")
        per_class = {
            f"iou/{name}": value
            for name, value in zip(scores.class_names, scores.iou, strict=True)
            if not math.isnan(value)
        }
        ctx.tracker.scalars(f"{tag}/val", {"miou": scores.miou, **per_class}, done)
        ctx.tracker.info(f"[{tag}] iteration {done}: val mIoU {scores.miou:.2f}")
        if on_scores is not None:
            on_scores(done, scores)

    return [validate]
