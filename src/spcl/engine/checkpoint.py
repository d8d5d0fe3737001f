"""Checkpoint files: full-state saves (atomic), safe loads, one place that cleans key prefixes.

Every checkpoint is written through :func:`spcl.base.atomic_file` (a temporary file in the
destination folder, renamed into place), so a crash never leaves a half-written file under the
final name. Loads use ``weights_only=True``: a
file that would unpickle arbitrary objects is refused with an error naming it, never executed.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spcl.base import CheckpointError, MissingFileError, atomic_file

__all__ = [
    "clean_state_dict",
    "load_state",
    "save_state",
]

STRIPPED_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    """Save a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically."""
    with atomic_file(path, "wb") as handle:
        torch.save(dict(state), handle)


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file holds objects other than tensors and plain containers (refused,
            not executed), or is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds objects that are not plain tensors and containers "
            f"(weights_only load failed: {str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of state, got {type(state).__name__}")
    return state


def clean_state_dict(state_dict: Mapping[str, Any], prefixes: tuple[str, ...] = ()) -> dict:
    """Strip wrapper prefixes (``module.``, ``_orig_mod.`` and any in ``prefixes``) from keys."""
    strip = STRIPPED_PREFIXES + tuple(prefixes)
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in strip:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out
