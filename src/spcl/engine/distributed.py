"""Devices and torchrun: one place that knows about ranks; everything else asks ``is_main``.

``torchrun --nproc_per_node N -m spcl run CONFIG`` sets RANK, LOCAL_RANK and WORLD_SIZE; we then
initialise a process group (NCCL on CUDA, gloo on CPU). Without them, world size is 1 and every
helper here is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from spcl.base import ConfigError

__all__ = [
    "all_reduce_mean_buffers_",
    "all_reduce_sum_",
    "barrier",
    "init_distributed",
    "is_distributed",
    "is_main",
    "max_difference_across_ranks",
    "rank",
    "resolve_device",
    "shutdown_distributed",
    "world_size",
]


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


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op on one process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
