"""How far apart the synthetic pair's two domains are, per preset, measured on rendered scenes.

For each preset (``none``, ``mild``, ``strong``) it renders ``--scenes`` train and
``--scenes // 2`` val scenes per domain in memory (seed ``--seed``, ``--size``) and prints:

* ``moved > 30``: for how many of the 19 classes the mean RGB colour of the class moves by more
  than 30 (L2, 0..255 scale) from source to target, and the median move over classes;
* a nearest-class-mean colour classifier (every pixel takes the class whose mean training colour is
  closest) fitted on source train, scored (mIoU, 19 classes) on source val and target val, and one
  fitted on target train (an oracle that may only use colour), scored on target val.

It says how much of the shift is plain colour, and how little colour alone tells in the target.
The source-only → oracle gap of a trained model is measured by ``spcl bench`` (docs/synthetic.md).

Run: ``PYTHONPATH=src python benchmarks/synthetic_shift.py [--scenes 200] [--size 128 256]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from spcl.data.labels import CITYSCAPES
from spcl.data.synthetic import render_scene, scene_rng
from spcl.data.synthetic.style import PRESETS, ShiftParams
from spcl.evaluation.metrics import ConfusionMatrix

NUM_CLASSES = 19
MOVE_MARGIN = 30.0  # a class "moved" when its mean colour shifts by more than this (0..255 L2)


def render_split(
    seed: int, domain: str, split: str, n: int, size: tuple[int, int], shift: ShiftParams
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes as flat arrays: pixels (P, 3) float32 and labels (P,) uint8."""
    images, labels = [], []
    for index in range(n):
        image, label = render_scene(scene_rng(seed, domain, split, index), size, domain, shift)
        images.append(image.reshape(-1, 3))
        labels.append(label.reshape(-1))
    return np.concatenate(images).astype(np.float32), np.concatenate(labels)


def class_means(pixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, 3) mean colour of each class; NaN rows for classes with no pixel."""
    means = np.full((NUM_CLASSES, 3), np.nan, dtype=np.float64)
    for k in range(NUM_CLASSES):
        mask = labels == k
        if mask.any():
            means[k] = pixels[mask].mean(axis=0)
    return means


def nearest_mean_miou(means: np.ndarray, pixels: np.ndarray, labels: np.ndarray) -> float:
    """mIoU (percent) of labelling each pixel with the class of the nearest mean colour."""
    valid = ~np.isnan(means[:, 0])
    centres = torch.from_numpy(means[valid]).float()
    ids = torch.from_numpy(np.flatnonzero(valid))
    confusion = ConfusionMatrix(NUM_CLASSES)
    for start in range(0, len(pixels), 1 << 20):  # chunks keep the distance matrix small
        chunk = torch.from_numpy(pixels[start : start + (1 << 20)])
        pred = ids[torch.cdist(chunk, centres).argmin(dim=1)]
        confusion.update(pred, torch.from_numpy(labels[start : start + (1 << 20)]).long())
    return confusion.compute(CITYSCAPES.names).miou  # already in percent


def measure(preset: str, seed: int, n: int, size: tuple[int, int]) -> dict[str, float]:
    shift = PRESETS[preset]
    data = {
        (domain, split): render_split(seed, domain, split, count, size, shift)
        for domain in ("source", "target")
        for split, count in (("train", n), ("val", max(1, n // 2)))
    }
    src_means = class_means(*data["source", "train"])
    tgt_means = class_means(*data["target", "train"])
    moves = np.linalg.norm(tgt_means - src_means, axis=1)
    moves = moves[~np.isnan(moves)]
    return {
        "moved": int((moves > MOVE_MARGIN).sum()),
        "median_move": float(np.median(moves)),
        "src_on_src": nearest_mean_miou(src_means, *data["source", "val"]),
        "src_on_tgt": nearest_mean_miou(src_means, *data["target", "val"]),
        "tgt_on_tgt": nearest_mean_miou(tgt_means, *data["target", "val"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200, help="train scenes per domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    parser.add_argument("--presets", nargs="+", default=["none", "mild", "strong"])
    args = parser.parse_args()
    size = (args.size[0], args.size[1])
    n_val = args.scenes // 2
    print(f"{args.scenes} train + {n_val} val scenes per domain, {size}, seed {args.seed}")
    print(
        "| preset | classes moved > 30 | median move | colour classifier: src→src val "
        "| src→tgt val | tgt→tgt val |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for preset in args.presets:
        r = measure(preset, args.seed, args.scenes, size)
        print(
            f"| {preset} | {r['moved']} / {NUM_CLASSES} | {r['median_move']:.0f} "
            f"| {r['src_on_src']:.1f} | {r['src_on_tgt']:.1f} | {r['tgt_on_tgt']:.1f} |"
        )


if __name__ == "__main__":
    main()
