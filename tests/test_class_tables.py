"""Class names and palettes travel with the dataset: a user's own 3- and 16-class folders.

Before, the names were derived from the class count alone (16 classes were reported with
SYNTHIA's names, 3 as class_0…); now every table, stats file, model file and prediction uses the
names and colours of the dataset's classes.yaml, and a class count that disagrees with it is an
error naming both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from spcl.base import ConfigError
from spcl.config import load_config
from spcl.context import open_run
from spcl.models.files import load_model_file
from spcl.pipeline import metrics_path, model_path, run_pipeline
from spcl.predict import predict_paths
from tiny import TINY

SIZE = (32, 64)  # (H, W) of the generated images


def _names(count: int) -> list[str]:
    return [f"thing{i}" for i in range(count)]  # no Cityscapes or SYNTHIA name among them


def _palette(count: int) -> list[list[int]]:
    return [[(37 * i) % 256, (91 * i + 7) % 256, (53 * i + 11) % 256] for i in range(count)]


def make_folder(root: Path, count: int) -> Path:
    """A folder dataset: classes.yaml, train (6) and val (3) images with labels of every class."""
    root.mkdir(parents=True)
    classes = {"names": _names(count), "palette": _palette(count)}
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    rng = np.random.default_rng(count)
    for split, n in (("train", 6), ("val", 3)):
        for sub in ("images", "labels"):
            (root / sub / split).mkdir(parents=True)
        for i in range(n):
            label = (np.arange(SIZE[1])[None, :] * count // SIZE[1]).repeat(SIZE[0], 0)
            image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
            image[..., 0] = (label * 255 // max(count - 1, 1)).astype(np.uint8)  # learnable
            Image.fromarray(image).save(root / "images" / split / f"{split}{i}.png")
            Image.fromarray(label.astype(np.uint8)).save(
                root / "labels" / split / f"{split}{i}.png"
            )
    return root


def _overrides(root: Path, count: int, out: Path) -> list[str]:
    """A tiny run on the folder at ``root`` (schema defaults: the reference recipe, made small)."""
    return [
        *TINY,
        "model.name=deeplabv2_resnet18",
        "model.freeze_bn=false",
        f"data.num_classes={count}",
        f"data.source={{kind: folder, root: {root}}}",
        f"data.target={{kind: folder, root: {root}}}",
        f"data.target_val={{kind: folder, root: {root}, split: val}}",
        "run.stages=[warmup, pseudo_labels, evaluate]",
        f"run.out={out}",
    ]


@pytest.mark.parametrize("count", [3, 16])
def test_every_output_uses_the_dataset_class_table(tmp_path: Path, count: int) -> None:
    root = make_folder(tmp_path / "data", count)
    run = tmp_path / "run"
    config = load_config(None, _overrides(root, count, run))
    with open_run(config) as ctx:
        run_pipeline(ctx)
    names = _names(count)
    metrics = json.loads(metrics_path(run, "warmup").read_text())
    assert list(metrics["per_class_iou"]) == names
    table = (metrics_path(run, "warmup").parent / "metrics.txt").read_text()
    assert all(name in table for name in names) and "road" not in table
    stats = json.loads((run / "03_pseudo_labels" / "stats.json").read_text())
    assert list(stats["per_class_coverage"]) == names
    thresholds = json.loads((run / "03_pseudo_labels" / "thresholds.json").read_text())
    assert list(thresholds) == names
    _, info = load_model_file(model_path(run, "warmup"))
    assert info["class_names"] == names
    assert [list(c) for c in info["palette"]] == _palette(count)
    # a prediction is coloured with the dataset's palette
    written = predict_paths(
        model_path(run, "warmup"), [str(root / "images" / "val")], tmp_path / "p"
    )
    colour = next(p for p in written if p.parent.name == "color")
    ids = next(p for p in written if p.parent.name == "trainIds" and p.stem == colour.stem)
    rgb, train_ids = np.asarray(Image.open(colour)), np.asarray(Image.open(ids))
    for class_id in np.unique(train_ids):
        assert (rgb[train_ids == class_id] == _palette(count)[class_id]).all()


def test_a_class_count_that_disagrees_with_classes_yaml_is_an_error(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", 3)
    config = load_config(None, _overrides(root, 19, tmp_path / "run"))
    with open_run(config) as ctx, pytest.raises(ConfigError) as error:
        run_pipeline(ctx)
    message = str(error.value)
    assert "data.num_classes is 19" in message and "3 classes" in message
    assert str(root / "classes.yaml") in message and "data.num_classes=3" in message


def test_target_val_with_other_classes_is_an_error(tmp_path: Path) -> None:
    source, other = make_folder(tmp_path / "a", 3), make_folder(tmp_path / "b", 3)
    (other / "classes.yaml").write_text(yaml.safe_dump({"names": ["x", "y", "z"]}))
    overrides = _overrides(source, 3, tmp_path / "run")
    overrides.append(f"data.target_val={{kind: folder, root: {other}, split: val}}")
    with open_run(load_config(None, overrides)) as ctx, pytest.raises(ConfigError) as error:
        run_pipeline(ctx)
    assert "['x', 'y', 'z']" in str(error.value) and "thing0" in str(error.value)
