"""Model files as ``.safetensors``: weights without pickles, with what is needed to use them.

The tensors are the model's state dict under spcl's names. The metadata (strings, JSON-encoded
where structured) carries everything a program needs besides the weights:

=================  =====================================================================
key                value
=================  =====================================================================
``format``         ``"spcl-model"``, with ``format_version`` ``"1"``
``arch``           ``{"name", "num_classes", "width", "options", …}`` as in a model file
``class_names``    the class table, index = output channel
``palette``        one ``[r, g, b]`` per class (empty: Cityscapes colours)
``input``          what the model takes: NCHW float32, RGB, ``(pixel − mean_255) / std_255``
``weights_input``  what the raw weights expect when run without spcl's input adapter
                   (:mod:`spcl.models.input_conventions`; differs for the DeepLab COCO init)
=================  =====================================================================

``spcl predict`` and ``spcl evaluate`` read such a file like a model file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from spcl.base import CheckpointError, MissingFileError, atomic_write_bytes
from spcl.models.input_conventions import (
    PIPELINE_CONVENTION,
    convention_metadata,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "input_metadata",
    "is_safetensors_file",
    "read_safetensors_model",
    "write_safetensors_model",
]

FORMAT, FORMAT_VERSION = "spcl-model", "1"
SUFFIX = ".safetensors"
HEADER_LENGTH_BYTES = 8  # a safetensors file starts with the JSON header's length (u64, LE)
REQUIRED_METADATA = ("format", "arch", "class_names")


def input_metadata(arch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(input, weights_input)``: the model's input and the raw weights' own convention."""
    model_input = {
        "layout": "NCHW",
        "dtype": "float32",
        **convention_metadata(PIPELINE_CONVENTION),
        "formula": "(pixel - mean_255) / std_255 per channel, pixel in 0..255",
    }
    native = dict(arch.get("options") or {}).get("input_convention", PIPELINE_CONVENTION)
    return model_input, convention_metadata(native)


def is_safetensors_file(path: str | Path) -> bool:
    """Whether ``path`` is (named or shaped like) a safetensors file."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(HEADER_LENGTH_BYTES + 1)
    except OSError:
        return False
    if len(head) <= HEADER_LENGTH_BYTES:
        return False
    (length,) = struct.unpack("<Q", head[:HEADER_LENGTH_BYTES])
    return (
        head[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + 1] == b"{" and length < path.stat().st_size
    )


def write_safetensors_model(
    path: str | Path,
    state_dict: Mapping[str, Tensor],
    *,
    arch: Mapping[str, Any],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] = (),
) -> Path:
    """Write weights and metadata to ``path`` atomically (temporary file + rename)."""
    from safetensors.torch import save  # runtime dependency, imported where used

    model_input, weights_input = input_metadata(arch)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": json.dumps(dict(arch)),
        "class_names": json.dumps(list(class_names)),
        "palette": json.dumps([list(map(int, c)) for c in palette]),
        "input": json.dumps(model_input),
        "weights_input": json.dumps(weights_input),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def read_safetensors_model(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read an ``spcl export`` safetensors file: ``(weights, info)`` as a model file gives them.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: not a safetensors file, or one without spcl's metadata (named keys).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"model file not found: {path}")
    data = path.read_bytes()
    try:
        weights = load(data)
        (length,) = struct.unpack("<Q", data[:HEADER_LENGTH_BYTES])
        header = json.loads(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    except (SafetensorError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    metadata = header.get("__metadata__") or {}
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing or metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a safetensors file without spcl's metadata (missing {missing or 'none'}, "
            f"format {metadata.get('format')!r}, found keys {sorted(metadata)[:8]}): a bare "
            f"state dict cannot be rebuilt; write it with `spcl export MODEL --format safetensors`"
        )
    try:
        info = {
            "arch": json.loads(metadata["arch"]),
            "class_names": json.loads(metadata["class_names"]),
            "palette": json.loads(metadata.get("palette", "[]")),  # checked by the reader
            "input": json.loads(metadata.get("input", "{}")),
        }
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: spcl metadata is not valid JSON ({exc})") from exc
    return weights, info
