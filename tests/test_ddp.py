"""torchrun, 2 CPU processes (gloo): the pipeline completes; prototype banks and teachers agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spcl.data.synthetic import generate_pair
from spcl.experiments.rows import QUICK_OVERRIDES

pytestmark = pytest.mark.slow


def test_two_cpu_ranks_share_prototypes_and_finish(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_pair(data, seed=3, n_train=16, n_val=6, size=(64, 128), preview=False, progress=False)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "spcl",
        "run",
        "demo",
        *QUICK_OVERRIDES,
        f"data.source.root={data}",
        f"data.target.root={data}",
        f"data.target_val.root={data}",
        "run.device=cpu",
        "run.progress=false",
        "adapt.optim.batch_size=2",
        "run.stages=[warmup, prototypes, pseudo_labels, adapt, pseudo_labels_2, self_train, "
        "online, evaluate]",
        "online.init=warmup",
        "online.masking.enabled=true",
        "online.contrast.source=true",
        "online.contrast.target=true",
        f"run.out={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "prototype banks of 2 ranks: max difference 0" in log
    assert "teachers of 2 ranks: max difference 0" in log
    env_record = json.loads((out / "env.json").read_text())
    assert env_record["world_size"] == 2
    summary = json.loads((out / "08_evaluate" / "summary.json").read_text())
    assert set(summary) == {"warmup", "adapt", "self_train", "online"}
