"""Messages speak the command line's language, and ``--on-error skip`` lists what it left out.

Before, errors suggested Python spellings (``on_error='skip'``, ``gt_format='labelIds'``,
``overwrite=True``, ``with_labels=False``) to users of the ``spcl`` command, and ``evaluate
--on-error skip`` printed the scores without saying which files it had skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.cli import main
from test_predict import model_file

PYTHON_SPELLINGS = ("on_error=", "gt_format=", "overwrite=", "with_labels=")


def _save(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def _last_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("spcl: error:")
    assert not any(spelling in err for spelling in PYTHON_SPELLINGS), err
    return err


def test_errors_name_the_cli_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _save(tmp_path / "g" / "a.png", np.zeros((2, 3)))
    _save(tmp_path / "g" / "b.png", np.zeros((2, 3)))
    _save(tmp_path / "p" / "a.png", np.zeros((2, 3)))
    argv = ["evaluate", "--pred-dir", str(tmp_path / "p"), "--gt-dir", str(tmp_path / "g")]
    assert main([*argv, "--gt-format", "trainIds"]) == 2
    assert "pass --on-error skip to score the rest" in _last_error(capsys)
    _save(tmp_path / "cs" / "x_gtFine_labelIds.png", np.zeros((2, 3)))
    _save(tmp_path / "p2" / "x.png", np.zeros((2, 3)))
    argv = ["evaluate", "--pred-dir", str(tmp_path / "p2"), "--gt-dir", str(tmp_path / "cs")]
    assert main([*argv, "--gt-format", "trainIds"]) == 2
    assert "pass --gt-format labelIds" in _last_error(capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "full"), "--no-preview"]) == 2
    assert "pass --overwrite to replace it" in _last_error(capsys)
    folder = tmp_path / "ds"
    _save(folder / "images" / "train" / "a.png", np.zeros((2, 3)))
    assert main(["data", "check", "folder", str(folder)]) == 2
    assert "--no-labels" in _last_error(capsys)


def test_evaluate_lists_the_files_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("a", "b", "c"):
        _save(tmp_path / "g" / f"{name}.png", np.zeros((4, 4)))
    _save(tmp_path / "p" / "a.png", np.zeros((4, 4)))
    _save(tmp_path / "p" / "b.png", np.zeros((2, 2)))  # another size: a bad pair
    argv = ["evaluate", "--pred-dir", str(tmp_path / "p"), "--gt-dir", str(tmp_path / "g")]
    assert main([*argv, "--gt-format", "trainIds", "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "left out 2 file(s):" in out
    assert f"{tmp_path / 'g' / 'c.png'}: no prediction in {tmp_path / 'p'}" in out
    assert f"{tmp_path / 'p' / 'b.png'}: prediction" in out


def test_predict_lists_the_images_it_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    model = model_file(tmp_path / "m.pth", ("road", "sky"))
    _save(tmp_path / "in" / "good.png", np.zeros((8, 8, 3)))
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = ["predict", str(model), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--on-error", "skip"]) == 0
    assert f"--on-error skip: skipped 1 of 2 image(s): {tmp_path / 'in' / 'bad.png'}" in caplog.text
    assert main(argv) == 2  # a re-run skips good.png (all its outputs exist), tries bad.png again
    assert f"cannot read image {tmp_path / 'in' / 'bad.png'}" in _last_error(capsys)


def test_evaluate_of_a_model_file_skips_with_on_error_and_lists_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # before: `spcl evaluate MODEL --config C --on-error skip` ignored the flag (only the config's
    # data.on_error counted), and with data.on_error=skip the left-out files were never named
    model = model_file(tmp_path / "m.pth", ("road", "sky"))
    root = tmp_path / "val"
    (root / "classes.yaml").parent.mkdir()
    (root / "classes.yaml").write_text("names: [road, sky]\n")
    for name in ("a", "b"):
        _save(root / "images" / "val" / f"{name}.png", np.zeros((8, 8, 3)))
        _save(root / "labels" / "val" / f"{name}.png", np.zeros((8, 8)))
    bad = root / "images" / "val" / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"data:\n  target_val: {{kind: folder, root: {root}, split: val}}\n"
        "run: {device: cpu, progress: false}\n"
    )
    argv = ["evaluate", str(model), "--config", str(config), "--json", str(tmp_path / "s.json")]
    assert main(argv) == 2
    assert f"cannot read image {bad}" in _last_error(capsys)
    for skip in (["--on-error", "skip"], ["data.on_error=skip"]):
        assert main([*argv, *skip]) == 0
        out = capsys.readouterr().out
        assert f"left out 1 file(s):\n  cannot read image {bad}: " in out
        assert str(bad) in (tmp_path / "s.json").read_text()
    assert main([*argv, "data.on_error=skip", "--on-error", "fail"]) == 2  # the flag decides


@pytest.mark.parametrize(
    ("argv", "suggested"),
    [
        (["run", "gta5_to_cityscape_daformer_mitb5"], "gta5_to_cityscapes_daformer_mitb5"),
        (["config", "demo", "onlin.crop=[8, 8]"], "online"),
        (["config", "demo", "online.optim.batch_sise=2"], "batch_size"),
        (["config", "demo", "model.name=deeplabv2_resnet100"], "deeplabv2_resnet101"),
        (["data", "check", "gta55", "/nowhere"], "gta5"),
    ],
)
def test_a_mistyped_name_gets_the_closest_valid_one(
    argv: list[str], suggested: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(argv) == 2
    assert f"(did you mean '{suggested}'?)" in _last_error(capsys)


def test_a_word_close_to_no_valid_one_gets_the_list_without_a_guess(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["config", "demo", "online.optim.learning_rate=1"]) == 2
    error = _last_error(capsys)
    assert "did you mean" not in error and "valid keys under online.optim: optimizer, lr," in error
