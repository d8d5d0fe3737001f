"""The one training loop: every stage hands it a ``step`` and the objects that make up its state.

A stage's ``step(iteration)`` is given the iteration it computes (0 for the first; the same for
every micro-batch of one iteration, and the loop's own count after a resume), draws its own
batches (from resumable loaders registered in ``state``), runs the model and returns its named loss
terms, unweighted (``{"seg": ..., "cl_src": ...}``), or an iterator of such mappings, one per
forward pass: the loop backpropagates each one's weighted terms as soon as it is yielded, before the
step computes the next pass, so that one pass's activations are held at a time (the authors'
separate backward passes; the gradients are the same sum, up to the order of floating-point
additions). The loop
does everything else: the total loss as the weighted sum of the terms named in ``weights``
(:func:`weighted_total`; other terms are only logged), autocast, backward (gradient accumulation,
fp16 scaling), clipping, optimiser and schedule steps, the after-step hooks (an EMA teacher, a
prototype refresh), logging and progress, and periodic full-state checkpoints written atomically.
When a checkpoint exists, the loop restores every object in ``state``, the RNGs and the iteration,
and continues exactly where it was.

Under torchrun rank 0 writes the checkpoint, but what differs between ranks is kept for each rank:
the global RNGs (Python, NumPy, torch CPU and CUDA; Dropout and DropPath draw from torch's) and the
objects a stage passes as ``rank_state`` (e.g. a rank-seeded augmentation generator). Each rank
gets its own back on resume, so a resumed multi-process run draws exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from spcl.base import CheckpointError, NonFiniteLossError
from spcl.engine.checkpoint import load_entry, load_state, save_state
from spcl.engine.distributed import all_gather_objects, is_main, rank
from spcl.engine.tracking import Tracker

__all__ = [
    "AfterStep",
    "LoopConfig",
    "Stateful",
    "StepFn",
    "Terms",
    "checkpoint_due",
    "rng_state",
    "set_rng_state",
    "step_terms",
    "train_loop",
    "weighted_total",
]

Terms = Mapping[str, torch.Tensor]
StepFn = Callable[[int], Terms | Iterator[Terms]]  # iteration (0-based) → loss terms (or parts)
AfterStep = Callable[[int], None]  # called with the number of optimiser steps done so far
TOTAL = "loss"  # the logged name of the weighted sum
SECONDS = "sec_per_iter"  # logged: wall seconds per iteration since the last log line


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any], /) -> Any: ...


@dataclass
class LoopConfig:
    """How to run the loop (not what to train)."""

    stop_iter: int  # iterations to run (the reference's STOP_ITER)
    checkpoint: Path  # resumable state file
    tag: str = "train"  # TensorBoard prefix and progress-bar label
    ckpt_every: int = 500  # iterations between checkpoints (also written at the end)
    log_every: int = 20  # iterations between logged scalar means
    grad_accum: int = 1  # micro-batches per optimiser step
    clip_grad_norm: float = 0.0  # 0 = no clipping
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast dtype (bf16: CUDA or CPU; fp16: CUDA)
    device_type: str = "cpu"  # for autocast
    extra_scalars: Callable[[], Mapping[str, float]] | None = field(default=None, repr=False)
    reduce_grads: Callable[[], None] | None = field(default=None, repr=False)  # once per
    # iteration after every backward, before clipping and the optimiser step: the all-reduce of
    # gradients a step kept local (per-pass backward under torchrun)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, checkpoint-safe (tensors and lists)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_due(config: LoopConfig, done: int) -> bool:
    """Whether the loop writes a checkpoint after ``done`` steps (every ``ckpt_every``, and the
    last: the rule :func:`train_loop` applies); after-step hooks that must see every
    checkpointed state ask this (``tests/engine/test_loop.py`` checks that the two agree)."""
    return done % config.ckpt_every == 0 or done == config.stop_iter


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``Σ weights[name] · terms[name]`` over the weighted terms, in the order of ``weights``.

    A weight of exactly 1 adds the term as it is. Terms without a weight are not in the sum.

    Raises:
        KeyError: a weighted term that the step did not return, or no weighted term at all.
    """
    missing = [name for name in weights if name not in terms]
    if missing or not weights:
        raise KeyError(f"loss terms {missing or '(none weighted)'} not among {sorted(terms)}")
    total: torch.Tensor | None = None
    for name, weight in weights.items():
        part = terms[name] if weight == 1.0 else weight * terms[name]
        total = part if total is None else total + part
    assert total is not None
    return total


def step_terms(result: Terms | Iterator[Terms]) -> dict[str, torch.Tensor]:
    """Every term of one step's result: the mapping, or all the parts of a per-pass step merged
    (computed one after the other, with no backward between them: for tests and tools that want
    the terms, not the loop's memory behaviour)."""
    if isinstance(result, Mapping):
        return dict(result)
    terms: dict[str, torch.Tensor] = {}
    for part in result:
        terms |= part
    return terms


def _parts(step: StepFn, iteration: int, config: LoopConfig) -> Iterator[dict[str, torch.Tensor]]:
    """The step's terms, one mapping per forward pass, each computed under autocast (a plain
    mapping is one part; an iterator computes its next pass only when asked, after the loop has
    backpropagated the one before)."""
    with _autocast(config):
        result = step(iteration)
    if isinstance(result, Mapping):
        yield dict(result)
        return
    while True:
        with _autocast(config):
            part = next(result, None)
        if part is None:
            return
        yield dict(part)


def _autocast(config: LoopConfig) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and CPU; fp16 on CUDA only (CPU fp16 kernels are few and slow)."""
    if config.amp == "bf16" and config.device_type in ("cuda", "cpu"):
        return torch.autocast(device_type=config.device_type, dtype=torch.bfloat16)
    if config.amp == "fp16" and config.device_type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _save(
    config: LoopConfig,
    iteration: int,
    state: Mapping[str, Stateful],
    rank_state: Mapping[str, Stateful],
    scaler: Any,
) -> None:
    """Rank 0 writes ``state`` and, for every rank, its RNGs and ``rank_state`` (collective)."""
    mine = {"rng": rng_state(), **{name: obj.state_dict() for name, obj in rank_state.items()}}
    ranks = all_gather_objects(mine)  # every rank takes part; rank 0 writes
    if not is_main():
        return
    payload = {name: obj.state_dict() for name, obj in state.items()}
    payload["_loop"] = {
        "iteration": iteration,
        "rng": mine["rng"],  # rank 0's, as checkpoints made before per-rank states hold it
        "ranks": ranks,
        "scaler": scaler.state_dict(),
    }
    save_state(payload, config.checkpoint)


def _load_into(path: Path, source: Mapping[str, Any], objects: Mapping[str, Stateful]) -> None:
    for name, obj in objects.items():
        if name not in source:
            raise CheckpointError(f"{path}: no state for '{name}'; made by another stage?")
        load_entry(path, name, obj, source[name])  # keys and shapes compared, named errors


def _restore(
    config: LoopConfig,
    state: Mapping[str, Stateful],
    rank_state: Mapping[str, Stateful],
    scaler: Any,
) -> int:
    if not config.checkpoint.is_file():
        return 0
    payload = load_state(config.checkpoint)
    _load_into(config.checkpoint, payload, state)
    loop = payload["_loop"]
    # this rank's own states; a checkpoint of fewer ranks has none for it: rank 0's then (no
    # resume onto another world size is exact anyway); one made before per-rank states kept
    # rank 0's RNGs in ``_loop`` and the other objects beside ``state``'s
    ranks = loop.get("ranks") or [{"rng": loop["rng"], **payload}]
    mine = ranks[rank()] if rank() < len(ranks) else ranks[0]
    _load_into(config.checkpoint, mine, rank_state)
    set_rng_state(mine["rng"])
    scaler.load_state_dict(loop["scaler"])
    return int(loop["iteration"])


def _non_finite(
    config: LoopConfig, iteration: int, terms: Mapping[str, torch.Tensor], saved: int | None
) -> NonFiniteLossError:
    """The one-line error of a diverged step: stage, iteration, each term, the last checkpoint."""
    values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
    kept = (
        f"the last checkpoint ({config.checkpoint}, iteration {saved}) is intact"
        if saved is not None
        else "no checkpoint was written yet"
    )
    return NonFiniteLossError(
        f"[{config.tag}] iteration {iteration}: the loss is not finite ({values}); {kept}; "
        f"lower the stage's learning rate (optim.lr) or clip its gradients "
        f"(optim.clip_grad_norm) and run again"
    )


def train_loop(
    step: StepFn,
    *,
    weights: Mapping[str, float],
    state: Mapping[str, Stateful],
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
    config: LoopConfig,
    tracker: Tracker,
    after_step: Sequence[AfterStep] = (),
    rank_state: Mapping[str, Stateful] | None = None,
) -> int:
    """Run ``step`` until ``config.stop_iter``, resuming from ``config.checkpoint`` if it exists.

    Args:
        step: given the iteration (0-based: the number of optimiser steps done before it),
            draws a batch, returns its named loss terms (scalars; all are logged).
        weights: term name → weight of the total loss (see :func:`weighted_total`).
        state: every object whose ``state_dict`` must survive a restart (models, optimisers,
            schedulers, loaders, prototype banks, an EMA teacher); keys name them.
        optimizers, schedulers: stepped once per iteration, in order.
        config: loop settings.
        tracker: progress, scalars and log lines.
        after_step: called in order after each optimiser and schedule step with the number of
            steps done (1 after the first), before logging and checkpointing.
        rank_state: objects whose state differs between torchrun ranks (a rank-seeded
            generator); each rank's is checkpointed and each rank gets its own back.

    Returns:
        The iteration reached (``config.stop_iter``).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (names the stage, the iteration, each
            term and the last checkpoint, which is left intact).
    """
    scaler = torch.amp.GradScaler(
        "cuda", enabled=config.amp == "fp16" and config.device_type == "cuda"
    )
    rank_state = rank_state or {}
    start = _restore(config, state, rank_state, scaler)
    saved = start if config.checkpoint.is_file() else None  # iteration of the last checkpoint
    if start:
        tracker.info(f"[{config.tag}] resumed from {config.checkpoint} at iteration {start}")
    params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
    sums: dict[str, float] = {}
    counted = 0  # iterations summed into ``sums`` since the last log
    window_start = time.perf_counter()  # when the iterations summed into ``sums`` began
    bar = tracker.bar(config.stop_iter, initial=start, desc=config.tag)
    for iteration in range(start, config.stop_iter):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        for _ in range(config.grad_accum):
            terms: dict[str, torch.Tensor] = {}
            total = 0.0
            for part in _parts(step, iteration, config):
                if TOTAL in part or terms.keys() & part.keys():
                    raise KeyError(
                        f"a step may not return a term named {TOTAL!r} or the same term twice "
                        f"({sorted(part)})"
                    )
                terms |= part
                weighted = {name: w for name, w in weights.items() if name in part}
                if not weighted:  # logged only
                    continue
                with _autocast(config):
                    loss = weighted_total(part, weighted)
                if not torch.isfinite(loss.detach()):
                    raise _non_finite(config, iteration + 1, {**terms, TOTAL: loss}, saved)
                scaler.scale(loss / config.grad_accum).backward()
                total += float(loss.detach())
            if missing := [name for name in weights if name not in terms]:
                raise KeyError(f"loss terms {missing} not among {sorted(terms)}")
            if not weights:
                raise KeyError(f"loss terms (none weighted) not among {sorted(terms)}")
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / config.grad_accum
            sums[TOTAL] = sums.get(TOTAL, 0.0) + total / config.grad_accum
        if config.reduce_grads is not None:
            config.reduce_grads()
        if config.clip_grad_norm > 0:
            for opt in optimizers:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        for opt in optimizers:
            scaler.step(opt)
        scaler.update()
        for scheduler in schedulers:
            scheduler.step()
        done, counted = iteration + 1, counted + 1
        for hook in after_step:
            hook(done)
        bar.update(1)
        if done % config.log_every == 0 or done == config.stop_iter:
            means = {k: v / counted for k, v in sums.items()}
            means["lr"] = optimizers[0].param_groups[0]["lr"]
            means[SECONDS] = (time.perf_counter() - window_start) / counted  # per iteration
            if config.extra_scalars is not None:
                means.update(config.extra_scalars())
            tracker.scalars(config.tag, means, done)
            bar.set_postfix(loss=f"{means['loss']:.3f}")
            sums, counted = {}, 0
            window_start = time.perf_counter()
        if done % config.ckpt_every == 0 or done == config.stop_iter:
            _save(config, done, state, rank_state, scaler)
            saved = done
    bar.close()
    return config.stop_iter
