"""RunContext: what every stage needs to know about the run, built once by the CLI or the demo."""

from __future__ import annotations

import json
import os
import platform
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from spcl import __version__
from spcl.base import atomic_write_bytes
from spcl.config_schema import Config
from spcl.engine.distributed import (
    init_distributed,
    is_main,
    rank,
    resolve_device,
    shutdown_distributed,
    world_size,
)
from spcl.engine.tracking import Tracker
from spcl.run_dir import RunDir

if TYPE_CHECKING:
    from spcl.data.labels import ClassTable

__all__ = ["RunContext", "open_run", "seed_everything"]


@dataclass
class RunContext:
    """The resolved config, the run directory, the device and the process's place in torchrun."""

    config: Config
    run_dir: Path
    device: torch.device
    tracker: Tracker
    rank: int = 0
    world: int = 1
    classes: ClassTable | None = None  # the run's class table, read from the source dataset once

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def environment(device: torch.device) -> dict[str, object]:
    """Versions, device and process layout, for the run's ``env.json``."""
    env: dict[str, object] = {
        "spcl": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "world_size": world_size(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@contextmanager
def open_run(config: Config, run_dir: Path | None = None) -> Iterator[RunContext]:
    """Set up device, torchrun, seeds and tracker; save the environment.

    ``config.yaml`` is written by :func:`spcl.pipeline.run_pipeline`: in a new run directory once
    the run has started well (its data and classes checked), in an existing one once the command
    has succeeded; a run that fails at its start leaves none.
    """
    run_dir = Path(run_dir or config.run.out)
    device = resolve_device(config.run.device)
    init_distributed(device)
    seed_everything(config.run.seed + rank(), config.run.deterministic)
    tracker = Tracker(run_dir, enabled=is_main(), progress=config.run.progress)
    try:
        if is_main():
            env = json.dumps(environment(device), indent=2).encode()
            atomic_write_bytes(RunDir(run_dir).env, env)
        yield RunContext(config, run_dir, device, tracker, rank(), world_size())
    finally:
        tracker.close()
        shutdown_distributed()
