"""One class set everywhere, checked when a command starts: config, datasets and model files.

Before, ``data.num_classes`` left at 19 with a 3-class classes.yaml trained the whole warm-up and
failed only when the model was saved; an unlabelled target folder with other classes was never
compared; ``spcl evaluate MODEL`` compared the class count with the config only; and
``spcl evaluate --pred-dir`` knew Cityscapes' 19/16/13 classes only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from spcl.base import ConfigError, DatasetError
from spcl.cli import main
from spcl.config import load_config
from spcl.context import open_run
from spcl.models.build import build_model
from spcl.models.files import save_model_file
from spcl.pipeline import run_pipeline
from test_class_tables import _names, _overrides, make_folder


def _model_file(path: Path, names: list[str]) -> Path:
    model = build_model("deeplabv2_resnet18", len(names), width=8)
    save_model_file(
        model, path, name="deeplabv2_resnet18", num_classes=len(names), width=8, class_names=names
    )
    return path


def test_a_wrong_class_count_stops_the_run_before_training(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", 3)
    run = tmp_path / "run"
    config = load_config(None, _overrides(root, 19, run))
    with (
        open_run(config) as ctx,
        pytest.raises(ConfigError, match=r"num_classes is 19 .* 3 classes"),
    ):
        run_pipeline(ctx)
    assert not (run / "01_warmup").exists()  # no stage started


def test_an_unlabelled_target_with_other_classes_is_an_error(tmp_path: Path) -> None:
    source, target = make_folder(tmp_path / "a", 3), make_folder(tmp_path / "b", 3)
    (target / "classes.yaml").write_text(yaml.safe_dump({"names": ["x", "y", "z"]}))
    overrides = _overrides(source, 3, tmp_path / "run")
    overrides.append(f"data.target={{kind: folder, root: {target}}}")
    with open_run(load_config(None, overrides)) as ctx, pytest.raises(ConfigError) as error:
        run_pipeline(ctx)
    message = str(error.value)
    assert f"the target (folder dataset at {target}" in message
    assert "['x', 'y', 'z']" in message and str(_names(3)) in message
    assert not (tmp_path / "run" / "01_warmup").exists()


def test_a_pretrained_model_file_of_other_classes_is_reported(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", 3)
    weights = _model_file(tmp_path / "other.pth", ["a", "b", "c", "d", "e"])
    run = tmp_path / "run"
    overrides = [*_overrides(root, 3, run), f"model.pretrained={weights}", "run.stages=[warmup]"]
    with open_run(load_config(None, overrides)) as ctx:
        run_pipeline(ctx)
    log = (run / "log.txt").read_text()
    assert f"model.pretrained {weights} is a model file for 5 classes" in log
    assert "only its backbone is loaded" in log


def test_evaluate_refuses_a_model_of_other_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = make_folder(tmp_path / "data", 3)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data": {"num_classes": 3, "target_val": {"kind": "folder", "root": str(root)}}}
        )
    )
    model = _model_file(tmp_path / "m.pth", ["x", "y", "z"])
    overrides = ["data.target_val.split=val", "run.progress=false", "data.num_workers=0"]
    assert main(["evaluate", str(model), "--config", str(config), *overrides]) == 2
    err = capsys.readouterr().err
    assert f"{model} is a model for 3 classes ['x', 'y', 'z']" in err
    assert str(_names(3)) in err and str(root / "classes.yaml") in err
    # the config's count is checked against the split too, before the model is compared
    assert main(
        ["evaluate", str(model), "--config", str(config), *overrides, "data.num_classes=19"]
    )
    assert "data.num_classes is 19 but the target val split" in capsys.readouterr().err
    # the matching model is scored, with the dataset's names
    good = _model_file(tmp_path / "good.pth", _names(3))
    assert main(["evaluate", str(good), "--config", str(config), *overrides]) == 0
    assert "thing2" in capsys.readouterr().out


def _prediction_folders(tmp_path: Path, root: Path) -> tuple[Path, Path]:
    """Predictions equal to the val labels of a folder dataset, except one wrong file."""
    gt, pred = root / "labels" / "val", tmp_path / "pred"
    pred.mkdir()
    for path in sorted(gt.glob("*.png")):
        label = np.asarray(Image.open(path))
        Image.fromarray(label).save(pred / path.name)
    return pred, gt


@pytest.mark.parametrize("which", ["file", "folder"])
def test_evaluate_folders_with_a_dataset_class_table(
    tmp_path: Path, capsys: pytest.CaptureFixture, which: str
) -> None:
    root = make_folder(tmp_path / "data", 3)
    pred, gt = _prediction_folders(tmp_path, root)
    classes = root / "classes.yaml" if which == "file" else root
    out = tmp_path / "s.json"
    argv = ["evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt), "--classes", str(classes)]
    assert main([*argv, "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert list(scores["per_class_iou"]) == _names(3)
    assert scores["miou"] == pytest.approx(100.0)
    assert "thing1" in capsys.readouterr().out


def test_evaluate_folders_own_label_values_are_mapped(tmp_path: Path) -> None:
    """labelIds with an own table: raw values through its id_to_train, 0 ignored."""
    from spcl.data.readers.folder import load_class_table
    from spcl.evaluation.pred_folders import evaluate_folders

    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump({"names": ["a", "b"], "id_to_train": {10: 0, 20: 1, 0: 255}})
    )
    table = load_class_table(tmp_path / "c.yaml")
    for folder in ("p", "g"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.array([[10, 20, 0]], np.uint8)).save(tmp_path / "g" / "x.png")
    Image.fromarray(np.array([[0, 1, 1]], np.uint8)).save(tmp_path / "p" / "x.png")
    scores, _ = evaluate_folders(
        tmp_path / "p", tmp_path / "g", pred_format="trainIds", classes=table, progress=False
    )
    assert scores.class_names == ("a", "b")
    assert scores.confusion.tolist() == [[1, 0], [0, 1]]  # the ignored pixel is not counted
    Image.fromarray(np.array([[10, 30, 0]], np.uint8)).save(tmp_path / "g" / "x.png")
    with pytest.raises(DatasetError, match="holds id 30"):
        evaluate_folders(
            tmp_path / "p", tmp_path / "g", pred_format="trainIds", classes=table, progress=False
        )


def test_evaluate_classes_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for folder in ("p", "g"):
        (tmp_path / folder).mkdir()
    argv = ["evaluate", "--pred-dir", str(tmp_path / "p"), "--gt-dir", str(tmp_path / "g")]
    assert main([*argv, "--classes", "7"]) == 2
    assert "--classes 7: counts are [13, 16, 19]" in capsys.readouterr().err
    assert main([*argv, "--classes", str(tmp_path / "nothing.yaml")]) == 2
    assert "no such file or folder with a classes.yaml" in capsys.readouterr().err
