"""Paired image/label transforms (albumentations): labels are only ever resized with nearest.

Each sample is transformed with its own seed (drawn by the sampler from the run seed, the epoch and
the position), so a resumed or re-run training sees exactly the same augmented batches whatever the
number of worker processes.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home at import

import albumentations as A
import cv2
import numpy as np

from spcl.base import IGNORE_INDEX

__all__ = ["PairTransform", "build_eval_transform", "build_train_transform"]

HUE_JITTER = 0.2  # reference colour jitter hue (brightness/contrast/saturation share one strength)


class PairTransform:
    """Apply an albumentations pipeline to (image, label) with a per-sample seed."""

    def __init__(self, transforms: list[A.BasicTransform]) -> None:
        self.compose = A.Compose(transforms, seed=0)

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, seed: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        self.compose.set_random_seed(seed)
        if label is None:
            return self.compose(image=image)["image"], None
        out = self.compose(image=image, mask=label)
        return out["image"], out["mask"]


def build_train_transform(
    *,
    size: list[int] | tuple[int, ...] = (),
    hflip: bool = False,
    color_jitter: float = 0.0,
    scale_range: list[float] | tuple[float, ...] = (),
    crop: list[int] | tuple[int, ...] = (),
) -> PairTransform:
    """Training augmentation, in the reference's order.

    Args:
        size: fixed resize ``[H, W]`` (reference: source 720×1280, target 512×1024); empty keeps.
        hflip: random horizontal flip with probability 0.5.
        color_jitter: brightness/contrast/saturation strength (reference 0.5, hue 0.2); 0 = off.
        scale_range: random rescale ``[lo, hi]`` before the crop (reference self-training 0.5–1.5).
        crop: random crop ``[H, W]``, padded with ignore where the image is smaller.
    """
    ops: list[A.BasicTransform] = []
    if size:
        ops.append(A.Resize(size[0], size[1], interpolation=cv2.INTER_LINEAR))
    if scale_range:
        lo, hi = scale_range
        ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), p=1.0))
    if crop:
        ops.append(
            A.PadIfNeeded(
                crop[0], crop[1], border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX
            )
        )
        ops.append(A.RandomCrop(crop[0], crop[1]))
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        ops.append(
            A.ColorJitter(
                brightness=color_jitter,
                contrast=color_jitter,
                saturation=color_jitter,
                hue=HUE_JITTER,
                p=1.0,
            )
        )
    return PairTransform(ops)


def build_eval_transform(size: list[int] | tuple[int, ...] = ()) -> PairTransform:
    """Test-time resize of the image only; the label keeps its full resolution."""
    ops = [A.Resize(size[0], size[1], interpolation=cv2.INTER_LINEAR)] if size else []
    return _ImageOnly(ops)


class _ImageOnly(PairTransform):
    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, seed: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        self.compose.set_random_seed(seed)
        return self.compose(image=image)["image"], label
