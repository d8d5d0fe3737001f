"""Exact resume for the transformer families: kill -9 at several points of the online stage, then
the same command, ends with every weight bit-identical to an uninterrupted run (CPU).

MiT runs with Dropout and DropPath on (raised above the published 0.1 so that every step draws
masks); its online stage starts from the warm-up, so the first kill, before the stage's first
checkpoint, also checks that the stage starts again exactly after a finished one. DINOv2 has
neither (nor has the official model in training), and runs from ``online.init: pretrained``.
``sepico_bankcl`` resumes SePiCo's class statistics (DeepLab, BankCL with a ring that wraps).
MiT under HRDA (``online.hrda``) adds the detail windows each student pass draws.
``vfmudapp`` runs every VFM-UDA++ switch (ViT-Adapter, strong source augmentation, flip-averaged
labels, feature distillation to a frozen DINOv2 whose head is checkpointed).
The DeepLab case is tests/test_online_stage.py's kill test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from official_layouts import dinov2_layout, random_tensors, save_state
from spcl import base, cli
from spcl.data.synthetic import generate_pair
from test_faults import INJECT
from tiny import TINY

pytestmark = pytest.mark.slow

FAMILIES = {
    "mit": (
        "model.name=daformer_mit_b0",
        "model.options={drop_path_rate: 0.3, dropout: 0.3}",
        "online.init=warmup",
        "run.stages=[warmup, online]",
    ),
    "dinov2": ("model.name=dinov2_vits14", "online.init=pretrained", "run.stages=[online]"),
    "sepico_bankcl": (  # DeepLab with SePiCo's statistics, whose BankCL ring wraps (length 2)
        "online.init=pretrained",
        "run.stages=[online]",
        "online.contrast.source=true",
        "online.contrast.target=true",
        "online.contrast.start_iter=0",
        "online.contrast.statistics=cumulative",
        "online.contrast.loss=bank",
        "online.contrast.memory_length=2",
        "online.contrast.labels=ratio",
        "online.contrast.regularizer=1.0",
        "online.contrast.augment_source=true",
        "online.pseudo.weight=none",
    ),
    # HRDA: each student pass draws a detail window from the step's generator; MIC masks too
    "mit_hrda": (
        "model.name=daformer_mit_b0",
        "online.init=warmup",
        "run.stages=[warmup, online]",
        "online.hrda.enabled=true",
        "online.hrda.detail_crop=[32,64]",
        "online.masking.enabled=true",
    ),
    "vfmudapp": (
        "model.name=vfmudapp_vits14",
        "online.init=pretrained",
        "run.stages=[online]",
        "online.crop=[32, 32]",
        "online.source_augment=strong",
        "online.pseudo.flip_average=true",
        "online.masking.enabled=true",
        "online.masking.block_size=4",
        "online.optim.layer_decay=0.9",
        "online.optim.lr_batch_scaling=sqrt",
        "online.distill.weight_source=0.1",
        "online.distill.weight_target=0.1",
        "online.distill.model=dinov2_vits14_reg",
        "online.distill.input_size=28",
    ),
}
KILL_POINTS = (
    ("07_online/.checkpoint.pth", 1),  # the first checkpoint: the stage starts again
    ("07_online/.checkpoint.pth", 3),  # a later one: it resumes from the one before
    ("07_online/.teacher.pth", 1),  # after the last step, while the weights are written
)  # each run is killed there, the next one goes on from it


def _frozen(folder: Path) -> list[str]:
    """The frozen DINOv2 file of the distillation (random, in the official layout)."""
    state = random_tensors(dinov2_layout("vits14", registers=True), seed=0)
    path = save_state(state, folder / "dinov2_vits14_reg4_pretrain.pth")
    return [f"online.distill.pretrained={path}"]


def _args(data: Path, out: Path, family: str, extra: list[str]) -> list[str]:
    return [
        "run",
        "demo",
        *TINY,
        *(f"data.{d}.root={data}" for d in ("source", "target", "target_val")),
        "warmup.adversarial=false",
        "online.optim.max_iter=5",
        "online.optim.stop_iter=5",
        "online.optim.batch_size=2",
        "run.ckpt_every=1",
        *FAMILIES[family],
        *extra,
        f"run.out={out}",
    ]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kill_9_at_three_points_of_the_online_stage_then_rerun_is_bit_identical(
    tmp_path: Path, family: str
) -> None:
    data = generate_pair(
        tmp_path / "data", seed=6, n_train=4, n_val=2, size=(64, 128), preview=False
    )
    straight, out = tmp_path / "straight", tmp_path / "killed"
    extra = _frozen(tmp_path) if family == "vfmudapp" else []
    assert cli.main(_args(data, straight, family, extra)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(base.__file__).parents[1])}
    for match, nth in KILL_POINTS:
        killed = subprocess.run(
            [sys.executable, "-c", INJECT, match, str(nth), *_args(data, out, family, extra)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert killed.returncode == -signal.SIGKILL, (match, killed.stderr[-2000:])
    assert cli.main(_args(data, out, family, extra)) == 0
    log = (out / "log.txt").read_text()
    assert "[online] resumed from" in log and "at iteration 2" in log and "iteration 5" in log
    for name in ("student.pth", "teacher.pth"):
        a = torch.load(straight / "07_online" / name, weights_only=True)["model"]
        b = torch.load(out / "07_online" / name, weights_only=True)["model"]
        assert a.keys() == b.keys()
        differ = [key for key in a if not torch.equal(a[key], b[key])]
        assert not differ, f"{name}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
