"""The class-collapse alert of the online and self-training stages: a class that fades to nothing.

Self-training can lose a class for good on one seed (lhoyer/MIC#9: 'train' at IoU 0 on one of three
seeds), and the loss curves do not show it. This watches, without changing training (no random
draw, no extra forward pass, no gradient):

* the **pseudo-label share** of each class in the online stage: its pixels among the teacher's
  pseudo-labels that train the student (weight > 0), counted with ``bincount`` on the labels the
  step made anyway, summed over ``run.collapse_every`` iterations (and over ranks);
* the **predicted share** in self-training: the same count on the argmax of the logits the step
  computed (its pseudo-labels are fixed files; the model's own predictions are what collapses);
* the **validation IoU** of each class, at each validation (``run.val_every``), when it runs.

A class that was above ``run.collapse_share`` at some check and stays below it for
``run.collapse_checks`` checks in a row is named in ``log.txt``, in TensorBoard (text
``TAG/collapse`` and the shares under ``TAG/share``) and in the stage's ``collapse.json``, which
is rewritten at each check and at the end (alerts, the classes in collapse, the streaks). A class
absent from the target from the start is never "collapsed". After a restart the streaks continue
from ``collapse.json`` when it is not ahead of the checkpoint; otherwise they start again, and
alerts made after the checkpoint are dropped (the iterations run again).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spcl.base import atomic_write_bytes
from spcl.context import RunContext
from spcl.engine.distributed import all_reduce_sum_
from spcl.evaluation.scores import SegmentationScores
from spcl.run_dir import COLLAPSE_FILE
from spcl.run_state import read_json
from spcl.stages.class_sets import class_table

__all__ = ["PREDICTED_SHARE", "PSEUDO_LABEL_SHARE", "VAL_IOU", "CollapseAlert"]

PSEUDO_LABEL_SHARE = "pseudo-label share"  # the online stage's signal
PREDICTED_SHARE = "predicted share"  # self-training's signal
VAL_IOU = "val IoU"  # the validation's signal (IoU as a fraction)


@dataclass
class _Streaks:
    """Per class of one signal: seen above the threshold, checks below it in a row, last good."""

    seen: list[bool]
    low: list[int]
    last_good: list[tuple[int, float] | None]  # (iteration, value) of the last check above
    checks: int = 0

    @classmethod
    def empty(cls, k: int) -> _Streaks:
        return cls([False] * k, [0] * k, [None] * k)


@dataclass
class _State:
    streaks: dict[str, _Streaks]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    last_check: int = 0


def _percent(value: float) -> str:
    return f"{100 * value:.2g}%"


class CollapseAlert:
    """Watches one stage for classes that collapse (see the module docstring).

    Args:
        ctx: the run (its ``run.collapse_*`` settings, class table, tracker, device).
        out_dir: the stage folder (``collapse.json`` goes there).
        tag: the stage name (log prefix, TensorBoard tag).
        signal: :data:`PSEUDO_LABEL_SHARE` or :data:`PREDICTED_SHARE`.
        stop_iter: the stage's last iteration (the summary is written then).
    """

    def __init__(
        self, ctx: RunContext, out_dir: Path, tag: str, signal: str, stop_iter: int
    ) -> None:
        run = ctx.config.run
        self.ctx, self.tag, self.signal, self.stop_iter = ctx, tag, signal, stop_iter
        self.every, self.patience, self.threshold = (
            run.collapse_every,
            run.collapse_checks,
            run.collapse_share,
        )
        self.names = class_table(ctx).names
        self.path = out_dir / COLLAPSE_FILE
        k = len(self.names)
        self.counts = torch.zeros(k, dtype=torch.int64, device=ctx.device)
        self.state = _State({signal: _Streaks.empty(k), VAL_IOU: _Streaks.empty(k)})
        self._resumed = False

    def observe(self, labels: Tensor, weight: Tensor | None = None) -> None:
        """Count the class ids of ``labels`` (where ``weight`` > 0); no sync with the host."""
        if self.every <= 0:
            return
        kept = labels.detach() if weight is None else labels.detach()[weight.detach() > 0]
        k = len(self.names)
        self.counts += torch.bincount(kept.reshape(-1), minlength=k)[:k]

    def after_step(self, done: int) -> None:
        """The loop's hook: a share check every ``collapse_every`` steps, the summary at the end."""
        if not self._resumed:
            self._resume(done - 1)
        if self.every > 0 and done % self.every == 0:
            counts = all_reduce_sum_(self.counts.clone()).cpu()
            self.counts.zero_()
            total = int(counts.sum())
            if total:
                shares = (counts.double() / total).tolist()
                scalars = {n: 100 * s for n, s in zip(self.names, shares, strict=True)}
                self.ctx.tracker.scalars(f"{self.tag}/share", scalars, done)
                self._update(self.signal, shares, done)
        if done == self.stop_iter:
            self._finish(done)

    def validated(self, done: int, scores: SegmentationScores) -> None:
        """A validation's per-class IoU (``validation_hooks``' ``on_scores``)."""
        if self.every <= 0:
            return
        ious = [None if math.isnan(v) else v / 100 for v in scores.iou]
        self._update(VAL_IOU, ious, done)

    def _update(self, signal: str, values: Sequence[float | None], done: int) -> None:
        streaks = self.state.streaks[signal]
        streaks.checks += 1
        for k, value in enumerate(values):
            if value is None:
                continue  # absent from the validation split
            if value >= self.threshold:
                if streaks.low[k] >= self.patience:
                    back = f"class '{self.names[k]}' is back: {signal} {_percent(value)}"
                    self._say(back, done, warning=False)
                streaks.seen[k], streaks.low[k], streaks.last_good[k] = True, 0, (done, value)
            elif streaks.seen[k]:
                streaks.low[k] += 1
                if streaks.low[k] == self.patience:
                    self._alert(signal, k, value, done)
        self.state.last_check = done
        self._write()

    def _alert(self, signal: str, k: int, value: float, done: int) -> None:
        good = self.state.streaks[signal].last_good[k]
        before = f"; it was {_percent(good[1])} at iteration {good[0]}" if good else ""
        self._say(
            f"class collapse: '{self.names[k]}' has had a {signal} below "
            f"{_percent(self.threshold)} for {self.patience} checks in a row (now "
            f"{_percent(value)}){before}; see {self.path}",
            done,
        )
        self.state.alerts.append(
            {"class": self.names[k], "signal": signal, "iteration": done, "value": value}
        )

    def _say(self, message: str, done: int, warning: bool = True) -> None:
        say = self.ctx.tracker.warning if warning else self.ctx.tracker.info
        say(f"[{self.tag}] iteration {done}: {message}")
        self.ctx.tracker.text(f"{self.tag}/collapse", message, done)

    def collapsed(self) -> list[str]:
        """The classes in collapse at the last check (any signal)."""
        low = [s.low for s in self.state.streaks.values()]
        return [n for k, n in enumerate(self.names) if any(r[k] >= self.patience for r in low)]

    def _finish(self, done: int) -> None:
        self._write()
        still = self.collapsed()
        if still:
            self._say(f"the stage ends with class(es) {still} in collapse ({self.path})", done)

    def _write(self) -> None:
        if not self.ctx.is_main or self.every <= 0:
            return
        summary = {
            "signal": self.signal,
            "collapse_every": self.every,
            "collapse_checks": self.patience,
            "collapse_share": self.threshold,
            "last_check": self.state.last_check,
            "collapsed": self.collapsed(),
            "alerts": self.state.alerts,
            "streaks": {name: asdict(s) for name, s in self.state.streaks.items()},
        }
        atomic_write_bytes(self.path, json.dumps(summary, indent=2).encode())

    def _resume(self, resumed: int) -> None:
        """Take up ``collapse.json`` of an interrupted run of this stage (see the docstring)."""
        self._resumed = True
        saved = read_json(self.path) if resumed > 0 else None
        if not saved:
            return
        self.state.alerts = [a for a in saved.get("alerts", []) if a["iteration"] <= resumed]
        if saved.get("last_check", resumed + 1) <= resumed:
            for name, streak in saved.get("streaks", {}).items():
                last = [tuple(g) if g else None for g in streak["last_good"]]
                self.state.streaks[name] = _Streaks(
                    streak["seen"], streak["low"], last, streak["checks"]
                )
            self.state.last_check = saved["last_check"]
