"""The metadata of a model file (``arch``, ``class_names``, ``palette``), checked field by field.

Model files (``model.pth``, an ``spcl export`` ``.safetensors``, another run's model file given
as ``model.pretrained``) are moved between machines, read by other programs and edited by people.
Before anything is built from one, every field is checked here, so a list where a mapping belongs,
a missing ``num_classes`` or a negative width is one :class:`~spcl.base.CheckpointError` naming
the file, the field and what is wrong, not a ``KeyError`` or ``TypeError`` deep in a constructor.

Sizes (``width``, ``num_classes``) have no fixed upper bound here: what bounds them is the weights
the file holds. :mod:`spcl.models.files` builds the model on the meta device (no memory) and
compares its shapes with the file's before allocating anything, so ``width: 100000`` in an edited
file is refused without building the 360 GB model it would describe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spcl.base import CheckpointError

__all__ = ["checked_arch", "checked_class_table"]

ARCH_FIELDS = ("name", "num_classes", "width")  # what every arch must have to be rebuilt
CHANNEL_MAX = 255  # palette colours are 8-bit RGB
RGB = 3  # channels of a palette colour
SHOWN_CHARS = 60  # a wrong value is quoted up to this length


def _kind(value: Any) -> str:
    """What a wrong value is, for messages: ``the string '4'``, ``a list [...]``, ``-4``."""
    text = repr(value)
    text = text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
    if isinstance(value, str):
        return f"the string {text}"
    if isinstance(value, list | tuple | Mapping):
        return f"a {type(value).__name__} {text}"
    return text


def _positive_int(source: str | Path, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: {field} must be a positive integer, got {_kind(value)}")
    return value


def checked_arch(source: str | Path, arch: Any) -> dict[str, Any]:
    """``arch`` as a plain dict once its fields are known to be usable.

    ``name`` a non-empty string, ``num_classes`` and ``width`` positive integers, ``options`` a
    mapping with string keys (absent: none), ``frozen_bn_eps`` absent, ``None`` or a finite
    number ≥ 0. Other keys (``source``, ``layout``, ``role`` of imports) are kept as they are.

    Raises:
        CheckpointError: the first field that is missing or wrong, named with the file.
    """
    if not isinstance(arch, Mapping):
        raise CheckpointError(
            f"{source}: 'arch' is {_kind(arch)}, not a mapping of {', '.join(ARCH_FIELDS)} and "
            f"options"
        )
    missing = [key for key in ARCH_FIELDS if key not in arch]
    if missing:
        raise CheckpointError(f"{source}: 'arch' lacks {missing} (it has {sorted(map(str, arch))})")
    if not isinstance(arch["name"], str) or not arch["name"]:
        raise CheckpointError(
            f"{source}: arch.name must be a model name, got {_kind(arch['name'])}"
        )
    _positive_int(source, "arch.num_classes", arch["num_classes"])
    _positive_int(source, "arch.width", arch["width"])
    options = arch.get("options")
    options = {} if options is None else options
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise CheckpointError(
            f"{source}: arch.options must be a mapping of option names, got {_kind(options)}"
        )
    eps = arch.get("frozen_bn_eps")
    if eps is not None and (
        isinstance(eps, bool)
        or not isinstance(eps, int | float)
        or not math.isfinite(eps)
        or eps < 0
    ):
        raise CheckpointError(
            f"{source}: arch.frozen_bn_eps must be a number ≥ 0 or null, got {_kind(eps)}"
        )
    return {**arch, "options": dict(options)}


def _colour(source: str | Path, index: int, colour: Any) -> tuple[int, int, int]:
    ok = (
        isinstance(colour, list | tuple)
        and len(colour) == RGB
        and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= CHANNEL_MAX for c in colour
        )
    )
    if not ok:
        raise CheckpointError(
            f"{source}: palette[{index}] must be [r, g, b] in 0..{CHANNEL_MAX}, got {_kind(colour)}"
        )
    return (colour[0], colour[1], colour[2])


def checked_class_table(
    source: str | Path, class_names: Any, palette: Any, num_classes: int
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """``(class_names, palette)`` once checked: each a list, empty or one entry per class.

    Raises:
        CheckpointError: a field of the wrong type or length, a name that is not a string, a
            colour that is not 8-bit RGB (the file, the field and the value are named).
    """
    for field, value in (("class_names", class_names), ("palette", palette)):
        if not isinstance(value, list | tuple):
            raise CheckpointError(f"{source}: {field} must be a list, got {_kind(value)}")
        if value and len(value) != num_classes:
            raise CheckpointError(
                f"{source}: {field} has {len(value)} entries but arch.num_classes is {num_classes}"
            )
    bad = [name for name in class_names if not isinstance(name, str)]
    if bad:
        raise CheckpointError(f"{source}: class_names must be strings, got {_kind(bad[0])}")
    return list(class_names), [_colour(source, i, c) for i, c in enumerate(palette)]
