"""The ``predict`` command: segment a user's images with a saved model file.

For every input image (files, folders searched recursively, or glob patterns) it writes, under
``out_dir`` and named after the image (sub-folders of a folder input are kept):

- ``color/<name>.png``: the prediction in the class table's palette (Cityscapes for its classes),
- ``overlay/<name>.png``: that colour mask blended over the image,
- ``trainIds/<name>.png``: class indices 0..K-1 (single channel),
- ``labelIds/<name>.png``: Cityscapes label ids, when every class is a Cityscapes class (this is
  the format of the Cityscapes benchmark and of ``spcl evaluate --pred-format labelIds``),
- optionally ``confidence/<name>.png`` (max probability × 255) or ``entropy/<name>.png``
  (entropy / ln K × 255).

Existing outputs are never replaced unless asked (``overwrite``, ``--overwrite``): before any image
is predicted, every file the run would write is checked, and if any of them exists the run stops
with an error listing them and writes nothing. Other files in ``out_dir`` are left alone. Every file
is encoded in memory and written atomically (temporary file beside it, then renamed), so a crash
never leaves a half-written PNG under an output name, and a replaced file is either old or new.

Predictions have the image's own size: the image may be resized for the network (``size``, as
evaluation does), and probabilities come back at full resolution from the one shared inference
function (flip, scales, optional sliding window).
"""

from __future__ import annotations

import glob
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from spcl.base import (
    DatasetError,
    MissingFileError,
    OutputExistsError,
    UsageError,
    atomic_write_bytes,
)
from spcl.data.labels import ClassTable, class_table_for
from spcl.data.lists import IMAGE_SUFFIXES, read_image, to_tensor
from spcl.data.transforms import build_eval_transform
from spcl.evaluation.inference import predict_probs
from spcl.evaluation.sliding import parse_slide, predict_probs_sliding
from spcl.models.files import load_model_file

__all__ = [
    "OVERLAY_ALPHA",
    "Uncertainty",
    "collect_images",
    "output_kinds",
    "output_path",
    "predict_image",
    "predict_paths",
    "uncertainty_map",
]

logger = logging.getLogger(__name__)

Uncertainty = Literal["confidence", "entropy"]
OVERLAY_ALPHA = 0.5  # weight of the colour mask in the overlay (the image gets 1 - alpha)
MAX_UINT8 = 255
GLOB_CHARS = ("*", "?", "[")
SHOWN_EXISTING = 10  # how many existing output files the refusal lists


def predict_paths(
    model_file: str | Path,
    inputs: Sequence[str],
    out_dir: str | Path,
    *,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    slide: Sequence[int] | None = None,
    size: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    save_confidence: bool = False,
    uncertainty: Uncertainty = "confidence",
    num_classes: int | None = None,
    on_error: Literal["fail", "skip"] = "fail",
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Predict every input image and write its masks; see the module docstring for the files.

    Args:
        model_file: a model file written by a stage (``save_model_file``).
        inputs: image files, folders (searched recursively for image files) or glob patterns.
        out_dir: output root.
        flip: average with the horizontally flipped image.
        scales: test-time scale factors, averaged.
        slide: sliding window ``(crop, stride)`` or ``(crop_h, crop_w, stride_h, stride_w)``
            in network-input pixels; None = whole image.
        size: resize each image to ``(H, W)`` before the network (e.g. (512, 1024) for
            Cityscapes, as evaluation does); None = as is. Outputs keep the image's size.
        device: where the model runs.
        save_confidence: also write an uncertainty map.
        uncertainty: ``"confidence"`` (max probability) or ``"entropy"`` (normalised by ln K).
        num_classes: when given, the model file must have this many classes.
        on_error: an unreadable image: ``"fail"`` raises, ``"skip"`` logs a warning naming it
            and goes on (and a last warning lists every image skipped).
        overwrite: replace output files that already exist (default: refuse, write nothing).
        progress: show a tqdm bar.

    Returns:
        The written files, in input order.

    Raises:
        FileNotFoundError: an input path (or a pattern's matches) does not exist.
        CheckpointError: the model file does not fit its architecture or ``num_classes``.
        FileExistsError: without ``overwrite``, files the run would write already exist (named;
            nothing is written).
        ValueError: bad arguments, two inputs that would write the same file, or (``"fail"``)
            an unreadable image, named.
    """
    if on_error not in ("fail", "skip"):
        raise UsageError(f"--on-error must be fail or skip, got {on_error!r}")
    if uncertainty not in ("confidence", "entropy"):
        raise UsageError(f"--uncertainty must be confidence or entropy, got {uncertainty!r}")
    images = collect_images(inputs)
    model, info = load_model_file(model_file, device, num_classes=num_classes)
    table = class_table_for(
        info["class_names"], info["arch"]["num_classes"], model_file, info["palette"]
    )
    out_dir = Path(out_dir)
    kinds = output_kinds(table, uncertainty if save_confidence else None)
    if not overwrite:
        _refuse_existing(out_dir, [output_path(out_dir, k, n) for _, n in images for k in kinds])
    written: list[Path] = []
    skipped: list[Path] = []
    for path, name in tqdm(images, desc="predict", unit="img", disable=not progress):
        try:
            image = read_image(path)
        except ValueError as exc:
            if on_error == "fail":
                raise
            logger.warning("skipped %s: %s", path, exc)
            skipped.append(path)
            continue
        probs = predict_image(model, image, flip=flip, scales=scales, slide=slide, size=size)
        kind = uncertainty if save_confidence else None
        written += _write_outputs(out_dir, name, image, probs, table, kind)
    if skipped:
        logger.warning(
            "--on-error skip: skipped %d of %d image(s): %s",
            len(skipped), len(images), ", ".join(map(str, skipped)),
        )  # fmt: skip
    return written


def collect_images(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """Expand files, folders and glob patterns into ``(image path, output name)`` pairs.

    The output name is the file stem, or the path relative to a folder input without suffix.
    A file listed twice is kept once.

    Raises:
        FileNotFoundError: a path does not exist or a pattern matches nothing.
        ValueError: no inputs, no image in a folder, or two images that would share an output.
    """
    if not inputs:
        raise UsageError("no input images given")
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            found += [(p, p.relative_to(path).with_suffix("")) for p in files]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        elif any(c in item for c in GLOB_CHARS):
            files = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not files:
                raise MissingFileError(f"no file matches the pattern {item!r}")
            found += [(p, Path(p.stem)) for p in files]
        else:
            raise MissingFileError(f"input image or folder not found: {path}")
    unique: dict[Path, tuple[Path, Path]] = {}
    owner: dict[Path, Path] = {}
    for path, name in found:
        resolved = path.resolve()
        if resolved in unique:
            continue
        if name in owner:
            raise DatasetError(
                f"{owner[name]} and {path} would both be written as {name}.png; "
                f"predict them into different output folders"
            )
        unique[resolved], owner[name] = (path, name), path
    return list(unique.values())


def predict_image(
    model: nn.Module,
    image: np.ndarray,
    *,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    slide: Sequence[int] | None = None,
    size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Class probabilities of one uint8 RGB image at the image's own size.

    Args:
        model: segmenter in eval mode; the input follows its parameters' device.
        image: the decoded image.
        flip, scales, slide, size: as in :func:`predict_paths`.

    Shape:
        - image: (H, W, 3).
        - returns: (K, H, W), on the model's device.
    """
    height, width = image.shape[:2]
    network_input = build_eval_transform(tuple(size))(image, None, 0)[0] if size else image
    device = next(model.parameters()).device
    tensor = to_tensor(network_input).unsqueeze(0).to(device)  # (1, 3, h, w)
    if slide is None:
        probs = predict_probs(model, tensor, (height, width), flip=flip, scales=scales)
    else:
        crop, stride = parse_slide(slide)
        probs = predict_probs_sliding(
            model, tensor, (height, width), crop=crop, stride=stride, flip=flip, scales=scales
        )
    return probs[0]


def uncertainty_map(probs: torch.Tensor, kind: Uncertainty) -> np.ndarray:
    """8-bit map of max probability (``"confidence"``) or entropy / ln K (``"entropy"``).

    Shape:
        - probs: (K, H, W) → (H, W) uint8.
    """
    if kind == "confidence":
        unit = probs.max(dim=0).values
    else:
        num_classes = probs.shape[0]
        norm = math.log(num_classes) if num_classes > 1 else 1.0
        unit = torch.special.entr(probs).sum(dim=0) / norm
    scaled = (unit.clamp(0.0, 1.0) * MAX_UINT8).round()
    return scaled.to(torch.uint8).cpu().numpy()


def output_kinds(table: ClassTable, uncertainty: Uncertainty | None) -> tuple[str, ...]:
    """The output folders written for each image, in writing order."""
    kinds = ("color", "overlay", "trainIds")
    if table.id_to_train:
        kinds += ("labelIds",)
    return kinds + ((uncertainty,) if uncertainty is not None else ())


def output_path(out_dir: Path, kind: str, name: Path) -> Path:
    """Where the ``kind`` output of image ``name`` (relative, without suffix) is written."""
    return out_dir / kind / name.parent / f"{name.name}.png"


def _refuse_existing(out_dir: Path, planned: list[Path]) -> None:
    """FileExistsError listing the planned outputs that already exist, if any."""
    existing = [p for p in planned if p.exists()]
    if not existing:
        return
    shown = ", ".join(str(p.relative_to(out_dir)) for p in existing[:SHOWN_EXISTING])
    more = f" and {len(existing) - SHOWN_EXISTING} more" if len(existing) > SHOWN_EXISTING else ""
    raise OutputExistsError(
        f"{len(existing)} output file(s) under {out_dir} already exist: {shown}{more}; nothing "
        f"was written: pass --overwrite to replace them, or choose another --out"
    )


def _write_outputs(
    out_dir: Path,
    name: Path,
    image: np.ndarray,
    probs: torch.Tensor,
    table: ClassTable,
    uncertainty: Uncertainty | None,
) -> list[Path]:
    """Write the masks of one image, each encoded in memory and written atomically."""
    train_ids = probs.argmax(dim=0).to(torch.uint8).cpu().numpy()  # (H, W)
    colour = table.colorize(train_ids)  # (H, W, 3)
    blend = (1.0 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * colour
    outputs = {
        "color": colour,
        "overlay": blend.round().astype(np.uint8),
        "trainIds": train_ids,
    }
    if table.id_to_train:
        outputs["labelIds"] = table.train_to_id()[train_ids]
    if uncertainty is not None:
        outputs[uncertainty] = uncertainty_map(probs, uncertainty)
    written = []
    for kind in output_kinds(table, uncertainty):
        path = output_path(out_dir, kind, name)
        buffer = io.BytesIO()
        Image.fromarray(outputs[kind]).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())  # temporary file + rename
        written.append(path)
    return written
