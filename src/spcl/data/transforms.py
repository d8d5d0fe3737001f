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

__all__ = [
    "ClassLimitedCrop",
    "PairTransform",
    "balanced_label",
    "build_eval_transform",
    "build_train_transform",
]

HUE_JITTER = 0.2  # reference colour jitter hue (brightness/contrast/saturation share one strength)
CROP_RETRIES = 10  # redraws of a crop one class dominates (mmseg RandomCrop, DAFormer's source)
LABEL_VALUES = 256  # bins of a uint8 label's histogram
PAD_POSITIONS = {  # online.pad → where albumentations' PadIfNeeded puts the image
    "center": "center",  # padding on every side
    "bottom_right": "top_left",  # the image at the top left: padding right and below
}


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


class ClassLimitedCrop(A.RandomCrop):
    """A random crop, drawn again while one class dominates it (mmseg's ``cat_max_ratio``).

    DAFormer crops its source images this way (``RandomCrop(cat_max_ratio=0.75)``, lhoyer/DAFormer
    ``mmseg/datasets/pipelines/transforms.py``): after the first draw, up to ``retries`` times,
    a crop whose labelled pixels (``ignore_index`` left out) hold fewer than two classes, or one
    class with a share of ``max_share`` or more, is replaced by a new draw; the last draw is kept
    either way. Without a mask (unlabelled images) the first draw is kept. Draws come from the
    transform's seeded generator, so a sample's crop is the same in every run.
    """

    def __init__(
        self,
        height: int,
        width: int,
        max_share: float,
        retries: int = CROP_RETRIES,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(height, width)
        self.max_share, self.retries, self.ignore_index = max_share, retries, ignore_index

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        chosen = super().get_params_dependent_on_data(params, data)
        mask = data.get("mask")
        if mask is None:
            return chosen
        for _ in range(self.retries):
            x0, y0, x1, y1 = chosen["crop_coords"]
            if self.balanced(mask[y0:y1, x0:x1]):
                break
            chosen = super().get_params_dependent_on_data(params, data)
        return chosen

    def balanced(self, label: np.ndarray) -> bool:
        """Two classes or more, none with ``max_share`` or more of the labelled pixels."""
        return balanced_label(label, self.max_share, self.ignore_index)


def balanced_label(label: np.ndarray, max_share: float, ignore_index: int = IGNORE_INDEX) -> bool:
    """Two classes or more in ``label``, none with ``max_share`` or more of its labelled pixels
    (``ignore_index`` left out): mmseg's ``cat_max_ratio`` rule."""
    counts = np.bincount(label.ravel(), minlength=LABEL_VALUES)
    if ignore_index < counts.size:
        counts[ignore_index] = 0
    present = counts[counts > 0]
    return bool(present.size > 1 and present.max() < max_share * present.sum())


def build_train_transform(
    *,
    size: list[int] | tuple[int, ...] = (),
    hflip: bool = False,
    color_jitter: float = 0.0,
    scale_range: list[float] | tuple[float, ...] = (),
    crop: list[int] | tuple[int, ...] = (),
    crop_max_share: float = 1.0,
    pad: str = "center",
) -> PairTransform:
    """Training augmentation, in the reference's order.

    Args:
        size: fixed resize ``[H, W]`` (reference: source 720×1280, target 512×1024); empty keeps.
        hflip: random horizontal flip with probability 0.5.
        color_jitter: brightness/contrast/saturation strength (reference 0.5, hue 0.2); 0 = off.
        scale_range: random rescale ``[lo, hi]`` before the crop (reference self-training 0.5–1.5).
        crop: random crop ``[H, W]``, padded with ignore where the image is smaller.
        crop_max_share: below 1, the crop is drawn again (up to 10 times) while one class holds
            this share or more of its labelled pixels (:class:`ClassLimitedCrop`; DAFormer's
            source crop 0.75); 1 takes the first draw.
        pad: where an image smaller than ``crop`` is padded (image 0, label ignore):
            ``center`` on every side, half each; ``bottom_right`` to the right and below only,
            the image at the top left (mmseg's ``Pad``, VFM-UDA++'s ``UDATransform``).
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
                crop[0],
                crop[1],
                position=PAD_POSITIONS[pad],
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
            )
        )
        if crop_max_share < 1:
            ops.append(ClassLimitedCrop(crop[0], crop[1], crop_max_share))
        else:
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
