"""Gradient accumulation in the stages: k micro-batches of b images give the weights one step on
k·b images gives, for a model without batch statistics (DeepLab-v2 with frozen BatchNorm), in the
warm-up and in the online stage; the schedule and the EMA teacher move once per optimiser step.

What the test switches off is what makes micro-batches differ from one large batch by design, as
they differ between the GPUs of a multi-GPU run: the step's random draws (mixing, jitter, blur,
mask blocks; each micro-batch draws its own, as each GPU does) and the ignore label (a mean over
the labelled pixels of each micro-batch, as over those of each GPU; docs/distributed.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from spcl.config import load_config
from spcl.context import open_run
from spcl.data.synthetic import generate_pair
from spcl.pipeline import run_pipeline
from spcl.stages import online, warmup
from spcl.stages.training import train
from tiny import TINY

BATCH, MICRO = 4, 2  # one step on 4 images, or 2 micro-batches of 2
FROZEN = ("model.freeze_bn=true", "online.freeze_bn=true")  # no batch statistics anywhere
SGD = "optim.optimizer=sgd"  # Adam's first step is lr·sign(g): it would magnify rounding noise
NO_DRAWS = (  # the online step's draws leave every image as it is
    "online.mix.enabled=false",
    "online.mix.color_jitter_p=0",
    "online.mix.blur=false",
    "online.masking.enabled=true",
    "online.masking.ratio=0",
    "online.pseudo.weight=none",
    "online.hflip=false",
)


def _without_ignore(root: Path) -> None:
    """Relabel ignored pixels as class 0, so every micro-batch has the same labelled pixels."""
    for path in root.glob("*/labels/*/*.png"):
        label = np.array(Image.open(path))
        label[label == 255] = 0
        Image.fromarray(label).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny pair without ignore labels and a 2-step frozen-BN warm-up to start online from."""
    root = tmp_path_factory.mktemp("accum")
    data = generate_pair(
        root / "data", seed=4, n_train=8, n_val=2, size=(64, 128), preview=False, progress=False
    )
    _without_ignore(data)
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    overrides = [*TINY, *roots, *FROZEN, "warmup.adversarial=false", "online.init=warmup"]
    config = load_config("demo", [*overrides, "run.stages=[warmup]", f"run.out={root / 'w'}"])
    with open_run(config) as ctx:
        outputs = run_pipeline(ctx)
    return {"overrides": overrides, "warmup": outputs["warmup"]}


def _one_step(world: dict, out: Path, stage: str, batch: int, accum: int) -> dict[str, Any]:
    """Train ``stage`` for one optimiser step of ``accum`` micro-batches of ``batch`` images."""
    sizes = [f"{stage}.optim.{k}={v}" for k, v in (("batch_size", batch), ("grad_accum", accum))]
    steps = [f"{stage}.optim.max_iter=4", f"{stage}.optim.stop_iter=1", f"{stage}.{SGD}"]
    extra = [*sizes, *steps, *(NO_DRAWS if stage == "online" else ())]
    config = load_config("demo", [*world["overrides"], *extra, f"run.out={out}"])
    module = online if stage == "online" else warmup
    with open_run(config) as ctx:
        setup = module.setup(ctx, out / stage, {"warmup": world["warmup"]})
        train(ctx, out / stage, setup)
    got = {"model": setup.state["model"].state_dict(), "lr": setup.schedulers[0].last_epoch}
    if "teacher" in setup.state:
        got["teacher"] = setup.state["teacher"].state_dict()
    return got


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key, value in a.items():
        if value.is_floating_point():
            torch.testing.assert_close(b[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("stage", ["warmup", "online"])
def test_accumulated_micro_batches_equal_the_large_batch(world, tmp_path: Path, stage) -> None:
    large = _one_step(world, tmp_path / "large", stage, BATCH, 1)
    split = _one_step(world, tmp_path / "split", stage, MICRO, BATCH // MICRO)
    start = torch.load(world["warmup"], map_location="cpu", weights_only=False)["model"]
    moved = [k for k, v in start.items() if not torch.equal(v, large["model"][k])]
    assert moved  # the step changed the weights, so equal weights mean equal gradients
    _assert_same(large["model"], split["model"])
    assert large["lr"] == split["lr"] == 1  # the schedule stepped once, not once per micro-batch
    if stage == "online":  # the teacher moved once: α_1 = 0.5 toward the same student
        _assert_same(large["teacher"], split["teacher"])


def test_micro_batches_are_not_one_batch_repeated(world, tmp_path: Path) -> None:
    """The comparison above can fail: one micro-batch of 2 repeated is not the batch of 4."""
    large = _one_step(world, tmp_path / "large", "warmup", BATCH, 1)
    half = _one_step(world, tmp_path / "half", "warmup", MICRO, 1)
    with pytest.raises(AssertionError):
        _assert_same(large["model"], half["model"])
