"""The command line: help, exit codes, errors that name the culprit, a light start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.cli import main


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "run", "evaluate", "predict", "config", "synth"):
        assert command in text


def test_config_prints_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "demo", "run.seed=4"]) == 0
    assert "seed: 4" in capsys.readouterr().out
    target = tmp_path / "resolved.yaml"
    assert main(["config", "demo", "--save", str(target), f"data.source.root={tmp_path}"]) == 0
    assert "name: deeplabv2_resnet18" in target.read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["config", "demo", "run.sed=1"], "unknown key 'run.sed'"),
        (["config", "missing.yaml"], "config file not found: missing.yaml"),
        (["run", "demo", "run.stages=[adapt]", "run.out={tmp}"], "'adapt' needs"),
        (["evaluate", "--pred-dir", "x"], "--pred-dir and --gt-dir go together"),
        (["synth", "--out", "{tmp}", "--preset", "nope"], "preset"),
        (
            ["run", "demo", "model.name=nope", "data.synthetic.generate=false", "run.out={tmp}"],
            "unknown model 'nope'",
        ),
        (
            [
                "run",
                "demo",
                "data.synthetic.generate=false",
                "data.source.root={tmp}/nowhere",
                "run.out={tmp}",
            ],
            "synthetic pair root not found",
        ),
        (["evaluate", "{tmp}/no.pth", "--config", "demo"], "checkpoint not found"),
        (["run", "demo", "--only", "nope", "run.out={tmp}"], "--only nope: not a stage"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "occupied").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path / "new")) for a in argv]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress lines
    assert last.startswith("spcl: error:") and message in last


def test_synth_refuses_a_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["synth", "--out", str(tmp_path), "--train", "2", "--val", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_synth_bad_size_is_an_argparse_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["synth", "--out", "x", "--size", "big"])
    assert info.value.code == 2
    assert "HxW" in capsys.readouterr().err


def test_evaluate_folders_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    labels = np.zeros((8, 16), np.uint8)
    labels[:, 8:] = 2
    Image.fromarray(labels).save(pred / "a.png")
    Image.fromarray(labels).save(gt / "a.png")
    argv = ["evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt), "--gt-format", "trainIds"]
    argv += ["--json", str(tmp_path / "s.json"), "--confusion", str(tmp_path / "c.png")]
    assert main(argv) == 0
    assert "100.00" in capsys.readouterr().out
    assert (tmp_path / "s.json").exists() and (tmp_path / "c.png").stat().st_size > 0


def _folder_dataset(root: Path, label_value: int) -> None:
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [road, sky]\n")
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(root / "images" / "train" / "a.png")
    label = np.full((8, 16), label_value, np.uint8)
    Image.fromarray(label).save(root / "labels" / "train" / "a.png")


def test_data_check_reports_problems_by_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    _folder_dataset(good, 1)
    _folder_dataset(bad, 7)  # not a class of the table
    assert main(["data", "check", "folder", str(good)]) == 0
    assert main(["data", "stats", "folder", str(good), "--json"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "folder", str(bad)]) == 1
    assert "a.png" in capsys.readouterr().out
    assert main(["data", "check", "folder", str(tmp_path / "absent")]) == 2


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_bug_shows_its_traceback_and_exits_1() -> None:
    # a ValueError inside a stage is a bug, not bad input: it must not become "spcl: error"
    code = (
        "import sys; from spcl import cli, pipeline\n"
        "def broken(*args): raise ValueError('internal invariant broken')\n"
        "pipeline._run_function = lambda stage: broken\n"
        "pipeline.prepare_data = lambda ctx: None\n"  # no data on disk to check
        "sys.exit(cli.main(['run', 'demo', 'data.synthetic.generate=false',"
        " 'run.stages=[warmup]', 'run.out=' + sys.argv[0]]))"
    )
    done = _run(code.replace("sys.argv[0]", repr(str(Path("/tmp/spcl_bug_run")))))
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "internal invariant broken" in done.stderr
    assert "spcl: error" not in done.stderr


def test_a_user_error_is_one_line_with_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "spcl", "config", "demo", "run.sed=1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr


def test_importing_the_cli_imports_no_torch() -> None:
    code = (
        "import sys; import spcl.cli as cli; cli.build_parser()\n"
        "heavy = [m for m in ('torch', 'numpy', 'matplotlib', 'albumentations', 'cv2', 'PIL')"
        " if m in sys.modules]\n"
        "print(heavy)"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_data_check_reads_the_synthetic_pair(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from spcl.data.synthetic import generate_pair

    root = generate_pair(tmp_path / "pair", n_train=2, n_val=1, size=(32, 64), preview=False)
    capsys.readouterr()
    assert main(["data", "check", "synthetic", str(root), "--split", "val"]) == 0
    assert main(["data", "check", "synthetic", str(root), "--option", "domain=target"]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "sky" in out
    assert main(["data", "check", "synthetic", str(root), "--option", "domain=other"]) == 2
    assert "domain must be one of ['source', 'target']" in capsys.readouterr().err
