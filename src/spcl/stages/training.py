"""One shape for every training stage: a setup declares what to train, one runner trains it.

A training stage (``warmup``, ``adapt``, ``self_train``, ``online``) has a
``setup(ctx, out_dir, inputs) -> TrainingSetup``: it builds the models, data streams, optimisers
and the step, in the order that fixes the run's random draws (a model's init draws from the
global RNG), and declares everything the loop needs and everything the stage writes. Its ``run``
is ``train(ctx, out_dir, setup(ctx, out_dir, inputs))``. :func:`train` is the one runner:

1. the one loop (:func:`spcl.engine.loop.train_loop`) with the setup's step, weights, state,
   optimisers, schedules and rank state;
2. after each step, in this order: the stage's own hooks (an EMA teacher), under torchrun the check
   that every rank holds the declared state identically (at each checkpoint, before it is
   written: :class:`RanksDivergedError` otherwise), the validation of the model handed on
   (``run.val_every``), then the stage's watchers (a collapse alert);
3. the declared outputs, on rank 0: a model file per module, a state file per state, and
   ``model.pth`` as a second name of the output handed on when that one has another name.

Tests and benchmarks call a stage's ``setup`` to reach its step and its parts, and
:func:`after_step_hooks` for the hooks the runner would add.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from spcl.base import atomic_duplicate
from spcl.context import RunContext
from spcl.engine.checkpoint import save_state
from spcl.engine.distributed import (
    RanksDivergedError,
    all_reduce_mean_grads_,
    broadcast_buffers_,
    module_difference_across_ranks,
)
from spcl.engine.loop import (
    AfterStep,
    LoopConfig,
    Stateful,
    StepFn,
    Terms,
    checkpoint_due,
    train_loop,
)
from spcl.evaluation.scores import SegmentationScores
from spcl.run_dir import MODEL_FILE
from spcl.stages.builders import save_weights
from spcl.stages.validation import validation_hooks

__all__ = [
    "RankAgreement",
    "Saved",
    "TrainingSetup",
    "after_step_hooks",
    "local_backward",
    "train",
    "write_outputs",
]

Saved = nn.Module | Callable[[], Mapping[str, Any]]  # a model file, or a state for save_state
Scores = Callable[[int, SegmentationScores], None]  # (step, scores) of a validation


@dataclass(frozen=True)
class RankAgreement:
    """State that every torchrun rank must hold identically (checked before each checkpoint)."""

    name: str  # in the log line: "teachers" → "teachers of 2 ranks: max difference 0"
    described: str  # in the error: "EMA teachers" → "the EMA teachers of the 2 ranks differ"
    module: nn.Module  # every parameter and buffer of it is compared with rank 0's


@dataclass
class TrainingSetup:
    """What a training stage trains and writes; built by the stage's ``setup``, run by
    :func:`train`."""

    step: StepFn  # iteration → named loss terms, unweighted (draws its own batches)
    weights: Mapping[str, float]  # term name → weight of the total loss
    state: Mapping[str, Stateful]  # checkpointed objects; the keys are the checkpoint's names
    optimizers: Sequence[torch.optim.Optimizer]  # stepped in order
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler]  # stepped in order
    loop: LoopConfig  # the loop's settings; its tag names the stage in logs
    outputs: Mapping[str, Saved]  # file name in the stage folder → what is written there, in order
    hand_on: str = MODEL_FILE  # the output evaluated and handed on (a module of ``outputs``)
    hooks: Sequence[AfterStep] = ()  # change state after each step (an EMA teacher)
    watchers: Sequence[AfterStep] = ()  # only watch, after the validation (a collapse alert)
    on_scores: Scores | None = None  # also given each validation's scores (a collapse alert)
    rank_state: Mapping[str, Stateful] = field(default_factory=dict)  # per rank (a generator)
    agree: Sequence[RankAgreement] = ()  # identical on every rank at each checkpoint
    parts: Any = None  # what the stage's step function works with (tests and benchmarks call it)

    @property
    def handed_on(self) -> nn.Module:
        """The module written to the output handed on (the one validated while training)."""
        module = self.outputs[self.hand_on]
        if not isinstance(module, nn.Module):
            raise TypeError(f"the output handed on, {self.hand_on}, is not a model")
        return module


def local_backward(setup: TrainingSetup, net: nn.Module) -> TrainingSetup:
    """``setup`` whose step runs every pass of ``net`` under DDP's ``no_sync`` and whose loop
    then averages the gradients over ranks once per iteration, before the optimiser step, and
    hands every rank rank 0's buffers (what DDP does before a forward pass when it syncs).

    DDP all-reduces at every backward and expects one backward per forward; a step whose passes
    are each backpropagated on their own (``online.backward: per_pass``) keeps its gradients
    local until the step is done, then reduces them once. ``setup`` itself when ``net`` is not
    DDP-wrapped (one process).
    """
    if not isinstance(net, DistributedDataParallel):
        return setup
    inner = setup.step

    def local(iteration: int) -> Iterator[Terms]:
        with net.no_sync():  # consulted at each forward pass: every pass stays local
            terms = inner(iteration)
            if isinstance(terms, Mapping):
                yield terms
            else:
                yield from terms

    def reduce() -> None:
        all_reduce_mean_grads_(net.parameters())
        broadcast_buffers_(net.module)

    loop = dataclasses.replace(setup.loop, reduce_grads=reduce)
    return dataclasses.replace(setup, step=local, loop=loop)


def _agreement_check(
    ctx: RunContext, agree: Sequence[RankAgreement], loop: LoopConfig
) -> AfterStep:
    """After-step hook: under torchrun, every rank's declared state equals rank 0's at each
    checkpoint. It runs before the loop writes the checkpoint, so a divergence stops the run with
    the last checkpoint holding state the ranks still agreed on."""

    def check(done: int) -> None:
        if ctx.world <= 1 or not checkpoint_due(loop, done):
            return
        for item in agree:
            spread = module_difference_across_ranks(item.module)
            ctx.tracker.info(
                f"[{loop.tag}] iteration {done}: {item.name} of {ctx.world} ranks: "
                f"max difference {spread:g}"
            )
            if spread != 0.0:
                raise RanksDivergedError(
                    f"[{loop.tag}] iteration {done}: the {item.described} of the {ctx.world} "
                    f"ranks differ (max difference {spread:g}); this iteration's checkpoint was "
                    f"not written, {loop.checkpoint} holds the last state they agreed on"
                )

    return check


def after_step_hooks(ctx: RunContext, setup: TrainingSetup) -> list[AfterStep]:
    """The loop's after-step hooks, in order: the stage's hooks, the rank-agreement check, the
    validation of the module handed on, the stage's watchers."""
    checks = [_agreement_check(ctx, setup.agree, setup.loop)] if setup.agree else []
    validation = validation_hooks(ctx, setup.handed_on, setup.loop.tag, setup.on_scores)
    return [*setup.hooks, *checks, *validation, *setup.watchers]


def write_outputs(ctx: RunContext, out_dir: Path, setup: TrainingSetup) -> Path:
    """Write the declared outputs (rank 0) in order; ``model.pth`` is the output handed on, a
    second name of the same bytes when that one has its own. Returns ``out_dir / model.pth``."""
    for name, saved in setup.outputs.items():
        if isinstance(saved, nn.Module):
            save_weights(ctx, saved, out_dir / name)
        elif ctx.is_main:
            save_state(dict(saved()), out_dir / name)
    if setup.hand_on != MODEL_FILE and ctx.is_main:  # a second name, not a third write
        atomic_duplicate(out_dir / setup.hand_on, out_dir / MODEL_FILE)
    return out_dir / MODEL_FILE


def train(ctx: RunContext, out_dir: Path, setup: TrainingSetup) -> Path:
    """Train a stage's setup to its stop iteration (resuming from its checkpoint), then write its
    outputs; returns ``out_dir / model.pth``."""
    train_loop(
        setup.step,
        weights=setup.weights,
        state=setup.state,
        optimizers=setup.optimizers,
        schedulers=setup.schedulers,
        config=setup.loop,
        tracker=ctx.tracker,
        after_step=after_step_hooks(ctx, setup),
        rank_state=setup.rank_state,
    )
    return write_outputs(ctx, out_dir, setup)
