"""Overrides of the demo config that make a pipeline run tiny (for tests; numbers mean nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY = (
    "run.progress=false",
    "data.num_workers=0",
    "data.synthetic.generate=false",
    "model.width=8",
    "warmup.optim.max_iter=2",
    "warmup.optim.stop_iter=2",
    "warmup.optim.batch_size=2",
    "adapt.optim.batch_size=2",
)


def tiny_warmup(root: Path, seed: int, n_train: int) -> dict[str, Any]:
    """A tiny generated pair under ``root`` and a finished 2-step source-only warm-up on it:
    ``data`` (the pair's folder), ``overrides`` (for the online stage that starts from it),
    ``warmup`` (the stage's outputs) and ``root``."""
    from spcl.config import load_config
    from spcl.context import open_run
    from spcl.data.synthetic import generate_pair
    from spcl.pipeline import run_pipeline

    data = generate_pair(
        root / "data",
        seed=seed,
        n_train=n_train,
        n_val=2,
        size=(64, 128),
        preview=False,
        progress=False,
    )
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    overrides = [*TINY, *roots, "warmup.adversarial=false", "online.init=warmup"]
    overrides += ["online.optim.batch_size=2"]
    config = load_config("demo", [*overrides, "run.stages=[warmup]", f"run.out={root / 'w'}"])
    with open_run(config) as ctx:
        outputs = run_pipeline(ctx)
    return {"data": data, "overrides": overrides, "warmup": outputs["warmup"], "root": root}
