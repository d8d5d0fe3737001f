"""Every name in a run directory, in one place.

    RUN/config.yaml          the resolved config of the last command that succeeded
    RUN/env.json             versions, device and command line of the last start
    RUN/log.txt, tensorboard/  the log and TensorBoard events
    RUN/.lock                held while a process works in RUN
    RUN/history/N/           stage folders a re-run replaced (replaced.json says why, config.yaml)
    RUN/01_warmup/ …         one folder per stage (spcl.recipe.STAGES):
        done.json, started.json  the stage's completion record and its start record
        checkpoint.pth           the training loop's checkpoint (training stages)
        model.pth                the trained model it hands on (student.pth, teacher.pth: online)
        prototypes.pth           class prototypes (prototypes; adapt's final ones)
        labels/, thresholds.json, stats.json   pseudo-labels and their thresholds and coverage
        collapse.json            the class-collapse alert's summary
    RUN/08_evaluate/<stage>/metrics.{json,txt,csv}, confusion.png; RUN/08_evaluate/summary.json,
        panels.png

Code that reads or writes a run directory names its files with :class:`RunDir` or the constants
here, never with a string of its own, so a file can be renamed (or found) in one place. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from spcl.base import UsageError
from spcl.recipe import EVALUATION, STAGE_FOLDERS, TRAINED_MODELS, stage

__all__ = [
    "CHECKPOINT_FILE",
    "COLLAPSE_FILE",
    "CONFIG_FILE",
    "CONFUSION_FILE",
    "DONE_FILE",
    "ENV_FILE",
    "HISTORY_DIR",
    "LABELS_DIR",
    "LOCK_FILE",
    "LOG_FILE",
    "METRICS_CSV",
    "METRICS_FILE",
    "METRICS_TABLE",
    "MODEL_FILE",
    "PANELS_FILE",
    "PROTOTYPES_FILE",
    "REPLACED_FILE",
    "STARTED_FILE",
    "STATS_FILE",
    "STUDENT_FILE",
    "SUMMARY_FILE",
    "TEACHER_FILE",
    "TENSORBOARD_DIR",
    "THRESHOLDS_FILE",
    "RunDir",
    "metrics_path",
    "model_path",
]

CONFIG_FILE = "config.yaml"  # the run's resolved config (also in history/N/)
ENV_FILE = "env.json"
LOG_FILE = "log.txt"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
HISTORY_DIR = "history"  # history/N/: stage folders that a re-run replaced
REPLACED_FILE = "replaced.json"  # in history/N/: stage → why it was replaced
DONE_FILE = "done.json"  # a stage's completion record (fingerprint, output, seconds, inputs)
STARTED_FILE = "started.json"  # the fingerprint a stage started with (a resumable partial stage)
CHECKPOINT_FILE = "checkpoint.pth"
MODEL_FILE = stage("warmup").output  # model.pth: the model a training stage hands on
STUDENT_FILE, TEACHER_FILE = "student.pth", "teacher.pth"  # the online stage's two models
PROTOTYPES_FILE = stage("prototypes").output  # prototypes.pth
LABELS_DIR = stage("pseudo_labels").output  # labels/: pseudo-label PNGs
THRESHOLDS_FILE, STATS_FILE = "thresholds.json", "stats.json"  # of the pseudo-label stages
COLLAPSE_FILE = "collapse.json"
METRICS_FILE, METRICS_TABLE, METRICS_CSV = "metrics.json", "metrics.txt", "metrics.csv"
CONFUSION_FILE = "confusion.png"
SUMMARY_FILE = stage(EVALUATION).output  # summary.json: stage → mIoU
PANELS_FILE = "panels.png"  # of the evaluation stage


class RunDir:
    """The paths of one run directory (nothing is created or read here)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def env(self) -> Path:
        return self.root / ENV_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_DIR

    def stage(self, name: str) -> Path:
        """The folder of stage ``name``."""
        return self.root / STAGE_FOLDERS[name]

    def done(self, name: str) -> Path:
        return self.stage(name) / DONE_FILE

    def started(self, name: str) -> Path:
        return self.stage(name) / STARTED_FILE

    def model(self, stage: str) -> Path:
        """The ``model.pth`` a training stage writes.

        Raises:
            UsageError: ``stage`` trains no model.
        """
        _check_trained(stage)
        return self.stage(stage) / MODEL_FILE

    def metrics(self, stage: str) -> Path:
        """The evaluation stage's ``metrics.json`` for the model of ``stage``.

        Raises:
            UsageError: ``stage`` trains no model.
        """
        _check_trained(stage)
        return self.stage(EVALUATION) / stage / METRICS_FILE

    def prototypes(self, stage: str) -> Path:
        """``prototypes.pth`` of the prototypes stage, or adapt's final prototypes."""
        return self.stage(stage) / PROTOTYPES_FILE


def _check_trained(stage: str) -> None:
    if stage not in TRAINED_MODELS:
        raise UsageError(f"stage {stage!r} trains no model; trained models: {TRAINED_MODELS}")


def model_path(run_dir: str | Path, stage: str) -> Path:
    """The ``model.pth`` a training stage writes in a run directory."""
    return RunDir(run_dir).model(stage)


def metrics_path(run_dir: str | Path, stage: str) -> Path:
    """The evaluation stage's ``metrics.json`` for the model of ``stage`` in a run directory."""
    return RunDir(run_dir).metrics(stage)
