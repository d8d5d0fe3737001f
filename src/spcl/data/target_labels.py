"""Which target-train images are labelled, for adaptation with a few target labels.

A user names them in a list file (one image per line: the reader's item name, the file name, or
the path under the dataset root; blank lines and ``#`` comments are skipped) or asks for a share
of the target-train split. A share of ``f`` of ``N`` images is ``max(1, ⌊f·N + ½⌋)`` images (half
rounds up), drawn without replacement from the split in the reader's order by a generator seeded
with the section's own seed, so the same images are labelled whatever the training seed (as the
fixed label splits of semi-supervised benchmarks). The result is a sorted list of item indices.

Labelled images must stay out of evaluation: :func:`check_kept_out` refuses an evaluation split
that holds one of them, and a list entry that names an evaluation image and no training one is
an error of its own. Torch-free.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spcl.base import ConfigError, MissingFileError

__all__ = ["check_kept_out", "draw_fraction", "drawn_count", "read_list", "select_from_list"]

COMMENT = "#"  # a list line starting with this is skipped
SHOWN = 5  # names quoted in an error message


def drawn_count(fraction: float, total: int) -> int:
    """How many of ``total`` images a share ``fraction`` labels: ``max(1, ⌊f·N + ½⌋)``, at most
    ``total``; 0 for a share of 0."""
    if fraction <= 0 or total <= 0:
        return 0
    return min(total, max(1, math.floor(fraction * total + 0.5)))


def draw_fraction(total: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of the images a share ``fraction`` of ``total`` labels (seeded)."""
    count = drawn_count(fraction, total)
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=count, replace=False))


def read_list(path: Path, key: str) -> list[tuple[int, str]]:
    """The entries of a list file as (line number, entry); ``key`` names the config key.

    Raises:
        MissingFileError: the file does not exist.
        ConfigError: the file names no image.
    """
    if not path.is_file():
        raise MissingFileError(f"{key}: no such file: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = [(n, line.strip()) for n, line in enumerate(lines, start=1)]
    entries = [(n, e) for n, e in entries if e and not e.startswith(COMMENT)]
    if not entries:
        raise ConfigError(f"{key}: {path} names no image (one image name or path per line)")
    return entries


def _keys(image: Path, name: str, root: Path) -> set[str]:
    """Every way a list line may name an item: its name, file name, stem, path under the root."""
    keys = {name, image.name, image.stem, str(image.resolve())}
    with contextlib.suppress(ValueError):  # an image outside the root (a followed link)
        keys.add(image.resolve().relative_to(root.resolve()).as_posix())
    return keys


def _index(images: Sequence[Path], names: Sequence[str], root: Path) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, (image, name) in enumerate(zip(images, names, strict=True)):
        for key in _keys(image, name, root):
            index.setdefault(key, i)
    return index


def select_from_list(
    path: Path,
    key: str,
    train: tuple[Sequence[Path], Sequence[str], Path],
    val: tuple[Sequence[Path], Sequence[str], Path] | None = None,
) -> list[int]:
    """Sorted indices into the training images of the entries of the list file ``path``.

    Args:
        path: the list file; key: its config key (named in errors).
        train: the target-train split's (images, names, root).
        val: the evaluation split's (images, names, root), to tell a user whose line names an
            evaluation image so.

    Raises:
        MissingFileError: no list file.
        ConfigError: a line names an evaluation image, or no training image (names the file,
            the line and the split), or the file names no image.
    """
    entries = read_list(path, key)
    train_index = _index(*train)
    val_index = _index(*val) if val is not None else {}
    chosen: set[int] = set()
    for line, entry in entries:
        found = train_index.get(entry, train_index.get(str((train[2] / entry).resolve())))
        if found is not None:
            chosen.add(found)
            continue
        if entry in val_index:
            raise ConfigError(
                f"{key}: {path} line {line} names '{entry}', an image of the evaluation split "
                f"({val[2] if val else ''}): labelled images train, they are never scored"
            )
        examples = ", ".join(train[1][:SHOWN])
        raise ConfigError(
            f"{key}: {path} line {line}: '{entry}' is not an image of the target-train split at "
            f"{train[2]} (name, file name or path under the root; e.g. {examples})"
        )
    return sorted(chosen)


def check_kept_out(labelled: Sequence[Path], evaluated: Sequence[Path], where: str) -> None:
    """Refuse an evaluation split that holds labelled training images (``where`` names it).

    Raises:
        ConfigError: names the first few images found in both.
    """
    scored = {p.resolve() for p in evaluated}
    both = sorted(str(p) for p in labelled if p.resolve() in scored)
    if both:
        raise ConfigError(
            f"{where} holds {len(both)} of the labelled target images "
            f"(data.target_labels), e.g. {', '.join(both[:SHOWN])}: evaluate on images that did "
            f"not train, or label other images"
        )
