"""What ``spcl predict`` reads and keeps track of, besides the model.

- :func:`read_image`: an image as a viewer shows it: EXIF orientation applied (as OpenCV's
  ``imread`` and mmcv's ``imread`` do by default), 16-bit samples reduced to their high byte
  (OpenCV's 8-bit read of a 16-bit PNG, and Pillow's own for 16-bit colour), floating-point or
  32-bit samples refused by name. Before, a 16-bit grey image was clipped to near-white.
- ``predict.json`` in the output folder (:func:`settings_record`, :func:`read_record`): the model
  file (by its SHA-256) and the test-time settings that wrote the outputs, so that a second run
  with the same ones skips the images whose outputs all exist, and one with others never mixes
  two models' masks in one folder.
- :func:`recorded_input_size`: the input size the model was trained at. A model file does not
  record it (its metadata are the architecture and the class table), so it is read from the run's
  ``config.yaml`` when the model file sits in a stage folder of a run (``RUN/07_online/model.pth``);
  elsewhere it is unknown and no hint is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError

from spcl.base import DatasetError, OutputExistsError, atomic_write_bytes, load_yaml
from spcl.run_dir import CONFIG_FILE

__all__ = [
    "LARGE_IMAGE_FACTOR",
    "RECORD_FILE",
    "images_to_predict",
    "large_image_hint",
    "read_image",
    "read_record",
    "recorded_input_size",
    "settings_record",
    "write_record",
]

RECORD_FILE = "predict.json"  # beside the output folders: what wrote them
HIGH_BYTE_SHIFT = 8  # 16-bit sample → its high byte (libpng's strip_16, as OpenCV reads 8-bit)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # Pillow's 16-bit greyscale modes
INT32_MODE = "I"  # Pillow's 32-bit integer mode: read as 16-bit when every value fits
UINT16_MAX = 65535
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing the model file
RUN_CONFIG = CONFIG_FILE  # a run's resolved config, beside its stage folders
STAGE_INPUT_KEYS: dict[str, tuple[str, ...]] = {  # config keys holding the input a stage trains on
    "warmup": ("data.source.size",),  # whole source images at this size
    "adapt": ("data.source.size",),
    "self_train": ("self_train.crop",),
    "online": ("online.crop", "data.source.size"),  # no crop: whole images
}
FALLBACK_KEYS = ("data.target_val.size",)  # the size the run evaluated the model at
SYNTHETIC_KEY = "data.synthetic.size"  # the generated pair's size, for synthetic data
UNREADABLE = (  # what decoding a bad file raises (ValueError: a malformed EXIF block)
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
)
LARGE_IMAGE_FACTOR = 4  # an image over this many times the training input's pixels gets a hint
OUTPUT_KINDS = ("color", "overlay", "trainIds", "labelIds", "confidence", "entropy")  # predict's
SHOWN_EXISTING = 10  # how many existing output files the refusal lists

logger = logging.getLogger(__name__)


def read_image(path: Path) -> np.ndarray:
    """The image at ``path`` as (H, W, 3) uint8 RGB, upright (EXIF orientation applied).

    Raises:
        ValueError: unreadable file, or samples that are floating-point or beyond 16 bits (the
            message names the file).
    """
    with contextlib.ExitStack() as stack:
        try:
            image = stack.enter_context(Image.open(path))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
        except UNREADABLE as exc:
            raise DatasetError(f"cannot read image {path}: {exc}") from exc
        return _rgb8(path, image)


def _rgb8(path: Path, image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of a decoded image; 16-bit grey keeps the high byte of each sample."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == INT32_MODE:
        samples = np.asarray(image)
        low, high = int(samples.min(initial=0)), int(samples.max(initial=0))
        if low < 0 or high > UINT16_MAX:
            raise DatasetError(
                f"cannot read image {path}: 32-bit samples ({low}..{high}); save it with 8 or 16 "
                f"bits per sample"
            )
        grey = (samples.astype(np.uint32) >> HIGH_BYTE_SHIFT).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        raise DatasetError(
            f"cannot read image {path}: floating-point samples (mode F) have no set range; save "
            f"it with 8 or 16 bits per sample"
        )
    return np.array(image.convert("RGB") if image.mode != "RGB" else image)


def settings_record(
    model_file: Path,
    *,
    flip: bool,
    scales: Sequence[float],
    slide: Sequence[int] | None,
    size: Sequence[int] | None,
) -> dict[str, Any]:
    """What decides the predicted masks: the model's bytes and the test-time settings."""
    digest = hashlib.sha256()
    with open(model_file, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return {
        "model": str(model_file),
        "model_sha256": digest.hexdigest(),
        "flip": bool(flip),
        "scales": [float(s) for s in scales],
        "slide": [int(v) for v in slide] if slide else None,
        "size": [int(v) for v in size] if size else None,
    }


def read_record(out_dir: Path) -> dict[str, Any] | None:
    """The ``predict.json`` of ``out_dir``; None when absent or unreadable."""
    try:
        record = json.loads((out_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(out_dir: Path, record: dict[str, Any]) -> None:
    """Write ``predict.json`` atomically."""
    atomic_write_bytes(out_dir / RECORD_FILE, (json.dumps(record, indent=2) + "\n").encode())


def record_differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The settings in which ``old`` differs from ``new`` (the model by content, not path)."""
    if old is None:
        return [f"no readable {RECORD_FILE}"]
    keys = [k for k in new if k != "model"]
    return ["model" if key == "model_sha256" else key for key in keys if old.get(key) != new[key]]


def images_to_predict(
    out_dir: Path, planned: dict[Path, list[Path]], record: dict[str, Any]
) -> list[Path]:
    """The images (names) of ``planned`` whose outputs are not all in ``out_dir`` yet.

    Args:
        out_dir: the output folder.
        planned: image name → the output files the run writes for it.
        record: this run's :func:`settings_record`.

    Raises:
        FileExistsError: ``out_dir`` holds outputs but its ``predict.json`` names another model
            or other settings, or is missing: nothing may be mixed or replaced without
            ``--overwrite`` (the message lists the files, this run's first).
    """
    differences = record_differences(read_record(out_dir), record)
    if differences:
        mine = [path for paths in planned.values() for path in paths if path.exists()]
        found = mine or _outputs_in(out_dir)
        if found:
            _refuse_existing(out_dir, found, differences)
        return list(planned)
    done = [name for name, paths in planned.items() if all(p.exists() for p in paths)]
    if done:
        logger.warning(
            "%d of %d image(s) already have all their outputs under %s (same model and settings): "
            "skipped; --overwrite predicts them again", len(done), len(planned), out_dir,
        )  # fmt: skip
    return [name for name in planned if name not in set(done)]


def _outputs_in(out_dir: Path) -> list[Path]:
    """Up to ``SHOWN_EXISTING + 1`` PNGs in ``out_dir``'s output folders (any image)."""
    found: list[Path] = []
    for kind in OUTPUT_KINDS:
        for path in (out_dir / kind).rglob("*.png"):
            found.append(path)
            if len(found) > SHOWN_EXISTING:
                return found
    return found


def _refuse_existing(out_dir: Path, existing: list[Path], differences: list[str]) -> None:
    """FileExistsError listing the ``existing`` outputs and what differs from this run."""
    shown = ", ".join(str(p.relative_to(out_dir)) for p in existing[:SHOWN_EXISTING])
    more = " and more" if len(existing) > SHOWN_EXISTING else ""
    raise OutputExistsError(
        f"output files under {out_dir} already exist ({shown}{more}) and were not written by "
        f"this model with these settings ({', '.join(differences)}: not as in its "
        f"{RECORD_FILE}); nothing was written: pass --overwrite to replace them, or choose "
        f"another --out"
    )


def large_image_hint(
    path: Path, shape: Sequence[int], trained: tuple[tuple[int, int], str] | None
) -> str | None:
    """A hint for an image far larger than the input the model trained at; None otherwise."""
    if trained is None:
        return None
    (height, width), where = trained
    if shape[0] * shape[1] <= LARGE_IMAGE_FACTOR * height * width:
        return None
    return (
        f"{path} is {shape[0]}x{shape[1]} pixels, over {LARGE_IMAGE_FACTOR}x the {height}x{width} "
        f"the model was trained at ({where}): it runs at full size, slowly and at a scale the "
        f"model never saw; --size H,W resizes the images for the network (the outputs keep "
        f"their size)"
    )


def recorded_input_size(model_file: Path) -> tuple[tuple[int, int], str] | None:
    """``((H, W), where)``: the input size the model trained at, from its run's config.yaml.

    Only for a model file in a stage folder of a run (``RUN/NN_stage/*.pth``); None otherwise,
    and when the config records no size (files used at their own size).
    """
    stage_dir = Path(model_file).resolve().parent
    config_path = stage_dir.parent / RUN_CONFIG
    number, _, stage = stage_dir.name.partition("_")
    if not (number.isdigit() and config_path.is_file()):
        return None
    try:
        config = load_yaml(config_path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    keys = [*STAGE_INPUT_KEYS.get(stage, ()), *FALLBACK_KEYS]
    if _lookup(config, "data.source.kind") == "synthetic":
        keys.append(SYNTHETIC_KEY)
    for key in keys:
        value = _lookup(config, key)
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return (value[0], value[1]), f"{key} in {config_path}"
    return None


def _lookup(config: Any, dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``; None where a level is missing."""
    for part in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config
