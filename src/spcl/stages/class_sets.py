"""The run's one class set: the source's class table, checked against every other side.

When a run starts (:func:`spcl.pipeline.prepare_data`) the config's ``data.num_classes``, the
source's class table, the labelled target split, the unlabelled target (where its reader knows a
table) and a ``model.pretrained`` model file are compared; ``spcl evaluate MODEL`` compares the
model file with the split it scores. Every mismatch names both sides and their classes.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spcl.base import CheckpointError, ConfigError, MissingFileError, UnknownNameError
from spcl.config_schema import DataConfig, DomainConfig
from spcl.context import RunContext
from spcl.data.labels import ClassTable
from spcl.data.registry import scan_dataset
from spcl.engine.checkpoint import load_errors
from spcl.model_catalog import unknown_model
from spcl.models.build import MODEL_REGISTRY
from spcl.models.model_meta import checked_arch, checked_class_table

__all__ = [
    "check_class_sets",
    "check_model_classes",
    "check_model_name",
    "class_table",
    "run_class_table",
]


def _domain_table(domain: DomainConfig) -> ClassTable:
    """The class table of a labelled domain's reader (e.g. a folder's classes.yaml)."""
    files = scan_dataset(
        domain.kind, domain.root, domain.split, with_labels=True, warn=False, **domain.options
    )
    return files.table


def _describe(domain: DomainConfig) -> str:
    where = f"{domain.kind} dataset at {domain.root} (split {domain.split})"
    if domain.kind == "folder":
        table = domain.options.get("class_file") or Path(domain.root) / "classes.yaml"
        where += f", class table {table}"
    return where


def run_class_table(data: DataConfig) -> ClassTable:
    """The run's classes: the source dataset's table, checked against the config and target val.

    Raises:
        ConfigError: ``data.num_classes`` is set and differs from the source's class count, or
            the labelled target split names other classes than the source (both sides named).
    """
    table = _domain_table(data.source)
    if data.num_classes is not None and table.num_classes != data.num_classes:
        raise ConfigError(
            f"data.num_classes is {data.num_classes} but the source ({_describe(data.source)}) "
            f"has {table.num_classes} classes {list(table.names)}; set "
            f"data.num_classes={table.num_classes} or null (the class table decides)"
        )
    val = data.target_val
    try:
        val_table = _domain_table(val)
    except MissingFileError:
        return table  # no labelled target split on disk (yet): checked when it is evaluated
    if val_table.names != table.names:
        raise ConfigError(
            f"the target val split ({_describe(val)}) has classes {list(val_table.names)} but "
            f"the source ({_describe(data.source)}) has {list(table.names)}"
        )
    return table


def _target_table(domain: DomainConfig) -> ClassTable | None:
    """The class table the unlabelled target's reader knows (None: none, or not on disk yet)."""
    try:
        files = scan_dataset(
            domain.kind, domain.root, domain.split, with_labels=False, warn=False, **domain.options
        )
    except MissingFileError:
        return None
    return files.table if files.table.names else None


def _model_file_classes(path: str) -> tuple[int, list[str]] | None:
    """(class count, names) of an spcl model file at ``path``; None for other files.

    Reads the file memory-mapped (only the small header, not the weights); a file in the legacy
    (non-zip) format, or an ImageNet checkpoint without ``arch``, gives None.
    """
    if "://" in path or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (*load_errors(), pickle.UnpicklingError):
        return None  # not a zip-format torch file: build_model reports what is wrong with it
    if not isinstance(state, dict) or "arch" not in state or "model" not in state:
        return None
    arch = checked_arch(path, state["arch"])  # an edited file: named at start
    names, _ = checked_class_table(
        path, state.get("class_names", []), state.get("palette", []), arch["num_classes"]
    )
    return arch["num_classes"], names


def check_model_name(name: str) -> None:
    """Refuse an unknown ``model.name`` when a run starts (the message lists the valid names)."""
    if name not in MODEL_REGISTRY:
        raise UnknownNameError(f"model.name: {unknown_model(name)}")


def check_class_sets(ctx: RunContext) -> ClassTable:
    """Check at start-up that every side agrees on the classes, before any stage trains.

    The config (``data.num_classes``, set from the source's class table when it is None), the
    source's class table, the labelled target split and the unlabelled target (where its reader
    knows a table, e.g. a folder's classes.yaml) must name the same classes. A
    ``model.pretrained`` that is an spcl model file of other classes is reported: only its
    backbone is loaded, its classifier is not.

    Returns:
        The run's class table.

    Raises:
        ConfigError: two sides disagree (both are named, with their classes).
    """
    data = ctx.config.data
    table = class_table(ctx)  # config vs source vs target val
    if data.num_classes is None:  # not given: the source's class table decides
        data.num_classes = table.num_classes
    target = _target_table(data.target)
    if target is not None and target.names != table.names:
        raise ConfigError(
            f"the target ({_describe(data.target)}) has classes {list(target.names)} but the "
            f"source ({_describe(data.source)}) has {list(table.names)}"
        )
    pretrained = ctx.config.model.pretrained
    found = _model_file_classes(pretrained) if pretrained else None
    if found is not None and (found[0], found[1] or list(table.names)) != (
        table.num_classes,
        list(table.names),
    ):
        ctx.tracker.info(
            f"note: model.pretrained {pretrained} is a model file for {found[0]} classes "
            f"{found[1]}; this run has {table.num_classes} {list(table.names)}: only its "
            f"backbone is loaded, the classifier starts from scratch"
        )
    return table


def check_model_classes(path: str | Path, info: Mapping[str, Any], data: DataConfig) -> ClassTable:
    """Check that a model file, ``data.num_classes`` and the target val split name one class set.

    Args:
        path: the model file (for messages).
        info: what :func:`spcl.models.files.load_model_file` returned about it.
        data: the data config whose ``target_val`` split the model is scored on.

    Returns:
        The split's class table (names for a model file saved without them).

    Raises:
        ConfigError: ``data.num_classes`` is set and differs from the split's classes.
        CheckpointError: the model's classes (count or names) differ from the split's.
    """
    val = data.target_val
    table = _domain_table(val)
    if data.num_classes is not None and data.num_classes != table.num_classes:
        raise ConfigError(
            f"data.num_classes is {data.num_classes} but the target val split ({_describe(val)}) "
            f"has {table.num_classes} classes {list(table.names)}; set "
            f"data.num_classes={table.num_classes}"
        )
    count, names = int(info["arch"]["num_classes"]), list(info.get("class_names") or [])
    if count != table.num_classes or (names and names != list(table.names)):
        raise CheckpointError(
            f"{path} is a model for {count} classes {names or '(names not saved)'} but the target "
            f"val split ({_describe(val)}) has {table.num_classes} classes {list(table.names)}"
        )
    return table


def class_table(ctx: RunContext) -> ClassTable:
    """The run's class table (names and palette of every table, plot and model file), cached."""
    if ctx.classes is None:
        ctx.classes = run_class_table(ctx.config.data)
    return ctx.classes
