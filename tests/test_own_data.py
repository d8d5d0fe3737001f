"""A user's own 4-class folder data: the shipped example runs, and mistakes show at the start.

Before (main 3f6f3d3): no example config for the ``folder`` kind; ``data.num_classes`` had to be set
by hand; the feature distance's default classes (Cityscapes ids 6–18) gave ``fd=0`` for a whole
4-class run without a word; a wrong ``data.target_val.split`` showed at the first validation or
after all training; ``spcl data check`` reported 2 bad labels (NOT OK), then ``spcl run`` with
rare-class sampling reused the check's class index and trained around them (exit 0); rare-class
sampling on small images ended in a ``ValueError`` traceback (exit 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from spcl.base import ConfigError, MissingFileError
from spcl.cli import main
from spcl.config import load_config
from spcl.context import RunContext
from spcl.engine.tracking import Tracker
from spcl.pipeline import prepare_data
from spcl.stages.start_checks import padded_crop_warnings
from test_class_tables import SIZE, _names, make_folder
from tiny import TINY

COUNT = 4  # classes of the user's dataset


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class folder dataset: classes.yaml, 6 train and 3 val images with labels."""
    return make_folder(tmp_path_factory.mktemp("own") / "data", COUNT)


def _roots(root: Path) -> list[str]:
    return [f"data.{d}.root={root}" for d in ("source", "target", "target_val")]


def _folder(root: Path, out: Path, *extra: str) -> list[str]:
    """A tiny run on the folder at ``root`` (``data.num_classes`` set, as main needed it)."""
    return [
        *TINY,
        "model.name=deeplabv2_resnet18",
        "model.freeze_bn=false",
        f"data.num_classes={COUNT}",
        f"data.source={{kind: folder, root: {root}}}",
        f"data.target={{kind: folder, root: {root}}}",
        f"data.target_val={{kind: folder, root: {root}, split: val}}",
        f"run.out={out}",
        *extra,
    ]


def _run(tmp_path: Path, overrides: list[str]) -> list[str]:
    """``spcl run`` with the schema's defaults (an empty config file) and ``overrides``."""
    config = tmp_path / "defaults.yaml"
    config.write_text("{}\n")
    return ["run", str(config), *overrides]


def _start(tmp_path: Path, overrides: list[str]) -> RunContext:
    """Run the start's checks of a run (no stage runs); returns its context."""
    config = load_config(None, overrides)
    ctx = RunContext(config, tmp_path, torch.device("cpu"), Tracker(tmp_path, enabled=False))
    prepare_data(ctx)
    return ctx


@pytest.mark.slow
def test_the_shipped_folder_example_runs_on_a_tiny_folder(own: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny = [
        "model.width=8",
        "data.num_workers=0",
        "run.progress=false",
        f"data.source.size={list(SIZE)}",
        f"data.target.size={list(SIZE)}",
        f"data.target_val.size={list(SIZE)}",
        "online.crop=[32, 32]",
        "run.val_every=1",
        "run.collapse_every=1",
        f"run.out={out}",
        *(f"{s}.optim.{k}={v}" for s in ("warmup", "online") for k, v in _TINY_OPTIM.items()),
    ]
    assert main(["run", "folder_example", *_roots(own), "data.target_val.split=val", *tiny]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["num_classes"] == COUNT  # from classes.yaml
    metrics = yaml.safe_load((out / "08_evaluate" / "online" / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == _names(COUNT)
    assert (out / "07_online" / "collapse.json").is_file()


_TINY_OPTIM = {"max_iter": 2, "stop_iter": 2, "batch_size": 2}


def test_num_classes_comes_from_the_class_table_and_a_given_one_is_checked(
    own: Path, tmp_path: Path
) -> None:
    ctx = _start(tmp_path, _folder(own, tmp_path, "data.num_classes=null"))  # left to the table
    assert ctx.config.data.num_classes == COUNT
    with pytest.raises(ConfigError, match=r"data.num_classes is 19 but the source .* 4 classes"):
        _start(tmp_path, _folder(own, tmp_path, "data.num_classes=19"))


def test_feature_distance_classes_outside_the_table_are_refused_at_start(
    own: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "imagenet.pth"
    weights.write_bytes(b"not read at the start")
    online = [f"model.pretrained={weights}", "run.stages=[online, evaluate]"]
    with pytest.raises(ConfigError) as error:
        _start(tmp_path, _folder(own, tmp_path, *online))
    message = str(error.value)
    assert "online.feature_distance.classes [6, 7, 11" in message
    assert "class id(s) 6, 7, 11..18" in message and "0 thing0, 1 thing1" in message
    # ids of the table pass; without ImageNet weights the list is not used, so not checked
    _start(tmp_path, _folder(own, tmp_path, *online, "online.feature_distance.classes=[2, 3]"))
    _start(tmp_path, _folder(own, tmp_path, "run.stages=[online, evaluate]"))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.target_val.split=vall", "data.target_val (folder dataset at"),
        ("data.target.split=tain", "data.target (folder dataset at"),
        ("model.pretrained=/no/such/weights.pth", "model.pretrained: no such file"),
        ("data.source.class_index=/no/such/dir/index.npz", "data.source.class_index"),
    ],
)
def test_every_path_is_checked_at_the_start(
    own: Path, tmp_path: Path, override: str, named: str
) -> None:
    with pytest.raises(MissingFileError, match=re.escape(named)):
        _start(tmp_path, _folder(own, tmp_path, override))


def test_a_start_that_fails_names_the_key_and_writes_no_config_yaml(
    own: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = _run(tmp_path, _folder(own, out, "run.stages=[warmup, evaluate]"))
    assert main([*argv, "data.target_val.split=vall"]) == 2  # before: after the warm-up trained
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.target_val (folder dataset at" in err
    assert "split 'vall' not found" in err and "splits found: ['train', 'val']" in err
    assert not (out / "01_warmup").exists() and not (out / "config.yaml").exists()
    assert main([*argv, "data.num_classes=19"]) == 2  # refused at the start before, too
    assert "data.num_classes is 19" in capsys.readouterr().err
    assert not (out / "config.yaml").exists()  # before: written by the failed start


def test_rare_class_sampling_on_small_images_is_one_line_with_the_value_to_try(
    own: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    online = ["run.stages=[online, evaluate]", "online.source_sampling=rare_class"]
    assert main(_run(tmp_path, _folder(own, tmp_path / "run", *online))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the one line after the stage's
    assert err.startswith("spcl: error: ")
    assert "data.source.rcs_min_pixels=3000: no source image has more than 3000 pixels" in err
    assert "labels of 64x32" in err and "e.g. data.source.rcs_min_pixels=3" in err


def _bad_labels(root: Path) -> list[Path]:
    """Two train labels holding the value 40, which a 4-class table does not know."""
    bad = [root / "labels" / "train" / f"train{i}.png" for i in (1, 4)]
    for path in bad:
        Image.fromarray(np.full(SIZE, 40, np.uint8)).save(path)
    return bad


def test_data_check_and_run_agree_on_bad_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = make_folder(tmp_path / "badlab", COUNT)
    bad = _bad_labels(root)
    assert main(["data", "check", "folder", str(root), "--workers", "0"]) == 1  # NOT OK
    assert "NOT OK" in capsys.readouterr().out
    out = tmp_path / "run"
    sampling = ["data.source.sampling=rare_class", "data.source.rcs_min_pixels=0"]
    argv = _run(tmp_path, _folder(root, out, "run.stages=[warmup]", *sampling))
    assert main(argv) == 2  # the check's class index lists them: refused, both named
    err = capsys.readouterr().err
    assert "2 source file(s) cannot be used" in err and all(str(p) in err for p in bad)
    assert "data.on_error=skip" in err
    assert main([*argv, "data.on_error=skip"]) == 0  # left out, each named in log.txt
    log = (out / "log.txt").read_text()
    assert all("[data] left out of the source (class index" in log and str(p) in log for p in bad)
    # the run's own scan (no index from the check) finds and names them the same way
    for index in root.glob("spcl_class_index_*.npz"):
        index.unlink()
    (out / "log.txt").unlink()
    assert main([*argv, "data.on_error=skip", "--from", "warmup"]) == 0
    log = (out / "log.txt").read_text()
    assert all(str(p) in log for p in bad) and log.count("left out of the source") == 2
    # repaired files are read again and counted: the run no longer refuses
    for path in bad:
        Image.fromarray(np.zeros(SIZE, np.uint8)).save(path)
    assert main([*argv, "--from", "warmup"]) == 0


def test_pseudo_label_crop_rows_are_checked_against_whole_target_images(
    own: Path, tmp_path: Path
) -> None:
    whole = ["run.stages=[online, evaluate]", "online.crop=[]", "online.pseudo.crop_top=100000"]
    with pytest.raises(ConfigError) as error:
        _start(tmp_path, _folder(own, tmp_path, *whole))
    assert "online.pseudo.crop_top and online.pseudo.crop_bottom: 100000 + 0 rows" in str(
        error.value
    )
    assert f"32 pixels high (the height of {own}/images/train/train0.png)" in str(error.value)
    with pytest.raises(ConfigError, match=r"64 pixels high \(data.target.size\)"):
        _start(tmp_path, _folder(own, tmp_path, *whole, "data.target.size=[64, 128]"))


def test_a_crop_larger_than_the_images_at_every_scale_is_a_warning_at_the_start(
    own: Path, tmp_path: Path
) -> None:
    """A smaller data.*.size chosen for speed, with the stage's crop left larger, pads every
    crop: the run still starts, and says so with the key to change."""
    sizes = [f"data.{d}.size=[32, 64]" for d in ("source", "target", "target_val")]
    online = ["run.stages=[online, evaluate]", "online.init=pretrained", *sizes]
    out = tmp_path / "run"
    config = load_config(None, _folder(own, out, *online, "online.crop=[64, 64]"))
    ctx = RunContext(config, out, torch.device("cpu"), Tracker(out))
    prepare_data(ctx)
    log = (out / "log.txt").read_text()
    for domain in ("source", "target"):
        assert (
            f"[start] warning: online.crop [64, 64] is larger than data.{domain}.size [32, 64]: "
            f"every {domain} crop is padded, at least 50% of it"
        ) in log
    assert "set online.crop=[32, 64] or a larger data.source.size" in log

    def warnings(*extra: str) -> list[str]:
        return padded_crop_warnings(load_config(None, _folder(own, out, *sizes, *extra)))

    # a crop the images hold, or hold at the stage's largest scale, is not padded every time
    assert warnings("run.stages=[online]", "online.crop=[32, 32]") == []
    scaled = ["online.crop=[64, 64]", "online.scale_range=[1, 2]"]
    assert warnings("run.stages=[online]", *scaled) == []
    # the self-training's crop is judged at its largest scale; stages the run skips are not
    (message,) = warnings("run.stages=[warmup, pseudo_labels, self_train]")  # default crop
    assert message.startswith(
        "self_train.crop [512, 1024] is larger than data.target.size [32, 64] at the largest "
        "scale of self_train.scale_range, 1.5: every target crop is padded, at least 99% of it"
    )
    assert message.endswith("set self_train.crop=[32, 64] or a larger data.target.size")
    assert warnings("run.stages=[warmup]") == []
