"""Devices and torchrun: one place that knows about ranks; everything else asks ``is_main``.

``torchrun --nproc_per_node N -m spcl run CONFIG`` sets RANK, LOCAL_RANK and WORLD_SIZE; we then
initialise a process group (NCCL on CUDA, gloo on CPU). Without them, world size is 1 and every
helper here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from spcl.base import ConfigError

__all__ = [
    "RanksDivergedError",
    "all_gather_objects",
    "all_reduce_mean_buffers_",
    "all_reduce_mean_grads_",
    "all_reduce_sum_",
    "barrier",
    "broadcast_buffers_",
    "init_distributed",
    "is_distributed",
    "is_main",
    "max_difference_across_ranks",
    "module_difference_across_ranks",
    "rank",
    "resolve_device",
    "shutdown_distributed",
    "world_size",
]


class RanksDivergedError(RuntimeError):
    """State that every process must hold identically (an EMA teacher) differs between ranks.

    Not bad input: a bug, or a device whose arithmetic differs between processes. Raised before
    the state is checkpointed, so the last checkpoint still holds state the ranks agreed on.
    """


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that writes files and logs (rank 0)."""
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA if available else CPU; ``cuda`` under torchrun → this process's GPU.

    Raises:
        ValueError: a CUDA device was asked for but none is available (names the value).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={name!r} but CUDA is not available; use run.device=cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group if the environment asks for one; returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def shutdown_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def max_difference_across_ranks(tensor: torch.Tensor) -> float:
    """Largest absolute difference between this tensor and rank 0's copy, over all ranks."""
    if not is_distributed():
        return 0.0
    reference = tensor.detach().clone()
    dist.broadcast(reference, src=0)
    difference = (tensor.detach() - reference).abs().max().reshape(1)
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return float(difference)


def module_difference_across_ranks(module: torch.nn.Module) -> float:
    """Largest absolute difference between any parameter or buffer of ``module`` and rank 0's
    copy of it, over all ranks (0.0 on one process). Collective: every rank must call it."""
    if not is_distributed():
        return 0.0
    return _max_difference(t for t in module.state_dict().values() if t.numel())


def _max_difference(tensors: Iterable[torch.Tensor]) -> float:
    """One broadcast per tensor, then one all-reduce of the per-tensor maxima (compared in
    float64, so integer and boolean buffers count too)."""
    maxima = []
    for tensor in tensors:
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        maxima.append((tensor.detach().double() - reference.double()).abs().max())
    if not maxima:
        return 0.0
    spread = torch.stack(maxima).max().reshape(1)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` on one process. Collective."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean_buffers_(module: torch.nn.Module) -> torch.nn.Module:
    """Average the floating-point buffers of ``module`` over ranks in place (no-op on one process).

    An EMA teacher in train-mode BatchNorm updates its running statistics from each rank's own
    batches; averaging them keeps every rank's teacher identical.
    """
    if is_distributed():
        world = dist.get_world_size()
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world)
    return module


GRAD_BUCKET_ELEMENTS = 2**22  # gradients flattened into buckets of at most 4 Mi elements (16 MB
# in fp32) for the all-reduce: a few large messages instead of one per tensor


def all_reduce_mean_grads_(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``params``' gradients over ranks in place (no-op on one process), as DDP does.

    For a step whose passes were backpropagated one by one under ``DistributedDataParallel.
    no_sync`` (DDP reduces once per backward, not once per step). A parameter without a gradient
    on some ranks counts zeros there; one without a gradient on every rank keeps ``None`` (so the
    optimiser skips it, as without DDP). Collective: every rank calls it with the same parameters.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    world = dist.get_world_size()
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.SUM)
    reduced = [p for p, n in zip(params, has.tolist(), strict=True) if n > 0]
    for p in reduced:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
    for p in reduced:
        by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p)  # type: ignore[union-attr]
    for group in by_dtype.values():
        for bucket in _buckets(group):
            grads = [p.grad for p in bucket]
            flat = torch.cat([g.reshape(-1) for g in grads])  # type: ignore[union-attr]
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))  # type: ignore[union-attr]
                offset += g.numel()  # type: ignore[union-attr]


def _buckets(params: list[torch.nn.Parameter]) -> Iterator[list[torch.nn.Parameter]]:
    """``params`` in order, in runs of at most ``GRAD_BUCKET_ELEMENTS`` elements (a larger tensor
    alone in its run)."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and size + p.numel() > GRAD_BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def broadcast_buffers_(module: torch.nn.Module) -> torch.nn.Module:
    """Give every rank rank 0's buffers of ``module`` in place (no-op on one process), as DDP does
    before a forward pass (``broadcast_buffers``) when it is not kept from it (``no_sync``)."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
    return module


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op on one process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
