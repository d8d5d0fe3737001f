"""What a run directory records and guards: the stage fingerprints and the lock.

A stage's fingerprint hashes the config sections its result depends on and the fingerprints of the
stages it reads (:func:`fingerprint`; the stages and their sections: :mod:`spcl.recipe`);
``done.json`` keeps it, and a re-run compares (:mod:`spcl.pipeline`). Keys that never change a
result (``NOT_SEMANTIC``) are left out, and so
are keys added after runs were made while they hold the value that computes what runs did before
them (``NEUTRAL_DEFAULTS``): an upgrade does not invalidate finished runs. The lock
(:func:`run_lock`) keeps a second process out of a run directory in use. Torch-free.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spcl.base import UserError
from spcl.config import config_to_dict
from spcl.config_schema import Config
from spcl.recipe import Stage
from spcl.run_dir import DONE_FILE, LOCK_FILE, STARTED_FILE

__all__ = [
    "NEUTRAL_DEFAULTS",
    "NOT_SEMANTIC",
    "RECORD_FIELDS",
    "RunLockedError",
    "RunStateError",
    "fingerprint",
    "read_json",
    "run_lock",
    "stage_config",
]

NOT_SEMANTIC = ("data.num_workers", "data.on_error")  # keys that never change a stage's result
# (on_error decides whether a bad file stops the stage; on good data both finish the same)
NEUTRAL_DEFAULTS: dict[str, Any] = {  # keys added after runs were made, left out of the
    # fingerprints while they hold the value that computes what runs did before them, so a
    # finished run stays finished after an upgrade (any other value is part of the fingerprint)
    "online.source_crop_max_share": 1.0,
    "online.pseudo.class_balanced_crop": False,
    "online.pseudo.regenerate": True,
    "online.contrast.loss": "proto",
    "online.contrast.statistics": "ema",
    "online.contrast.memory_length": 200,
    "online.contrast.regularizer": 0.0,
    "online.contrast.labels": "nearest",
    "online.contrast.label_min_ratio": 0.75,
    "online.contrast.augment_source": False,
    "online.pseudo.margins": [],
    "online.hrda": {  # HRDA off (spcl.config_schema.HRDAConfig's defaults)
        "enabled": False,
        "context_scale": 0.5,
        "detail_crop": [512, 512],
        "crop_divisible": 8,
        "detail_loss_weight": 0.1,
        "attention": "classwise",
        "slide_overlap": True,
    },
    "online.source_only": False,
    "online.backward": "joint",
    "online.scale_range": [],
    "online.pad": "center",
    "online.mix.augment": "dacs",
    "data.target_labels.list_file": "",
    "data.target_labels.fraction": 0.0,
    "data.target_labels.seed": 0,
    "data.target_labels.weight": 1.0,
    "online.source_augment": "none",
    "online.pseudo.flip_average": False,
    "online.distill.weight_source": 0.0,
    "online.distill.weight_target": 0.0,
    "online.distill.model": "dinov2_vitl14_reg",
    "online.distill.pretrained": "",
    "online.distill.input_size": 406,
    "online.distill.student_augment": "weak",
    **{
        f"{stage}.optim.{key}": value
        for stage in ("warmup", "adapt", "self_train", "online")
        for key, value in (("lr_batch_scaling", "none"), ("warmup_mode", "mmcv"))
    },
    **{
        f"data.{d}.{key}": value
        for d in ("source", "target", "target_val")
        for key, value in (("rcs_min_crop_ratio", 0.0), ("max_items", 0), ("rcs_joint_tries", 0))
    },
}


RECORD_FIELDS: dict[str, tuple[dict[str, type], dict[str, type]]] = {  # a stage record's
    # (required, optional) fields and their types, checked when it is read (older records may
    # lack the optional ones)
    DONE_FILE: ({"fingerprint": str, "output": str}, {"config": dict, "upstream": dict}),
    STARTED_FILE: ({"fingerprint": str}, {}),
}
AGAIN = "delete it to run the stage again"  # what to do about a damaged record


class RunLockedError(UserError, RuntimeError):
    """Another process holds the run directory."""


class RunStateError(UserError, ValueError):
    """A record of the run directory (``done.json``, ``started.json``) was edited or damaged."""


def _section(config_dict: dict[str, Any], dotted: str) -> Any:
    node: Any = config_dict
    for part in dotted.split("."):
        node = node[part]
    return node


def _has(config_dict: dict[str, Any], dotted: str) -> bool:
    """Whether the dotted section is in the tree (a whole section may have been left out)."""
    node: Any = config_dict
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def stage_config(stage: Stage, config: Config) -> dict[str, Any]:
    """The config sections a stage's result depends on (``NOT_SEMANTIC`` keys left out, and
    ``NEUTRAL_DEFAULTS`` keys at their neutral value)."""
    tree = config_to_dict(config)
    for dotted in NOT_SEMANTIC:
        parent, _, leaf = dotted.rpartition(".")
        _section(tree, parent).pop(leaf, None)
    for dotted, neutral in NEUTRAL_DEFAULTS.items():
        parent, _, leaf = dotted.rpartition(".")
        section = _section(tree, parent) if _has(tree, parent) else {}
        if leaf in section and section[leaf] == neutral:
            del section[leaf]
            if not section and "." in parent:  # a section added whole, at its neutral values
                grand, _, name = parent.rpartition(".")
                del _section(tree, grand)[name]
    return {s: _section(tree, s) for s in stage.sections}


def fingerprint(stage: Stage, config: Config, upstream: dict[str, str]) -> str:
    """Hash of what the stage's result depends on: its config sections and upstream results."""
    payload = {"stage": stage.name, "config": stage_config(stage, config), "upstream": upstream}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the duration (released by the OS even after kill -9).

    Raises:
        RunLockedError: another process holds it (names the directory and that process's pid).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise RunLockedError(
                f"run directory {run_dir} is in use by another spcl process (pid {pid}); "
                f"wait for it to finish or use another run.out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def _type_name(value: Any) -> str:
    """How JSON calls a value's type (or a type): an object, a list, a string, int, …"""
    kind = value if isinstance(value, type) else type(value)
    return {dict: "an object", list: "a list", str: "a string"}.get(kind, kind.__name__)


def _check_record(path: Path, record: dict[str, Any]) -> None:
    """Refuse a stage record without a field it needs, or with one of another type."""
    required, optional = RECORD_FIELDS.get(path.name, ({}, {}))
    for field, kind in {**required, **optional}.items():
        if field not in record and field in optional:
            continue
        if not isinstance(record.get(field), kind):
            found = _type_name(record[field]) if field in record else "nothing"
            raise RunStateError(
                f"{path}: '{field}' must be {_type_name(kind)}, found {found}; {AGAIN}"
            )


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is absent or torn.

    A stage record (``done.json``, ``started.json``) must also hold its fields with their types
    (:data:`RECORD_FIELDS`): an edited record is named here, not met as a ``KeyError`` later.

    Raises:
        RunStateError: valid JSON that is not an object, or a record without a field it needs
            (the message names the file and says to delete it to run the stage again).
    """
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(value, dict):
        raise RunStateError(
            f"{path}: holds {_type_name(value)}, not the JSON object spcl writes there; {AGAIN}"
        )
    _check_record(path, value)
    return value
