"""The Dataset class every reader builds (explicit image/label lists), and image/label decoding.

:class:`SegmentationList` holds paired image and label paths (made by the readers through
:mod:`spcl.data.layout`); labels are single-channel PNGs of train ids (255 = ignore), or raw ids
mapped through a decoder or lookup table, read by :func:`spcl.data.label_png.read_label_png`.
Every problem names the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from spcl.base import IMAGENET_MEAN, IMAGENET_STD, DatasetError
from spcl.data.label_png import read_label_png
from spcl.data.transforms import PairTransform, balanced_label

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "SegmentationList",
    "read_image",
    "to_tensor",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LABEL_BIT_DEPTH = 8  # default labels are 8-bit maps; 16-bit ones are refused (their mode named)
SAMPLE_RETRIES = 10  # redraws of a rare-class sample short of its class (DAFormer's RCS)


def _retry_seed(seed: int, attempt: int) -> int:
    """The seed of redraw ``attempt`` of a sample (attempt 0: the sample's own seed)."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0] >> 1)


def read_image(path: Path, mode: str = "RGB") -> np.ndarray:
    """Decode an image fully; a corrupt or truncated file raises ValueError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.array(image.convert(mode) if image.mode != mode else image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → normalised float (3, H, W)."""
    if not image.flags.writeable:  # PIL-backed arrays are read-only; torch warns on them
        image = image.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous().float()
    mean = torch.tensor(IMAGENET_MEAN).mul_(255.0).view(3, 1, 1)
    scale = torch.tensor(IMAGENET_STD).mul_(255.0).reciprocal_().view(3, 1, 1)
    return tensor.sub_(mean).mul_(scale)  # channels-first copy first: 2-3× faster than strided


class SegmentationList(Dataset):
    """Explicit lists of images and (optional) same-length labels; the base of every dataset.

    Items are indexed by ``(index, seed)`` pairs (the seed drives the transform), or a plain index
    (seed 0), or ``(index, seed, class)`` from rare-class sampling: with ``min_class_pixels`` > 0
    the transformed sample is drawn again (new crop, up to 10 times) until it holds more than that
    many pixels of ``class``, as DAFormer's ``get_rare_class_sample``. Each item is a dict
    ``{"image": (3, H, W) float, "label": (H, W) int64, "name": str}`` (no ``"label"`` without
    labels), plus ``"size"``: the file's (H, W) before any resize. Raw
    label values go through ``id_lut`` when given.

    Args:
        images: image files.
        labels: label files, one per image, or None for unlabelled data.
        transform: paired augmentation; None keeps the files' size.
        id_lut: raw id → train id lookup array (e.g. ``ClassTable.id_lut()``).
        label_reader: decodes one label file; None: an 8-bit single-channel PNG
            (:func:`spcl.data.label_png.read_label_png`, errors naming the file).
        names: item names (default: image file stems).

    Raises:
        ValueError: no images, or lists of different lengths.
    """

    def __init__(
        self,
        images: Sequence[Path],
        labels: Sequence[Path] | None = None,
        transform: PairTransform | None = None,
        id_lut: np.ndarray | None = None,
        label_reader: Callable[[Path], np.ndarray] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.images = list(images)
        self.labels = list(labels) if labels is not None else []
        if not self.images:
            raise DatasetError("empty image list")
        if labels is not None and len(self.labels) != len(self.images):
            raise DatasetError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.transform = transform
        self.id_lut = id_lut
        self.label_reader = label_reader or partial(read_label_png, max_bits=LABEL_BIT_DEPTH)
        self.names = list(names) if names is not None else [p.stem for p in self.images]
        self.min_class_pixels = 0.0  # set by rare-class sampling (see _transformed); 0: off
        self.pseudo_margins: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # set by the
        # online stage: ([top, bottom, left, right], the (H, W) they are given at); unlabelled
        # samples then carry "pseudo_valid" (HRDA's PL crop v2, see _margin_mask)
        self.joint_tries = 0  # VFM-UDA's rare-class crop rule (see _joint_draw); 0: DAFormer's
        self.max_share = 1.0  # ... and its top-class share limit

    def __len__(self) -> int:
        return len(self.images)

    def _transformed(
        self, image: np.ndarray, label: np.ndarray | None, seed: int, drawn: int | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The transformed sample; redrawn (up to ``SAMPLE_RETRIES`` times, new seeds) while its
        label holds no more than ``min_class_pixels`` pixels of the ``drawn`` class (DAFormer's
        rare-class crop rule; the last draw is kept either way)."""
        if self.joint_tries and drawn is not None and label is not None:
            return self._joint_draw(image, label, seed, drawn)
        out_image, out_label = self.transform(image, label, seed)
        if drawn is None or label is None or self.min_class_pixels <= 0:
            return out_image, out_label
        for attempt in range(1, SAMPLE_RETRIES + 1):
            if np.count_nonzero(out_label == drawn) > self.min_class_pixels:
                break
            out_image, out_label = self.transform(image, label, _retry_seed(seed, attempt))
        return out_image, out_label

    def _joint_draw(
        self, image: np.ndarray, label: np.ndarray, seed: int, drawn: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """VFM-UDA's rare-class crop (``rare_class_sampler_dataset.py``): up to ``joint_tries``
        draws, the first with more than ``min_class_pixels`` of the ``drawn`` class and no class
        at ``max_share`` or more kept; failing that, one more draw, unchecked."""
        for attempt in range(self.joint_tries + 1):
            out_image, out_label = self.transform(image, label, _retry_seed(seed, attempt))
            if attempt == self.joint_tries:
                break
            assert out_label is not None
            enough = np.count_nonzero(out_label == drawn) > self.min_class_pixels
            if enough and balanced_label(out_label, self.max_share):
                break
        return out_image, out_label

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The decoded image (H, W, 3) and train-id label (H, W) of item ``index``, untransformed.

        Raises:
            ValueError: unreadable file, or label and image sizes differ (names both files).
        """
        image = read_image(self.images[index])
        if not self.labels:
            return image, None
        label = self.label_reader(self.labels[index])
        if label.shape != image.shape[:2]:
            raise DatasetError(
                f"label {self.labels[index]} is {label.shape[1]}x{label.shape[0]} but image "
                f"{self.images[index]} is {image.shape[1]}x{image.shape[0]}"
            )
        if self.id_lut is not None:
            label = self.id_lut[label]
        return image, label

    def __getitem__(self, item: int | tuple[int, ...]) -> dict[str, torch.Tensor | str]:
        index, seed, *drawn = item if isinstance(item, tuple) else (item, 0)
        image, label = self.load(index)
        size = torch.tensor(image.shape[:2])
        margins = self.pseudo_margins is not None and label is None
        if margins:  # the mask rides through resize, crop and flip in the label's place
            label = _margin_mask(image.shape[:2], *self.pseudo_margins)  # type: ignore[misc]
        if self.transform is not None:
            image, label = self._transformed(image, label, seed, drawn[0] if drawn else None)
        sample: dict[str, torch.Tensor | str] = {
            "image": to_tensor(image),
            "name": self.names[index],
            "size": size,  # (H, W) of the file, before any resize
        }
        if margins:
            sample["pseudo_valid"] = torch.from_numpy(np.array(label) == 1)  # padding: invalid
        elif label is not None:
            sample["label"] = torch.from_numpy(np.array(label)).long()  # a writable copy
        return sample


def _margin_mask(
    file_size: Sequence[int], margins: Sequence[int], given_at: Sequence[int]
) -> np.ndarray:
    """1 inside, 0 in the ``[top, bottom, left, right]`` margins, at the file's size.

    ``margins`` are pixels of the image at ``given_at`` (the configured resize; empty: the file
    size), scaled to the file's size here, so that the loader's resize brings them back.
    """
    height, width = (int(v) for v in file_size)
    at_h, at_w = (int(v) for v in given_at) if given_at else (height, width)
    top, bottom, left, right = (int(v) for v in margins)
    mask = np.ones((height, width), dtype=np.uint8)
    mask[: round(top * height / at_h)] = 0
    mask[height - round(bottom * height / at_h) :] = 0
    mask[:, : round(left * width / at_w)] = 0
    mask[:, width - round(right * width / at_w) :] = 0
    return mask
