"""Every shipped recipe has its own source-only run: one override set that keeps the model, init,
augmentation and schedule and trains on the source alone (docs/shipped_configs.md)."""

from __future__ import annotations

import pytest

from spcl.config import PACKAGED_CONFIGS, load_config
from spcl.experiments.rows import source_only_overrides
from spcl.stages.start_checks import reads_target

ROOTS = [
    "data.source.root=/s",
    "data.target.root=/t",
    "data.target_val.root=/t",
    "model.pretrained=/w",
]
SHIPPED = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
KEPT = ("model", "warmup.optim", "online.optim", "online.crop", "online.hflip")  # unchanged


def _get(config: object, dotted: str) -> object:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_config_has_its_source_only_run(name: str) -> None:
    recipe = load_config(name, ROOTS)
    alone = load_config(name, [*ROOTS, *source_only_overrides(recipe)])
    if "online" in recipe.run.stages:  # the online recipe, its target terms off
        assert alone.online.source_only and alone.run.stages == recipe.run.stages
        assert alone.data.source == recipe.data.source  # same sampling and sizes
    else:  # the SPCL chain: its warm-up without the adversarial term, then evaluated
        assert alone.run.stages == ["warmup", "evaluate"] and not alone.warmup.adversarial
        assert not reads_target(alone)
    for key in KEPT:
        assert _get(alone, key) == _get(recipe, key), key
