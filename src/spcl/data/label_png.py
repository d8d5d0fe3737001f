"""The one reader of label maps: a single-channel PNG of class ids → an (H, W) array, or one error.

Every map of class ids spcl reads goes through :func:`read_label_png`: a dataset's label files
(through :class:`~spcl.data.label_decoder.LabelDecoder`, 8- or 16-bit raw ids), pseudo-labels
and other train-id maps (:class:`~spcl.data.lists.SegmentationList`, 8-bit), and both maps of a
pair in folder evaluation (:mod:`spcl.evaluation.pair_counts`, predictions and ground truth).

8-bit grey, 16-bit grey and 8-bit palette PNGs are decoded by
:func:`spcl.data.png_decode.decode_id_png` (OpenCV; palette PNGs give their indices, never
colours); any other file by PIL, which names what is wrong with it. Whatever the problem (missing
or unreadable file, truncated or corrupt data, a colour image, samples deeper than the caller
accepts) it is a :class:`LabelFileError` naming the file, its role and what is wrong. Torch-free;
PIL is imported only for the files OpenCV is not given (folder evaluation of ordinary PNGs never
imports it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spcl.base import DatasetError
from spcl.data.png_decode import decode_id_png

__all__ = ["LabelFileError", "read_label_png"]

BYTE_MODES = ("1", "L", "P")  # PIL modes of single-channel maps of at most 8 bits
WORD_MODES = ("I;16", "I;16L", "I;16B", "I")  # PIL modes of 16-bit grey PNGs ("I": older Pillow)
BYTE_BITS, WORD_BITS = 8, 16  # the two values of max_bits
BIT_DEPTHS = {BYTE_BITS: (8,), WORD_BITS: (8, 16)}  # max_bits → the PNG sample depths decoded
SAMPLES = {  # what a single-channel PIL mode holds, for the messages
    "I;16": "16-bit samples",
    "I;16L": "16-bit samples",
    "I;16B": "16-bit samples",
    "I": "32-bit integer samples",
    "F": "floating-point samples",
}
COLOUR_BANDS = 3  # an image with this many bands or more is a colour picture, not a map of ids


class LabelFileError(DatasetError):
    """A label map that cannot be read, or is not a single-channel map of class ids.

    The message names the file, its role (label, prediction, ground truth) and what is wrong.
    """


def read_label_png(
    path: str | Path, *, max_bits: int = WORD_BITS, role: str = "label"
) -> np.ndarray:
    """The class ids stored in a single-channel label map, as an (H, W) writable array.

    Args:
        path: the file (a PNG; other formats PIL opens are read too).
        max_bits: the deepest samples accepted: 8 (train-id maps: pseudo-labels, predictions of
            up to 256 classes) or 16 (raw label ids, e.g. a dataset's own 16-bit labels).
        role: what the file is, for the messages: ``"label"``, ``"prediction"``,
            ``"ground truth"``.

    Returns:
        uint8 ids for maps of at most 8 bits, uint16 for 16-bit ones, int64 for PIL's 32-bit
        integer mode (the caller checks the values against its class table).

    Raises:
        LabelFileError: the file is missing or unreadable, truncated or corrupt, has several
            channels (a colour mask), or deeper samples than ``max_bits``.
    """
    if max_bits not in BIT_DEPTHS:
        raise ValueError(f"max_bits must be one of {sorted(BIT_DEPTHS)}, got {max_bits}")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LabelFileError(f"cannot read {role} {path}: {exc}") from exc
    ids = decode_id_png(data, bit_depths=BIT_DEPTHS[max_bits])
    if ids is not None:
        return ids  # writable
    return _read_with_pil(Path(path), max_bits, role)


def _read_with_pil(path: Path, max_bits: int, role: str) -> np.ndarray:
    """The rare path: PIL decodes the file and its mode decides whether it is a map of ids."""
    from PIL import Image, UnidentifiedImageError  # importing PIL costs ~0.05 s

    try:
        with Image.open(path) as image:
            image.load()
            mode, bands, ids = image.mode, len(image.getbands()), np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise LabelFileError(f"cannot read {role} {path}: {exc}") from exc
    accepted = BYTE_MODES + (WORD_MODES if max_bits == WORD_BITS else ())
    if mode not in accepted:
        raise LabelFileError(_mode_message(path, role, mode, bands, max_bits))
    if ids.dtype == np.bool_ or ids.dtype.itemsize == 1:
        return ids.astype(np.uint8)  # a copy: writable (PIL's arrays are read-only)
    if ids.dtype.kind == "u" and ids.dtype.itemsize == WORD_BITS // 8:
        return ids.astype(np.uint16)  # native byte order (I;16B is big-endian)
    return ids.astype(np.int64)


def _mode_message(path: Path, role: str, mode: str, bands: int, max_bits: int) -> str:
    """Why a file of PIL ``mode`` is not a map of class ids, and what would be."""
    held = f"{bands} channels" if bands > 1 else SAMPLES.get(mode, "not class ids")
    depth = "8-bit" if max_bits == BYTE_BITS else "8- or 16-bit"
    message = (
        f"{role} {path} has mode {mode} ({held}): expected a single-channel PNG of class ids "
        f"({depth} greyscale or palette indices)"
    )
    if bands >= COLOUR_BANDS:
        message += "; a colour mask holds colours, not class ids"
    return message
