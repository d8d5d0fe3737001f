"""Model files: a stage's final weights together with what is needed to rebuild the model.

A model file is a dict ``{"model": state_dict, "arch": {"name", "num_classes", "width",
"options"}, "class_names": [...], "palette": [[r, g, b], ...]}`` saved atomically (the class
table of the dataset the model was trained on); :func:`load_model_file` rebuilds the segmenter
from it alone (for ``spcl predict`` and ``spcl evaluate``) and says what is wrong when it cannot.
A file that is no spcl model file but an mmseg checkpoint of DAFormer, MIC(DAFormer) or SePiCo is
imported instead (:mod:`spcl.models.mmseg_import`), so published models can be scored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from spcl.base import CheckpointError
from spcl.engine.checkpoint import clean_state_dict, load_state, save_state
from spcl.models.build import build_model
from spcl.models.mit import DEFAULT_WIDTH
from spcl.models.mmseg_import import import_mmseg_state, is_mmseg_checkpoint

__all__ = ["load_model_file", "save_model_file"]

logger = logging.getLogger(__name__)


def save_model_file(
    model: nn.Module,
    path: str | Path,
    *,
    name: str,
    num_classes: int,
    width: int,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] = (),
    options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model``'s weights, architecture and class table to ``path`` (temp file + rename).

    ``options`` are the ``build_model`` options the model was built with (needed to rebuild it).
    """
    save_state(
        {
            "model": clean_state_dict(model.state_dict()),
            "arch": {
                "name": name,
                "num_classes": num_classes,
                "width": width,
                "options": dict(options or {}),
            },
            "class_names": list(class_names),
            "palette": [list(map(int, colour)) for colour in palette],
        },
        path,
    )


def _import_mmseg(
    path: str | Path, state: Mapping[str, Any], role: Literal["student", "teacher"]
) -> tuple[nn.Module, dict[str, Any]]:
    """An mmseg checkpoint as ``(model, info)`` in the shape :func:`load_model_file` returns."""
    model, report = import_mmseg_state(state, role=role, source=path)
    layout = report.layout
    logger.info(
        "%s: imported the %s of an mmseg checkpoint: %s; unused keys: %s",
        path, role, layout.description, report.unused_summary() or "none",
    )  # fmt: skip
    arch = {
        "name": layout.name,
        "num_classes": layout.num_classes,
        "width": DEFAULT_WIDTH,
        "options": dict(layout.options),
        "source": "mmseg",
        "role": role,
        "layout": layout.description,
    }
    info = {
        "arch": arch,
        "class_names": report.class_names,
        "palette": [],
        "unused_keys": report.unused_keys,
    }
    return model, info


def load_model_file(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    num_classes: int | None = None,
    mmseg_role: Literal["student", "teacher"] = "student",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the segmenter saved at ``path`` (eval mode, on ``device``).

    Args:
        path: a file written by :func:`save_model_file`, or an mmseg checkpoint of DAFormer,
            MIC(DAFormer) or SePiCo (imported, see :mod:`spcl.models.mmseg_import`).
        device: where to put the model.
        num_classes: when given, the file must have this many classes.
        mmseg_role: which network of an mmseg UDA checkpoint: the ``"student"`` (``model.*``,
            what mmseg evaluates) or the EMA ``"teacher"`` (``ema_model.*``).

    Returns:
        ``(model, info)`` with ``info = {"arch": ..., "class_names": [...], "palette": [...]}``
        (an empty palette for files written before palettes were saved, and for imports); for
        an mmseg import ``arch`` also has ``source``, ``role`` and ``layout``, and
        ``info["unused_keys"]`` lists the checkpoint keys not loaded (the other network,
        ``imnet_model.*``, …).

    Raises:
        CheckpointError: neither a model file nor a supported mmseg checkpoint, or weights that
            do not fit the architecture it names (e.g. another number of classes or backbone);
            the message says which.
    """
    state = load_state(path)
    if "arch" not in state or "model" not in state:
        if not is_mmseg_checkpoint(state):
            raise CheckpointError(
                f"{path}: not an spcl model file (keys {sorted(state)[:8]}); expected the "
                f"model.pth written by a stage of `spcl run`, or an mmseg checkpoint of "
                f"DAFormer/MIC/SePiCo (state_dict with [model.|ema_model.]backbone.*)"
            )
        model, info = _import_mmseg(path, state, mmseg_role)
        _check_classes(path, info["arch"]["num_classes"], num_classes)
        return model.to(device).eval(), info
    arch = dict(state["arch"])
    _check_classes(path, arch["num_classes"], num_classes)
    model = build_model(
        arch["name"], arch["num_classes"], width=arch["width"], options=arch.get("options")
    )
    weights = clean_state_dict(state["model"])
    expected = model.state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise CheckpointError(f"{path}: weights do not fit {arch}: {'; '.join(wrong[:3])}")
    # frozen BatchNorm has no num_batches_tracked buffer; everything else must match
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.to(device).eval()
    info = {
        "arch": arch,
        "class_names": list(state.get("class_names", [])),
        "palette": [tuple(colour) for colour in state.get("palette", [])],
    }
    return model, info


def _check_classes(path: str | Path, found: int, expected: int | None) -> None:
    if expected is not None and found != expected:
        raise CheckpointError(f"{path}: the model has {found} classes but {expected} are expected")
