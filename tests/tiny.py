"""Overrides of the demo config that make a pipeline run tiny (for tests; numbers mean nothing)."""

from __future__ import annotations

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
