"""The recipe as data: every stage a run can have, in order, with what it reads and writes.

    warmup → prototypes(warmup) → pseudo_labels(warmup) → adapt → pseudo_labels_2(adapt)
           → self_train → online([warmup]) → evaluate

Each row says where the stage writes (its folder in the run directory), which config sections its
result depends on (they enter its fingerprint, :mod:`spcl.run_state`), which stages it reads, the
module that runs it and the file or folder it hands on. :mod:`spcl.pipeline` plans and runs the
rows; :mod:`spcl.run_dir` owns the paths. A stage's module exposes ``run(ctx, out_dir, inputs)``:
``inputs`` maps the name of every stage it reads (:func:`stage_inputs`) to that stage's output, and
it returns the path of its own output (``out_dir / output``).

Torch-free, and it imports nothing of spcl but :mod:`spcl.base`, so the command line, the config
schema and the run-state records can all read it without loading a model or an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spcl.base import ConfigError

if TYPE_CHECKING:
    from spcl.config_schema import Config

__all__ = [
    "EVALUATION",
    "ONLINE",
    "STAGES",
    "STAGE_FOLDERS",
    "STAGE_NAMES",
    "TRAINED_MODELS",
    "Stage",
    "plan",
    "stage",
    "stage_by_folder",
    "stage_inputs",
]


@dataclass(frozen=True)
class Stage:
    """One step of the recipe.

    Attributes:
        name: stage name (``run.stages``, ``--from``, ``--only``).
        folder: its folder in the run directory.
        sections: dotted config sections its result depends on.
        needs: stages whose outputs it may read (:func:`stage_inputs` says which it does read).
        module: the module under ``spcl.stages`` whose ``run(ctx, out_dir, inputs)`` runs it
            (imported when the stage runs: it imports torch).
        output: what it hands on, relative to its folder (``done.json`` records it).
    """

    name: str
    folder: str
    sections: tuple[str, ...]
    needs: tuple[str, ...]
    module: str
    output: str


_COMMON = ("model", "data", "run.seed")  # what every stage's result depends on
STAGES: tuple[Stage, ...] = (
    Stage("warmup", "01_warmup", (*_COMMON, "warmup"), (), "warmup", "model.pth"),
    Stage("prototypes", "02_prototypes", _COMMON, ("warmup",), "prototypes", "prototypes.pth"),
    Stage(
        "pseudo_labels",
        "03_pseudo_labels",
        (*_COMMON, "pseudo_labels"),
        ("warmup",),
        "pseudo_labels",
        "labels",
    ),
    Stage(
        "adapt",
        "04_adapt",
        (*_COMMON, "adapt"),
        ("warmup", "prototypes", "pseudo_labels"),
        "adapt",
        "model.pth",
    ),
    Stage(
        "pseudo_labels_2",
        "05_pseudo_labels",
        (*_COMMON, "pseudo_labels"),
        ("adapt",),
        "pseudo_labels",
        "labels",
    ),
    Stage(
        "self_train",
        "06_self_train",
        (*_COMMON, "self_train"),
        ("adapt", "pseudo_labels_2"),
        "self_train",
        "model.pth",
    ),
    Stage(
        "online",
        "07_online",
        (*_COMMON, "online"),
        ("warmup",),  # with online.init=warmup only
        "online",
        "model.pth",
    ),
    Stage(
        "evaluate",
        "08_evaluate",
        ("model", "data", "evaluate"),
        ("warmup", "adapt", "self_train", "online"),  # those of them that the run has
        "evaluate",
        "summary.json",
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)  # in order
STAGE_FOLDERS = {s.name: s.folder for s in STAGES}  # stage name → its folder in a run directory
TRAINED_MODELS = ("warmup", "adapt", "self_train", "online")  # stages whose output is a model
EVALUATION = "evaluate"  # the stage that scores the trained models
ONLINE = "online"  # the EMA-teacher stage, whose input depends on online.init
_BY_NAME = {s.name: s for s in STAGES}
_BY_FOLDER = {s.folder: s for s in STAGES}


def stage(name: str) -> Stage:
    """The row of stage ``name`` (a name of :data:`STAGE_NAMES`)."""
    return _BY_NAME[name]


def stage_by_folder(folder: str) -> Stage | None:
    """The stage that writes into a run directory's ``folder`` (None: no stage's folder)."""
    return _BY_FOLDER.get(folder)


def plan(config: Config) -> list[Stage]:
    """The stages this config runs, in order; checks that each has what it reads.

    Raises:
        ConfigError: an unknown stage name, or a stage without a stage it needs.
    """
    wanted = list(config.run.stages)
    unknown = [n for n in wanted if n not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"run.stages: unknown stage(s) {unknown}; valid: {list(STAGE_NAMES)}")
    chosen = [s for s in STAGES if s.name in wanted]
    for row in chosen:
        missing = [n for n in stage_inputs(row, config) if n not in wanted]
        if missing:
            raise ConfigError(f"run.stages: '{row.name}' needs {missing}; add them to run.stages")
    return chosen


def stage_inputs(row: Stage, config: Config) -> tuple[str, ...]:
    """The stages whose outputs ``row`` reads under ``config`` (its fingerprint's upstream).

    The evaluation reads every trained model the run has (at least one); the online stage reads
    the warm-up only when it starts from it (``online.init: warmup``).
    """
    if row.name == EVALUATION:
        wanted = config.run.stages
        return tuple(n for n in row.needs if n in wanted) or ("warmup",)
    if row.name == ONLINE:
        return row.needs if config.online.init == "warmup" else ()
    return row.needs
