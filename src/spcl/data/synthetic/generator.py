"""Seeded synthetic source ("game") → target ("real") street-scene pair, Cityscapes label space.

A small, fully procedural stand-in for GTA5 → Cityscapes that runs on a laptop: street scenes with
all 19 Cityscapes train ids (road, sidewalk, building, ..., bicycle), drawn in two domains with the
same label semantics but a controlled appearance and geometry shift (:class:`ShiftParams`, presets
in :data:`PRESETS`). Every image is seeded from ``(seed, domain, split, index)``, so the same seed
gives byte-identical files whatever the number of worker processes. Layout on disk::

    OUT/manifest.json
    OUT/{source,target}/images/{train,val}/{domain}_{split}_{index:05d}.png   RGB
    OUT/{source,target}/labels/{train,val}/{domain}_{split}_{index:05d}.png   train ids, mode L
    OUT/{source,target}/classes.yaml   the 19 names: each domain also reads as ``kind: folder``
    OUT/preview.png

Drawing lives in :mod:`~spcl.data.synthetic.street` (camera, street),
:mod:`~spcl.data.synthetic.scene` (layout), :mod:`~spcl.data.synthetic.placement` (where objects
stand), :mod:`~spcl.data.synthetic.painter` (projection, painter) and
:mod:`~spcl.data.synthetic.shapes` (objects); appearance and domain effects in
:mod:`~spcl.data.synthetic.style`; :mod:`~spcl.data.synthetic.reader` reads the pair back as the
dataset kind ``synthetic``.
See ``docs/synthetic.md`` for every knob.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spcl.base import (
    IGNORE_INDEX,
    DatasetError,
    MissingFileError,
    OutputExistsError,
    dir_mode,
)
from spcl.data.labels import CITYSCAPES
from spcl.data.synthetic.painter import Painter
from spcl.data.synthetic.scene import paint_scene
from spcl.data.synthetic.street import sample_camera
from spcl.data.synthetic.style import (
    DEFAULT_PRESET,
    PRESETS,
    ShiftParams,
    apply_target_effects,
    domain_geometry,
    material_colours,
)
from spcl.progress import progress_bar

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "PRESETS",
    "SPLITS",
    "ShiftParams",
    "generate_pair",
    "image_name",
    "render_scene",
    "scene_rng",
    "write_preview",
]

GENERATOR_VERSION = "spcl-synthetic-2"  # bump whenever the same seed would give other bytes
DOMAINS = ("source", "target")
SPLITS = ("train", "val")
DOMAIN_HEADERS = {"source": "source (game)", "target": "target (real)"}
MIN_SIZE = 32  # smallest image side, pixels
SIZE_MULTIPLE = 8  # image sides must be multiples of this (output stride of the models)
# zlib level of image PNGs: 1 writes noisy target images ~3× faster than the default 6 for ~13%
# more bytes. Label PNGs keep the default (they are small and quick either way).
IMAGE_PNG_COMPRESSION = 1
PREVIEW_PAD = 4  # pixels between preview tiles
PREVIEW_GAP = 12  # pixels between the source and target blocks of the preview
PREVIEW_HEADER = 16  # pixels of header text above the preview tiles
PREVIEW_BACKGROUND = (255, 255, 255)
PREVIEW_TEXT = (0, 0, 0)
# Workers only use numpy and PIL, so forking is safe and needs no `__main__` guard in scripts;
# elsewhere (macOS, Windows) spawn is the safe choice.
_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 256),
    domain: str = "source",
    shift: ShiftParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one random street scene of ``domain`` in memory.

    Args:
        rng: the scene's random generator (see :func:`scene_rng`); it is advanced.
        size: (H, W) in pixels.
        domain: 'source' (flat game look) or 'target' (shifted realistic look and geometry).
        shift: shift knobs; ``None`` takes the default preset.

    Returns:
        ``(image, label)``: RGB uint8 image and uint8 train ids (0..18, 255 = ignore).

    Shape:
        image: (H, W, 3); label: (H, W).
    """
    if domain not in DOMAINS:
        raise DatasetError(f"domain must be one of {list(DOMAINS)}, got {domain!r}")
    shift = PRESETS[DEFAULT_PRESET] if shift is None else shift
    geometry = domain_geometry(domain, shift)
    camera = sample_camera(rng, size, geometry)
    jitter = shift.source_jitter if domain == "source" else shift.target_jitter
    painter = Painter(camera, material_colours(domain, shift), jitter, rng)
    paint_scene(painter, geometry)
    image, label, shadow = painter.arrays()
    if domain == "target":
        image = apply_target_effects(image, label, shadow, rng, shift)
    return image, label


def scene_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The independent random generator of one image, from ``(seed, domain, split, index)``."""
    key = [seed, DOMAINS.index(domain), SPLITS.index(split), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def image_name(domain: str, split: str, index: int) -> str:
    """File stem of an image and its label, e.g. ``source_train_00012``."""
    return f"{domain}_{split}_{index:05d}"


def _render_task(task: tuple[str, int, str, str, int, tuple[int, int], ShiftParams]) -> None:
    """Render one image and write its two PNGs (runs in worker processes too)."""
    root, seed, domain, split, index, size, shift = task
    image, label = render_scene(scene_rng(seed, domain, split, index), size, domain, shift)
    name = image_name(domain, split, index)
    image_path = Path(root, domain, "images", split, f"{name}.png")
    Image.fromarray(image).save(image_path, format="PNG", compress_level=IMAGE_PNG_COMPRESSION)
    Image.fromarray(label).save(Path(root, domain, "labels", split, f"{name}.png"), format="PNG")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DatasetError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_args(
    seed: int, preset: str, counts: dict[str, int], size: object, workers: int, shift: object
) -> None:
    """Raise ValueError naming the first bad argument of :func:`generate_pair`."""
    _check_int("seed", seed, 0)
    if preset not in PRESETS:
        raise DatasetError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    for name, count in counts.items():
        _check_int(name, count, 1)
    sides = tuple(size) if isinstance(size, tuple | list) else ()
    if len(sides) != 2 or not all(
        isinstance(s, int | np.integer)
        and not isinstance(s, bool)
        and s >= MIN_SIZE
        and s % SIZE_MULTIPLE == 0
        for s in sides
    ):
        raise DatasetError(
            f"size must be (height, width) with each side >= {MIN_SIZE} and a multiple of "
            f"{SIZE_MULTIPLE}, got {size!r}"
        )
    _check_int("workers", workers, 1)
    if shift is not None and not isinstance(shift, ShiftParams):
        raise DatasetError(f"shift must be a ShiftParams or None, got {type(shift).__name__}")


def _manifest(
    seed: int, preset: str, shift: ShiftParams, size: tuple[int, int], counts: dict[str, int]
) -> str:
    """The manifest's JSON text (sorted keys, so the same arguments give the same bytes)."""
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "preset": preset,
        "shift": asdict(shift),
        "geometry": {d: asdict(domain_geometry(d, shift)) for d in DOMAINS},
        "size": list(size),
        "counts": {d: dict(counts) for d in DOMAINS},
        "class_names": list(CITYSCAPES.names),
        "ignore_index": IGNORE_INDEX,
        "layout": "{domain}/{images,labels}/{split}/{domain}_{split}_{index:05d}.png",
    }
    return json.dumps(manifest, sort_keys=True, indent=2) + "\n"


def _class_table_text() -> str:
    """A domain's ``classes.yaml``: the pair reads as two folder datasets (``kind: folder``)."""
    names = ", ".join(CITYSCAPES.names)
    return (
        "# The classes of this synthetic domain in train-id order, so that the domain also\n"
        "# reads as a folder dataset (kind: folder; docs/own_data.md).\n"
        f"names: [{names}]\n"
    )


def _claim_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; create its parent."""
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise OutputExistsError(
            f"output folder {out} exists and is not empty; pass --overwrite to replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames, so ``out`` is never half written."""
    if not out.exists():
        tmp.rename(out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    trash.rmdir()
    out.rename(trash)
    tmp.rename(out)
    if trash.is_dir():
        shutil.rmtree(trash)
    else:
        trash.unlink()


def _render_all(tasks: list, workers: int, progress: bool) -> None:
    bar = progress_bar(total=len(tasks), desc="synthetic pair", unit="img", disable=not progress)
    with bar:
        if workers == 1:
            for task in tasks:
                _render_task(task)
                bar.update()
            return
        chunk = max(1, len(tasks) // (workers * 8))
        context = multiprocessing.get_context(_START_METHOD)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for _ in pool.map(_render_task, tasks, chunksize=chunk):
                bar.update()


def generate_pair(
    out: str | Path,
    seed: int = 0,
    preset: str = DEFAULT_PRESET,
    n_train: int = 300,
    n_val: int = 100,
    size: tuple[int, int] = (128, 256),
    overwrite: bool = False,
    preview: bool = True,
    progress: bool = True,
    workers: int = 1,
    shift: ShiftParams | None = None,
) -> Path:
    """Write a source/target pair (images, labels, manifest, preview) into ``out`` atomically.

    Args:
        out: output folder; it is written as a temporary sibling and renamed into place.
        seed: master seed (>= 0); the same seed gives byte-identical files.
        preset: name of the shift preset (see :data:`PRESETS`).
        n_train: images per domain in the train split.
        n_val: images per domain in the val split.
        size: (H, W), each a multiple of 8 and at least 32.
        overwrite: replace a non-empty ``out``.
        preview: also write ``out/preview.png``.
        progress: show a progress bar (:func:`spcl.progress.progress_bar`).
        workers: processes rendering in parallel (the bytes do not depend on it).
        shift: explicit knobs replacing the preset's (recorded as preset 'custom' if they differ).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: an argument is invalid (the message names it).
        FileExistsError: ``out`` is not empty and ``overwrite`` is False.
    """
    counts = {"n_train": n_train, "n_val": n_val}
    _check_args(seed, preset, counts, size, workers, shift)
    out, seed, size = Path(out), int(seed), (int(size[0]), int(size[1]))
    n_train, n_val, workers = int(n_train), int(n_val), int(workers)
    _claim_output(out, overwrite)
    params = PRESETS[preset] if shift is None else shift
    name = preset if params == PRESETS[preset] else "custom"
    split_counts = {"train": n_train, "val": n_val}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(dir_mode())  # mkdtemp makes it 0o700; the pair gets the umask's usual mode
    try:
        for domain in DOMAINS:
            for kind in ("images", "labels"):
                for split in SPLITS:
                    (tmp / domain / kind / split).mkdir(parents=True)
        tasks = [
            (str(tmp), seed, domain, split, index, size, params)
            for domain in DOMAINS
            for split in SPLITS
            for index in range(split_counts[split])
        ]
        _render_all(tasks, workers, progress)
        manifest = _manifest(seed, name, params, size, split_counts)
        (tmp / "manifest.json").write_text(manifest, encoding="utf-8")
        for domain in DOMAINS:  # the folder reader's class table (the files are its layout)
            (tmp / domain / "classes.yaml").write_text(_class_table_text(), encoding="utf-8")
        if preview:
            write_preview(tmp, tmp / "preview.png")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode))


def write_preview(root: str | Path, path: str | Path, n: int = 4) -> Path:
    """Grid of the first ``n`` train images of each domain beside their colourised labels.

    Columns: source image, source label, target image, target label; one row per image, with a
    header ("source (game)", "target (real)") above each domain's block.

    Args:
        root: a folder written by :func:`generate_pair`.
        path: the PNG to write.
        n: rows (images per domain); fewer if the train split is smaller.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``n`` < 1.
        FileNotFoundError: ``root`` holds no train images of a domain.
    """
    _check_int("n", n, 1)
    root, path = Path(root), Path(path)
    pairs = {}
    for domain in DOMAINS:
        images = sorted((root / domain / "images" / "train").glob("*.png"))[:n]
        if not images:
            raise MissingFileError(f"no {domain} train images under {root / domain / 'images'}")
        labels = [root / domain / "labels" / "train" / f.name for f in images]
        pairs[domain] = [
            (_read(f, "RGB"), _read(g, "L")) for f, g in zip(images, labels, strict=True)
        ]
    rows = min(len(v) for v in pairs.values())
    height, width = pairs["source"][0][1].shape
    block = 2 * width + PREVIEW_PAD
    canvas = Image.new(
        "RGB",
        (2 * block + PREVIEW_GAP, PREVIEW_HEADER + rows * height + (rows - 1) * PREVIEW_PAD),
        PREVIEW_BACKGROUND,
    )
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for d, domain in enumerate(DOMAINS):
        left = d * (block + PREVIEW_GAP)
        draw.text((left + 2, 2), DOMAIN_HEADERS[domain], fill=PREVIEW_TEXT, font=font)
        for r, (image, label) in enumerate(pairs[domain][:rows]):
            top = PREVIEW_HEADER + r * (height + PREVIEW_PAD)
            canvas.paste(Image.fromarray(image), (left, top))
            colour = Image.fromarray(CITYSCAPES.colorize(label))
            canvas.paste(colour, (left + width + PREVIEW_PAD, top))
    canvas.save(path, format="PNG")
    return path
