"""``spcl run CONFIG --fast-dev-run``: every stage briefly, in a temporary folder, one line each."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from spcl.base import ConfigError
from spcl.cli import main
from spcl.config import load_config
from spcl.config_schema import DomainConfig
from spcl.data.synthetic import generate_pair
from spcl.rehearsal import fast_dev_config
from spcl.stages.builders import domain_dataset

ROOTS = ["data.source.root=/s", "data.target.root=/t", "data.target_val.root=/t"]
LINE = re.compile(r"^  (\w+)\s+(OK|FAILED)\s+[\d.]+ s   peak [\d.]+ GiB RAM$", re.MULTILINE)


def test_the_fast_config_stops_early_on_few_images_and_keeps_the_rest(tmp_path: Path) -> None:
    config = load_config(
        "gta5_to_cityscapes_sepico_dlv2", [*ROOTS, "run.val_every=500", "run.ckpt_every=1000"]
    )
    fast = fast_dev_config(config, 3, tmp_path, world=2)
    for section in ("warmup", "adapt", "self_train", "online"):
        optim, original = getattr(fast, section).optim, getattr(config, section).optim
        assert optim.stop_iter == 3 and optim.max_iter == original.max_iter  # same schedule
        assert optim.batch_size == original.batch_size
    sections = ("warmup", "adapt", "self_train", "online")
    largest = max(getattr(config, s).optim.batch_size for s in sections)
    for name in ("source", "target", "target_val"):
        domain = getattr(fast.data, name)
        assert domain.max_items == max(4, largest) * 2
        assert Path(domain.class_index).parent == tmp_path  # never the data folder's cache
        assert domain.size == getattr(config.data, name).size
    assert fast.online.contrast.start_iter == 0 and config.online.contrast.start_iter == 3000
    assert (fast.run.ckpt_every, fast.run.val_every, fast.run.out) == (3, 3, str(tmp_path))
    assert fast.online.crop == config.online.crop and fast.model == config.model
    assert config.run.out != str(tmp_path)  # the config given is untouched


def test_max_items_keeps_the_first_files(tmp_path: Path) -> None:
    root = generate_pair(tmp_path / "pair", n_train=5, n_val=1, size=(32, 64), preview=False)
    domain = DomainConfig(kind="synthetic", root=str(root), options={"domain": "source"})
    every = domain_dataset(domain, with_labels=True, train=False)
    domain.max_items = 3
    first = domain_dataset(domain, with_labels=True, train=False)
    assert first.names == every.names[:3] and len(first.labels) == 3


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    root = generate_pair(tmp_path / "pair", n_train=6, n_val=4, size=(32, 64), preview=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    (tmp_path / "tmp").mkdir()
    return [
        "demo",
        *(f"data.{d}.root={root}" for d in ("source", "target", "target_val")),
        "model.width=8",
        *(f"{s}.optim.batch_size=2" for s in ("warmup", "adapt", "self_train", "online")),
        "data.source.sampling=rare_class",
        "data.source.rcs_min_pixels=1",
        "run.stages=[warmup, prototypes, pseudo_labels, adapt, evaluate]",
        "--fast-dev-run",
        "1",
    ]


def _leftovers(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "tmp").glob("spcl-fast-dev-run-*"))


def test_a_fast_dev_run_reports_each_stage_and_removes_its_folder(
    tmp_path: Path, pair: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", *pair]) == 0
    out = capsys.readouterr().out
    stages = ("warmup", "prototypes", "pseudo_labels", "adapt", "evaluate")
    assert LINE.findall(out) == [(s, "OK") for s in stages]
    assert "1 iteration(s) per training stage, at most 4 images per split" in out
    assert "fast dev run passed: 5 stage(s)" in out
    assert _leftovers(tmp_path) == []
    assert not list((tmp_path / "pair").glob("spcl_class_index*"))  # the data folder untouched
    assert not Path("runs/spcl").exists() or "runs/spcl" not in out


def test_keep_keeps_the_folder_with_its_log(
    tmp_path: Path, pair: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", *pair, "--keep", "run.stages=[warmup, evaluate]"]) == 0
    (kept,) = _leftovers(tmp_path)
    assert f"kept {kept}" in capsys.readouterr().out
    assert (kept / "01_warmup" / "model.pth").is_file() and (kept / "log.txt").is_file()


def test_the_warnings_of_a_real_run_show_between_the_stage_lines(
    tmp_path: Path, pair: list[str], capsys: pytest.CaptureFixture
) -> None:
    """The fast dev run mutes the run's console lines but not its warnings: a crop that pads
    every image is what a user wants to hear of before booking a GPU."""
    sizes = [f"data.{d}.size=[32, 64]" for d in ("source", "target")]
    extra = ["run.stages=[warmup, online]", "online.crop=[64, 64]", *sizes]
    assert main(["run", *pair, *extra]) == 0
    captured = capsys.readouterr()
    assert LINE.findall(captured.out) == [("warmup", "OK"), ("online", "OK")]
    assert "[start] warning: online.crop [64, 64] is larger than data.source.size" in captured.err
    assert "[warmup] iteration" not in captured.err  # the rest stays muted


def test_the_first_failing_stage_is_named_then_the_one_line_error(
    tmp_path: Path, pair: list[str], capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import spcl.stages.pseudo_labels as stage

    def broken(*args, **kwargs):
        raise ConfigError("pseudo_labels.cap: a problem found only when the stage runs")

    monkeypatch.setattr(stage, "run", broken)
    assert main(["run", *pair]) == 2
    captured = capsys.readouterr()
    assert LINE.findall(captured.out) == [
        ("warmup", "OK"),
        ("prototypes", "OK"),
        ("pseudo_labels", "FAILED"),
    ]
    assert "spcl: error: pseudo_labels.cap: a problem found only" in captured.err
    assert "fast dev run failed; removed" in captured.out
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--from", "adapt"], "--fast-dev-run runs every stage"),
        (["--only", "adapt"], "--fast-dev-run runs every stage"),
    ],
)
def test_fast_dev_run_flags_that_do_not_go_together(
    pair: list[str], extra: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", *pair, *extra]) == 2
    assert message in capsys.readouterr().err


def test_keep_without_fast_dev_run_is_refused(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "demo", "--keep"]) == 2
    assert "--keep goes with --fast-dev-run" in capsys.readouterr().err
