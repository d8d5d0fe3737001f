"""Label decoding: a raw label file → train ids, refusing values the class table does not know.

Every reader in ``spcl.data`` gives its :class:`~spcl.data.layout.DatasetFiles` a
:class:`LabelDecoder`: it reads a label file into raw ids (single-channel PNGs by default, read by
:func:`spcl.data.label_png.read_label_png`) and maps them to train ids through a lookup table; a
raw value outside the table is a :class:`LabelValueError` naming the file and the values. Both are
:class:`~spcl.data.label_png.LabelFileError`: whatever is wrong with a label file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from spcl.data.label_png import LabelFileError, read_label_png
from spcl.data.labels import ClassTable

__all__ = [
    "LUT_SIZE",
    "LabelDecoder",
    "LabelValueError",
    "describe_ids",
    "table_valid_ids",
]

LUT_SIZE = 65536  # one entry per value of a 16-bit label
INVALID = 0xFFFF  # decoder table entry of a raw value outside the class table


def describe_ids(ids: Sequence[int]) -> str:
    """Sorted ids as runs: ``[0, 1, 2, 3, 7, 255]`` → ``0..3, 7, 255``."""
    runs: list[str] = []
    values = sorted(set(ids))
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            lo, hi = values[start], values[i - 1]
            runs.append(f"{lo}..{hi}" if hi > lo + 1 else ", ".join(map(str, range(lo, hi + 1))))
            start = i
    return ", ".join(runs)


class LabelValueError(LabelFileError):
    """A label holds values outside its class table (the message names the file and values)."""


def table_valid_ids(table: ClassTable) -> list[int]:
    """Raw values a label may hold under ``table``: its mapped ids and the ignore index."""
    return sorted({*table.id_to_train, table.ignore_index})


class LabelDecoder:
    """Raw label file → train ids (H, W) uint8, refusing raw values outside the table.

    Args:
        table: the class table (raw id → train id, ignore index).
        valid_ids: raw values a label may contain (unmapped ones become ``ignore_index``).
        read_raw: decodes a file into raw ids (H, W); the default reads single-channel 8- or
            16-bit PNGs (:func:`spcl.data.label_png.read_label_png`).
    """

    def __init__(
        self,
        table: ClassTable,
        valid_ids: Sequence[int],
        read_raw: Callable[[Path], np.ndarray] = read_label_png,
    ) -> None:
        self.table = table
        self.read_raw = read_raw
        self.valid_ids = sorted({*valid_ids, *table.id_to_train})
        self.lut = np.full(LUT_SIZE, INVALID, dtype=np.uint16)
        self.lut[self.valid_ids] = table.ignore_index
        for raw, train in table.id_to_train.items():
            self.lut[raw] = train

    @property
    def expected(self) -> str:
        return describe_ids(self.valid_ids)

    def to_train(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map raw ids to train ids; ``path`` names the file in the error."""
        if raw.dtype.kind == "i" and raw.size and (raw.min() < 0 or raw.max() >= LUT_SIZE):
            raise LabelValueError(f"label {path} has values outside 0..{LUT_SIZE - 1}")
        mapped = self.lut[raw]
        if raw.size and mapped.max() == INVALID:
            bad = np.unique(raw[mapped == INVALID])
            raise LabelValueError(
                f"label {path} has values {describe_ids(bad.tolist())} outside the class table; "
                f"expected {self.expected}"
            )
        return mapped.astype(np.uint8)

    def __call__(self, path: Path) -> np.ndarray:
        return self.to_train(self.read_raw(path), path)
