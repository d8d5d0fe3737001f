"""Checkpoint files: full-state saves (atomic), safe loads, one place that cleans key prefixes.

Every checkpoint is written through :func:`spcl.base.atomic_file` (a temporary file in the
destination folder, renamed into place), so a crash never leaves a half-written file under the
final name. A full disk while ``torch.save`` writes is reported as the ``OSError`` it is (torch
turns it into ``RuntimeError: [enforce fail at inline_container.cc]``), naming the file. Loads use
``weights_only=True``: a file that would unpickle arbitrary objects is refused with an error
naming it, never executed. A resumed stage restores each object of its checkpoint through
:func:`load_entry`, which compares a module's keys and shapes first and names the file, the entry
and the first keys that do not fit.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from torch import nn

from spcl.base import CheckpointError, MissingFileError, atomic_file

__all__ = [
    "clean_state_dict",
    "load_entry",
    "load_errors",
    "load_state",
    "save_state",
]

STRIPPED_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
SHOWN_KEYS = 3  # keys quoted per kind of problem in an error


class _Loadable(Protocol):
    def load_state_dict(self, state: Mapping[str, Any], /) -> Any: ...


class _RecordingWriter:
    """A file's ``write`` that keeps the ``OSError`` it raised (torch.save hides it).

    torch's zip writer calls ``write`` from C++ and replaces a failure by a ``RuntimeError``
    without errno or file name; :func:`save_state` raises the kept error instead.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    """Save a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically.

    Raises:
        OSError: the write failed (a full disk: ``ENOSPC``), naming ``path``; the previous file
            at ``path`` is left as it was and no temporary file remains.
    """
    with atomic_file(path, "wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            torch.save(dict(state), writer)
        except RuntimeError as exc:
            if writer.error is None:
                raise
            raise writer.error from exc  # atomic_file adds the file's name


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
    except load_errors() as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of state, got {type(state).__name__}")
    return state


def load_errors() -> tuple[type[Exception], ...]:
    """What ``torch.load`` raises for a file that is no readable checkpoint (torn, garbage, a
    legacy file under ``mmap=True``), ``SafetensorError`` included: torch ≥ 2.13 reads
    ``.safetensors`` files through safetensors, and a corrupt one raises that."""
    errors: tuple[type[Exception], ...] = (RuntimeError, EOFError, OSError, ValueError)
    try:
        from safetensors import SafetensorError
    except ImportError:
        return errors
    return (*errors, SafetensorError)


def _module_problems(module: nn.Module, entry: Mapping[str, Any]) -> list[str]:
    """What keeps ``entry`` from loading into ``module`` strictly: keys and shapes, named."""
    own = module.state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in entry.items()
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in entry]
    unexpected = [k for k in entry if k not in own]
    found = {"shapes": wrong, "missing": missing, "unexpected": unexpected}
    return [
        f"{kind} ({len(keys)}): {', '.join(map(str, keys[:SHOWN_KEYS]))}"
        for kind, keys in found.items()
        if keys
    ]


def load_entry(path: str | Path, name: str, obj: _Loadable, entry: Any) -> None:
    """Restore ``obj`` from the checkpoint entry ``name``; a mismatch is a named error.

    A module's keys and shapes are compared before anything is loaded (a checkpoint of another
    model or width, or an edited one); any other object (optimiser, schedule, loader, a module
    with its own ``load_state_dict`` such as the prototype bank) is loaded and a failure
    reported with the file and the entry.

    Raises:
        CheckpointError: the entry is not a mapping, or does not fit ``obj`` (the message names
            the file, the entry and the first keys that do not fit).
    """
    what = f"{path}: the '{name}' entry"
    if not isinstance(entry, Mapping):
        raise CheckpointError(f"{what} is a {type(entry).__name__}, not a state dict")
    if isinstance(obj, nn.Module) and type(obj).load_state_dict is nn.Module.load_state_dict:
        problems = _module_problems(obj, entry)
        if problems:
            raise CheckpointError(
                f"{what} does not fit this stage's {type(obj).__name__}: {'; '.join(problems)}; "
                f"made by another model or config? move the file away to start the stage anew"
            )
    try:
        obj.load_state_dict(entry)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{what} does not fit this stage's {type(obj).__name__} ({first}); made by another "
            f"model or config? move the file away to start the stage anew"
        ) from exc


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
