"""The gradient all-reduce of a per-pass step under torchrun, on two gloo processes.

``all_reduce_mean_grads_`` stands in for DDP's reduction when a step's passes were each
backpropagated under ``no_sync``: every rank ends with the mean gradient, a parameter with a
gradient on some ranks only counts zeros on the others, one with none anywhere keeps ``None``,
and gradients of several dtypes and more than one bucket come back in place.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from spcl.engine import distributed

WORLD = 2


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank, world_size=WORLD)
    try:
        distributed.GRAD_BUCKET_ELEMENTS = 8  # several buckets, one tensor larger than a bucket
        big = nn.Parameter(torch.zeros(3, 4))
        small = nn.Parameter(torch.zeros(5))
        only_rank_0 = nn.Parameter(torch.zeros(2))
        nowhere = nn.Parameter(torch.zeros(2))
        frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
        double = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        big.grad = torch.arange(12.0).view(3, 4) + 10 * rank
        small.grad = torch.full((5,), 1.0 + rank)
        only_rank_0.grad = torch.full((2,), 4.0) if rank == 0 else None
        double.grad = torch.full((3,), 0.1 * (rank + 1), dtype=torch.float64)
        frozen.grad = torch.full((2,), 7.0 + rank)  # not trained: left as it is
        distributed.all_reduce_mean_grads_([big, small, only_rank_0, nowhere, frozen, double])
        buffers = nn.BatchNorm1d(2)
        buffers.running_mean.fill_(rank + 1.0)
        distributed.broadcast_buffers_(buffers)
        grads = {
            name: p.grad
            for name, p in (
                ("big", big),
                ("small", small),
                ("only_rank_0", only_rank_0),
                ("nowhere", nowhere),
                ("frozen", frozen),
                ("double", double),
            )
        }
        torch.save({"grads": grads, "running_mean": buffers.running_mean}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradients_are_averaged_over_ranks_in_place(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        grads = got["grads"]
        assert torch.equal(grads["big"], torch.arange(12.0).view(3, 4) + 5)
        assert torch.equal(grads["small"], torch.full((5,), 1.5))
        assert torch.equal(grads["only_rank_0"], torch.full((2,), 2.0))  # zeros on rank 1
        assert grads["nowhere"] is None  # the optimiser skips it, as on one process
        assert torch.equal(grads["frozen"], torch.full((2,), 7.0 + rank))
        assert grads["double"].dtype == torch.float64
        torch.testing.assert_close(grads["double"], torch.full((3,), 0.15, dtype=torch.float64))
        assert torch.equal(got["running_mean"], torch.ones(2))  # rank 0's buffers everywhere
