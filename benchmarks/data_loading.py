"""Images/s of each dataset reader on this machine, on fake trees at the real sizes.

Writes, in a temporary folder, ``--images`` image/label pairs per dataset in its official layout
and at its real resolution (GTA5 1914×1052 palette labels, SYNTHIA 1280×760 with 16-bit 3-channel
labels, Synscapes 2048×1024 ``rgb-2k`` images with 1440×720 class maps, Cityscapes 2048×1024),
with smooth textured images that compress like renders. Then, per dataset, it times:

* ``decode``: one process reading image + label and mapping ids (``dataset.load``), no resize;
* ``train wN``: the reference training pipeline through a DataLoader with N worker processes
  (source: resize to 1280×720 + colour jitter 0.5; Cityscapes as target: resize to 1024×512),
  batches of ``--batch``, pinned memory when CUDA is present; worker start-up excluded;
* for Cityscapes also ``val``: test-time resize of the image to 1024×512, full-size labels.

Run: ``PYTHONPATH=src python benchmarks/data_loading.py [--images 20] [--workers 0 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from spcl.data.lists import SegmentationList
from spcl.data.registry import build_dataset
from spcl.data.transforms import PairTransform, build_eval_transform, build_train_transform

SIZES = {  # (H, W) of the distributed images
    "gta5": (1052, 1914),
    "synthia": (760, 1280),
    "synscapes": (1024, 2048),
    "cityscapes": (1024, 2048),
}
SYNSCAPES_LABEL_HW = (720, 1440)  # Synscapes class maps are 1440×720 whatever the image folder
SOURCE_SIZE = (720, 1280)  # reference source resize (H, W)
TARGET_SIZE = (512, 1024)  # reference target / evaluation resize
COLOR_JITTER = 0.5  # reference source colour jitter strength
BLOCK = 16  # image structure scale in pixels (smooth regions like rendered scenes)
NOISE_STD = 1.0  # grey-level texture noise (files of ~1.5 bytes/pixel, like the real PNGs)
MAX_RAW_ID = {"gta5": 33, "synthia": 22, "synscapes": 33, "cityscapes": 33}


def fake_image(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    small = rng.integers(0, 256, (hw[0] // BLOCK, hw[1] // BLOCK, 3), dtype=np.uint8)
    image = cv2.resize(small, hw[::-1], interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return np.clip(image + rng.normal(0.0, NOISE_STD, image.shape), 0, 255).astype(np.uint8)


def fake_ids(rng: np.random.Generator, hw: tuple[int, int], high: int) -> np.ndarray:
    small = rng.integers(0, high + 1, (hw[0] // (4 * BLOCK), hw[1] // (4 * BLOCK)), np.uint8)
    return cv2.resize(small, hw[::-1], interpolation=cv2.INTER_NEAREST)


def write_pair(kind: str, root: Path, index: int, rng: np.random.Generator) -> None:
    hw = SIZES[kind]
    names = {
        "gta5": ("images/{i:05d}.png", "labels/{i:05d}.png"),
        "synthia": ("RGB/{i:07d}.png", "GT/LABELS/{i:07d}.png"),
        "synscapes": ("img/rgb-2k/{i}.png", "img/class/{i}.png"),
        "cityscapes": (
            "leftImg8bit/train/aachen/aachen_000000_{i:06d}_leftImg8bit.png",
            "gtFine/train/aachen/aachen_000000_{i:06d}_gtFine_labelIds.png",
        ),
    }[kind]
    image, label = (root / name.format(i=index) for name in names)
    for path in (image, label):
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(fake_image(rng, hw)).save(image)
    ids = fake_ids(rng, SYNSCAPES_LABEL_HW if kind == "synscapes" else hw, MAX_RAW_ID[kind])
    if kind == "synthia":  # 16-bit, class id in the file's first channel (OpenCV writes BGR)
        instances = fake_ids(rng, hw, 255).astype(np.uint16) * 4  # piecewise, like objects
        cv2.imwrite(str(label), np.dstack([0 * instances, instances, ids.astype(np.uint16)]))
    elif kind == "gta5":
        palette_label = Image.fromarray(ids, mode="P")
        palette_label.putpalette([v for i in range(256) for v in (i, (i * 7) % 256, 255 - i)])
        palette_label.save(label)
    else:
        Image.fromarray(ids, mode="L").save(label)


def rate(count: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def decode_rate(dataset: SegmentationList) -> float:
    return rate(len(dataset), lambda: [dataset.load(i) for i in range(len(dataset))])


def loader_rate(dataset: SegmentationList, workers: int, batch: int, passes: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
    )
    for _ in loader:  # starts the workers (not timed)
        break

    def consume() -> None:
        for _ in range(passes):
            for _ in loader:
                pass

    return rate(passes * (len(dataset) // batch) * batch, consume)


def benchmark(kind: str, root: Path, args: argparse.Namespace) -> list[str]:
    target = kind == "cityscapes"
    train: PairTransform = build_train_transform(
        size=TARGET_SIZE if target else SOURCE_SIZE, color_jitter=0.0 if target else COLOR_JITTER
    )
    plain = build_dataset(kind, root, with_labels=True)
    dataset = build_dataset(kind, root, with_labels=True, transform=train)
    megabytes = sum(p.stat().st_size for p in plain.images + plain.labels) / len(plain) / 1e6
    cells = [f"{kind:<11}", f"{megabytes:>7.1f}", f"{decode_rate(plain):>7.1f}"]
    cells += [f"{loader_rate(dataset, w, args.batch, args.passes):>8.1f}" for w in args.workers]
    if target:
        val = build_dataset(
            kind, root, with_labels=True, transform=build_eval_transform(TARGET_SIZE)
        )
        cells.append(f"val w{args.workers[-1]}: {loader_rate(val, args.workers[-1], 1, 1):.1f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="pairs per dataset")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts")
    parser.add_argument("--batch", type=int, default=2, help="images per batch")
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the images")
    parser.add_argument("--kinds", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    header = ["dataset    ", "MB/pair", "decode "] + [f"train w{w}" for w in args.workers]
    print(f"images/s, {args.images} pairs per dataset, {torch.get_num_threads()} torch threads")
    print("  ".join(header))
    with tempfile.TemporaryDirectory(prefix="spcl_bench_") as tmp:
        for kind in args.kinds:
            rng = np.random.default_rng(0)
            for index in range(1, args.images + 1):
                write_pair(kind, Path(tmp) / kind, index, rng)
            print("  ".join(benchmark(kind, Path(tmp) / kind, args)), flush=True)


if __name__ == "__main__":
    main()
