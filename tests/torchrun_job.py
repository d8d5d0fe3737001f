"""Several ``spcl`` command lines in one torchrun launch, for tests/test_ddp.py.

torchrun starts this file on every rank: ``python -m torch.distributed.run ... torchrun_job.py
JOB.json``. The job file holds ``commands`` (argument lists of ``spcl``), ``pids`` (a folder) and
``kill`` (``[path fragment, n]`` or null). Every command runs through :func:`spcl.cli.main` in the
one process group of the launch, so torch's start-up and the rendezvous are paid once, not once per
command; a command that fails ends the job with its exit status.

Each rank writes its own and its launcher's process ids into ``pids``. With ``kill``, rank 0 kills
the whole job with SIGKILL (every launcher and every rank, itself last) at the n-th fsync of a file
whose path holds the fragment: a checkpoint's temporary file is then written but not renamed, as
when a cluster's scheduler kills a job mid-write.

Every rank also saves the teacher it holds when the online stage ends (``teacher.rankR.pt`` beside
``teacher.pth``), so the test can compare the ranks' teachers itself.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import spcl.base
import spcl.context
from spcl.cli import main
from spcl.stages import training

TIMEOUT = datetime.timedelta(seconds=180)  # a rank left alone in a collective fails, not hangs


def _kill_the_job(pids: Path) -> None:
    """SIGKILL every launcher and rank of the job (their ids in ``pids``), this process last."""
    me = os.getpid()
    for record in sorted(pids.glob("rank*.json")):
        ids = json.loads(record.read_text())
        for pid in (ids["launcher"], ids["rank"]):
            if pid != me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    os.kill(me, signal.SIGKILL)


def _arm_kill(fragment: str, nth: int, pids: Path) -> None:
    """Kill the job at the ``nth`` fsync of a file whose path holds ``fragment`` (rank 0)."""
    real_fsync, seen = os.fsync, []

    def fsync(fd: int) -> None:
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            seen.append(fd)
            if len(seen) == nth:
                _kill_the_job(pids)
        real_fsync(fd)

    spcl.base.os.fsync = fsync  # type: ignore[attr-defined]


def _keep_rank_teachers() -> None:
    """Every rank saves the teacher it holds when the online stage writes ``teacher.pth`` (the
    runner of the training stages writes their outputs)."""
    real = training.save_weights

    def save_weights(ctx, model, path):  # type: ignore[no-untyped-def]
        if path.name == "teacher.pth":
            torch.save(model.state_dict(), path.with_name(f"teacher.rank{ctx.rank}.pt"))
        return real(ctx, model, path)

    training.save_weights = save_weights


def run(job_file: Path) -> int:
    job = json.loads(job_file.read_text())
    pids = Path(job["pids"])
    dist.init_process_group("gloo", timeout=TIMEOUT)
    rank = dist.get_rank()
    record = {"rank": os.getpid(), "launcher": os.getppid()}
    (pids / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()  # every id is written before anything can be killed
    if job["kill"] and rank == 0:
        _arm_kill(job["kill"][0], int(job["kill"][1]), pids)
    _keep_rank_teachers()
    spcl.context.shutdown_distributed = lambda: None  # one process group for every command
    for command in job["commands"]:
        status = main(command)
        if status:
            return status
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
