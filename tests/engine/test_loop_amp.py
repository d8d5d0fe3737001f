"""``run.amp``: bf16 autocast on CPU as on CUDA; the loop logs seconds per iteration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from spcl.engine.loop import SECONDS, LoopConfig, train_loop
from spcl.engine.tracking import Tracker


@pytest.mark.parametrize(("amp", "dtype"), [("off", torch.float32), ("bf16", torch.bfloat16),
                                            ("fp16", torch.float32)])  # fmt: skip
def test_cpu_autocast_is_bf16_only(tmp_path: Path, amp: str, dtype: torch.dtype) -> None:
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def step(iteration: int) -> dict[str, torch.Tensor]:
        out = model(torch.ones(3, 4))
        seen.append(out.dtype)
        return {"seg": out.float().pow(2).mean()}

    config = LoopConfig(stop_iter=2, checkpoint=tmp_path / "ckpt.pth", tag="t", amp=amp)
    tracker = Tracker(tmp_path, progress=False)
    train_loop(
        step,
        weights={"seg": 1.0},
        state={"model": model},
        optimizers=[optimizer],
        schedulers=[torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)],
        config=config,
        tracker=tracker,
    )
    tracker.close()
    assert seen == [dtype, dtype]
    assert f"{SECONDS}=" in (tmp_path / "log.txt").read_text()
