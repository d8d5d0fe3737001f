"""Small dataset trees in the layouts GTA5, SYNTHIA, Synscapes and Cityscapes are distributed in.

File names, folders, bit depths and id encodings are the real ones (docs/datasets.md), sizes are
the real sizes ÷ ``scale`` (8 by default: GTA5 1914×1052 → 239×131, Cityscapes 2048×1024 →
256×128). Labels are blocks of random ids drawn from the ids the dataset uses (some of them
ignored ones), so that every class has images with a few hundred pixels of it, as rare-class
sampling needs. Images are noisy colours of their label blocks.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CITYSCAPES_IDS = (0, 4, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
SYNTHIA_IDS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 17, 19, 21)  # class ids (RGB's R)
BLOCK = 16  # label block side at scale 8 (pixels)
REAL_SIZES = {  # (width, height) of the distributed files
    "gta5": (1914, 1052),
    "synthia": (1280, 760),
    "synscapes_image": (2048, 1024),  # img/rgb-2k
    "synscapes_label": (1440, 720),  # img/class (whatever the image folder)
    "cityscapes": (2048, 1024),
    "folder": (1024, 512),  # a user's own frames (any size; the example config resizes them)
}


def _size(key: str, scale: int) -> tuple[int, int]:
    width, height = REAL_SIZES[key]
    return round(width / scale), round(height / scale)


def _blocks(rng: np.random.Generator, ids: tuple[int, ...], size: tuple[int, int]) -> np.ndarray:
    """(H, W) ids in blocks of :data:`BLOCK` pixels; each image holds every id at least once."""
    width, height = size
    rows, cols = -(-height // BLOCK), -(-width // BLOCK)
    grid = rng.choice(np.asarray(ids), size=rows * cols)
    grid[: len(ids)] = rng.permutation(np.asarray(ids))[: min(len(ids), rows * cols)]
    grid = rng.permutation(grid).reshape(rows, cols)
    return np.kron(grid, np.ones((BLOCK, BLOCK), dtype=grid.dtype))[:height, :width]


def _image(rng: np.random.Generator, ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB picture of a label map (at ``size``): a colour per id, plus noise."""
    width, height = size
    if ids.shape != (height, width):
        ids = cv2.resize(ids.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    ids = ids.astype(np.int64)
    colours = np.stack([(ids * 37) % 256, (ids * 91) % 256, (ids * 53) % 256], axis=-1)
    noise = rng.normal(0, 20, colours.shape)
    return np.clip(colours + noise, 0, 255).astype(np.uint8)


def _save_rgb(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _save_grey(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def write_gta5(root: Path, n: int = 8, scale: int = 8, seed: int = 0) -> Path:
    """``images/00001.png``, ``labels/00001.png`` (8-bit palette, index = Cityscapes label id)."""
    rng = np.random.default_rng(seed)
    size = _size("gta5", scale)
    for i in range(1, n + 1):
        ids = _blocks(rng, CITYSCAPES_IDS, size)
        _save_rgb(root / "images" / f"{i:05d}.png", _image(rng, ids, size))
        label = Image.fromarray(ids.astype(np.uint8), mode="P")
        label.putpalette([v for k in range(256) for v in ((k * 7) % 256, 200, 3)])
        (root / "labels").mkdir(parents=True, exist_ok=True)
        label.save(root / "labels" / f"{i:05d}.png")
    return root


def write_synthia(root: Path, n: int = 8, scale: int = 8, seed: int = 1) -> Path:
    """``RGB/0000000.png``, ``GT/LABELS/0000000.png`` (16-bit 3-channel: class id, instance, 0)."""
    rng = np.random.default_rng(seed)
    size = _size("synthia", scale)
    for i in range(n):
        ids = _blocks(rng, SYNTHIA_IDS, size)
        _save_rgb(root / "RGB" / f"{i:07d}.png", _image(rng, ids, size))
        instances = rng.integers(0, 3000, ids.shape)  # above 255: the 16 bits matter
        rgb = np.dstack([ids, instances, np.zeros_like(ids)]).astype(np.uint16)
        path = root / "GT" / "LABELS" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), rgb[..., ::-1]):  # OpenCV writes BGR: R holds the class
            raise OSError(f"could not write {path}")
    return root


def write_synscapes(root: Path, n: int = 8, scale: int = 8, seed: int = 2) -> Path:
    """``img/rgb-2k/1.png`` (2048×1024 ÷ scale) and ``img/class/1.png`` (1440×720 ÷ scale)."""
    rng = np.random.default_rng(seed)
    label_size, image_size = _size("synscapes_label", scale), _size("synscapes_image", scale)
    for i in range(1, n + 1):
        ids = _blocks(rng, CITYSCAPES_IDS, label_size)
        _save_rgb(root / "img" / "rgb-2k" / f"{i}.png", _image(rng, ids, image_size))
        _save_grey(root / "img" / "class" / f"{i}.png", ids)
    return root


def write_cityscapes(
    root: Path, splits: dict[str, int] | None = None, scale: int = 8, seed: int = 3
) -> Path:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/…_gtFine_labelIds.png``
    (with the ``instanceIds`` and ``color`` files beside them, as distributed)."""
    rng = np.random.default_rng(seed)
    size = _size("cityscapes", scale)
    for split, count in (splits or {"train": 8, "val": 4}).items():
        for i in range(count):
            city = ("aachen", "bochum", "frankfurt")[i % 3]
            stem = f"{city}_{i:06d}_000019"
            ids = _blocks(rng, CITYSCAPES_IDS, size)
            _save_rgb(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                _image(rng, ids, size),
            )
            labels = root / "gtFine" / split / city
            _save_grey(labels / f"{stem}_gtFine_labelIds.png", ids)
            _save_grey(labels / f"{stem}_gtFine_instanceIds.png", ids * 0 + 1)
            _save_rgb(labels / f"{stem}_gtFine_color.png", _image(rng, ids, size))
    return root


def write_folder(
    root: Path, splits: dict[str, int] | None = None, scale: int = 8, seed: int = 4
) -> Path:
    """A user's own dataset (kind ``folder``): ``classes.yaml`` with four classes,
    ``images/<split>/NAME.jpg`` and ``labels/<split>/NAME.png`` (class ids, 255 unlabelled),
    1024×512 ÷ ``scale`` (JPEG images, as cameras write them)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text("names: [road, car, person, sky]\n")
    size = _size("folder", scale)
    for split, count in (splits or {"train": 8, "val": 4}).items():
        for i in range(count):
            ids = _blocks(rng, (0, 1, 2, 3, 255), size)
            image = root / "images" / split / f"frame_{i:04d}.jpg"
            _save_rgb(image, _image(rng, ids, size))
            _save_grey(root / "labels" / split / f"frame_{i:04d}.png", ids)
    return root
