"""Model files: a stage's final weights together with what is needed to rebuild the model.

A model file is a dict ``{"model": state_dict, "arch": {"name", "num_classes", "width"},
"class_names": [...], "palette": [[r, g, b], ...]}`` saved atomically (the class table of the
dataset the model was trained on); :func:`load_model_file` rebuilds the segmenter from it
alone (for ``spcl predict`` and ``spcl evaluate``) and says what is wrong when it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spcl.base import CheckpointError
from spcl.engine.checkpoint import clean_state_dict, load_state, save_state
from spcl.models.build import build_model

__all__ = ["load_model_file", "save_model_file"]


def save_model_file(
    model: nn.Module,
    path: str | Path,
    *,
    name: str,
    num_classes: int,
    width: int,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] = (),
) -> None:
    """Write ``model``'s weights, architecture and class table to ``path`` (temp file + rename)."""
    save_state(
        {
            "model": clean_state_dict(model.state_dict()),
            "arch": {"name": name, "num_classes": num_classes, "width": width},
            "class_names": list(class_names),
            "palette": [list(map(int, colour)) for colour in palette],
        },
        path,
    )


def load_model_file(
    path: str | Path, device: torch.device | str = "cpu", *, num_classes: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the segmenter saved at ``path`` (eval mode, on ``device``).

    Args:
        path: a file written by :func:`save_model_file`.
        device: where to put the model.
        num_classes: when given, the file must have this many classes.

    Returns:
        ``(model, info)`` with ``info = {"arch": ..., "class_names": [...], "palette": [...]}``
        (an empty palette for files written before palettes were saved).

    Raises:
        CheckpointError: not a model file, or weights that do not fit the architecture it names
            (e.g. another number of classes or backbone); the message says which.
    """
    state = load_state(path)
    if "arch" not in state or "model" not in state:
        raise CheckpointError(
            f"{path}: not an spcl model file (keys {sorted(state)}); expected the model.pth "
            f"written by a stage of `spcl run`"
        )
    arch = dict(state["arch"])
    if num_classes is not None and arch["num_classes"] != num_classes:
        raise CheckpointError(
            f"{path}: the model has {arch['num_classes']} classes but {num_classes} are expected"
        )
    model = build_model(arch["name"], arch["num_classes"], width=arch["width"])
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
