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

Resuming. ``out_dir/predict.json`` records the model file (by SHA-256) and the test-time
settings that wrote the outputs. A run with the same model and settings skips every image whose
outputs all exist and predicts the rest (an image cut short by a crash is done again), so an
interrupted run continues where it stopped. Outputs written by another model or with other
settings (or without a ``predict.json``) are never replaced unless asked (``overwrite``,
``--overwrite``, which also redoes every image): before any image is predicted the run stops with
an error listing them and writes nothing. Other files in ``out_dir`` are left alone. Every file is
encoded in memory and written atomically (temporary file beside it, then renamed), so a crash never
leaves a half-written PNG under an output name, and a replaced file is either old or new.

Predictions have the image's own size, upright as its EXIF orientation says
(:func:`spcl.predict_io.read_image`; 16-bit images are reduced to 8 bits): the image may be resized
for the network (``size``, as evaluation does), and probabilities come back at full resolution from
the one inference entry point, :func:`spcl.evaluation.api.infer` (flip, scales, optional sliding
window; images smaller than a MiT encoder accepts are padded there). An image over 4 times the
pixels of the input the model trained on (:data:`spcl.predict_io.LARGE_IMAGE_FACTOR`) gets a
one-line hint to pass ``size`` (when that input is known:
:func:`spcl.predict_io.recorded_input_size`). An image that cannot be read or
segmented stops the run with one line naming it, or with ``on_error="skip"`` is left out, named,
and the run goes on. Messages are written on their own line, above the progress bar.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from spcl.base import (
    DatasetError,
    MissingFileError,
    UsageError,
    atomic_write_bytes,
)
from spcl.data.labels import ClassTable, class_table_for
from spcl.data.lists import IMAGE_SUFFIXES, to_tensor
from spcl.data.transforms import build_eval_transform
from spcl.evaluation.api import infer
from spcl.evaluation.sliding import parse_slide
from spcl.models.files import load_model_file
from spcl.predict_io import (
    images_to_predict,
    large_image_hint,
    read_image,
    recorded_input_size,
    settings_record,
    write_record,
)
from spcl.progress import progress_bar

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
        on_error: an image that cannot be read or segmented: ``"fail"`` raises, ``"skip"``
            logs a warning naming it and goes on (and a last warning lists every image skipped).
        overwrite: predict every image and replace existing outputs (default: skip the images
            already predicted with this model and these settings; refuse other outputs).
        progress: show a tqdm bar.

    Returns:
        The written files, in input order (none for the images skipped).

    Raises:
        FileNotFoundError: an input path (or a pattern's matches) does not exist.
        CheckpointError: the model file does not fit its architecture or ``num_classes``.
        FileExistsError: without ``overwrite``, outputs of another model or other settings
            already exist (named; nothing is written).
        ValueError: bad arguments, ``out_dir`` is a file, two inputs that would write the same
            file, or (``"fail"``) an image that cannot be read or segmented, named.
    """
    if on_error not in ("fail", "skip"):
        raise UsageError(f"--on-error must be fail or skip, got {on_error!r}")
    if uncertainty not in ("confidence", "entropy"):
        raise UsageError(f"--uncertainty must be confidence or entropy, got {uncertainty!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the predictions")
    if slide is not None:
        _check_slide(slide)
    images = collect_images(inputs)
    model, info = load_model_file(model_file, device, num_classes=num_classes)
    table = class_table_for(
        info["class_names"], info["arch"]["num_classes"], model_file, info["palette"]
    )
    kind = uncertainty if save_confidence else None
    kinds = output_kinds(table, kind)
    record = settings_record(Path(model_file), flip=flip, scales=scales, slide=slide, size=size)
    todo = images
    if not overwrite:
        planned = {name: [output_path(out_dir, k, name) for k in kinds] for _, name in images}
        left = set(images_to_predict(out_dir, planned, record))
        todo = [(path, name) for path, name in images if name in left]
    if todo:
        write_record(out_dir, record)
    trained = recorded_input_size(Path(model_file)) if size is None else None
    written: list[Path] = []
    skipped: list[Path] = []
    hinted = False
    with _messages_above(progress):
        for path, name in progress_bar(todo, desc="predict", unit="img", disable=not progress):
            try:
                image = read_image(path)
                if not hinted and (hint := large_image_hint(path, image.shape[:2], trained)):
                    logger.warning(hint)
                    hinted = True
                probs = _segment(model, path, image, flip, scales, slide, size)
            except DatasetError as exc:
                if on_error == "fail":
                    raise
                logger.warning("skipped %s: %s", path, exc)
                skipped.append(path)
                continue
            written += _write_outputs(out_dir, name, image, probs, table, kind)
    if skipped:
        logger.warning(
            "--on-error skip: skipped %d of %d image(s): %s",
            len(skipped), len(images), ", ".join(map(str, skipped)),
        )  # fmt: skip
    return written


def _check_slide(slide: Sequence[int]) -> None:
    """UsageError for a ``slide`` that :func:`parse_slide` refuses (before any image is read)."""
    try:
        parse_slide(slide)
    except ValueError as exc:
        raise UsageError(f"--slide: {exc}") from exc


def _segment(
    model: nn.Module,
    path: Path,
    image: np.ndarray,
    flip: bool,
    scales: Sequence[float],
    slide: Sequence[int] | None,
    size: Sequence[int] | None,
) -> torch.Tensor:
    """:func:`predict_image`, with a model's failure (e.g. out of memory) a DatasetError naming
    the image."""
    try:
        return predict_image(model, image, flip=flip, scales=scales, slide=slide, size=size)
    except RuntimeError as exc:
        height, width = image.shape[:2]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(
            f"cannot segment {path} ({height}x{width} pixels): {first}; --size H,W or --slide "
            f"resize or cut it for the network"
        ) from exc


@contextlib.contextmanager
def _messages_above(progress: bool) -> Iterator[None]:
    """While a progress bar shows, log lines are written above it, each on its own line."""
    if not progress:
        yield
        return
    with logging_redirect_tqdm():
        yield


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
    probs = infer(model, tensor, (height, width), flip=flip, scales=scales, slide=slide)
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
