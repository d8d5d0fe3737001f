"""The fault corpus of docs/robustness.md: what a user meets, and what ``spcl run`` does about it.

Each case runs the command line on a tiny synthetic pair (every stage, a few steps each) and checks
the message, the exit status, that finished stages and the last checkpoint are intact, and that
the re-run ends where an undisturbed run ends. Faults are injected where they would happen: the
writes inside torch.save (a full disk: the kernel's ENOSPC once the free bytes are used, see
tests/full_disk.py), a file's fsync (Ctrl-C or kill -9 while a checkpoint is written), a label
PNG's save,
the first write into the run directory (a read-only folder). kill -9 runs in a child process
(slow); the rest in this one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from full_disk import fill_disk_at, needs_dev_full
from spcl import base, cli
from spcl.data.synthetic import generate_pair
from tiny import TINY

FAST = (
    *TINY,
    "warmup.adversarial=false",
    "adapt.optim.max_iter=2",
    "adapt.optim.stop_iter=2",
    "self_train.optim.max_iter=2",
    "self_train.optim.stop_iter=2",
    "self_train.optim.batch_size=2",
    "self_train.crop=[64,128]",
    "run.log_every=1",
    "run.ckpt_every=1",
)  # every stage of the SPCL chain, two steps each: about 5 s on one core
BAD_IMAGE = "target/images/train/target_train_00003.png"  # in the middle of the target train set


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "data"
    return generate_pair(root, seed=1, n_train=6, n_val=2, size=(64, 128), preview=False)


def _args(data: Path, out: Path, *overrides: str) -> list[str]:
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    return ["run", "demo", *FAST, *roots, f"run.out={out}", *overrides]


def _spcl(capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str]:
    """Run the command line in this process: exit status and its last words on stderr (from
    ``spcl:`` on, or everything after a traceback; the run's log lines before are left out)."""
    capsys.readouterr()
    status = cli.main(args)
    err = capsys.readouterr().err
    start = min((err.find(m) for m in ("spcl:", "Traceback") if m in err), default=len(err))
    return status, err[start:]


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An undisturbed run: what every interrupted run must end with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert cli.main(_args(data, out)) == 0
    return out


def _same_results(a: Path, b: Path) -> None:
    summary = "08_evaluate/summary.json"
    assert json.loads((a / summary).read_text()) == json.loads((b / summary).read_text())
    for stage in ("01_warmup", "04_adapt", "06_self_train"):
        wa = torch.load(a / stage / "model.pth", weights_only=True)["model"]
        wb = torch.load(b / stage / "model.pth", weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), stage


def _no_temp_files(run: Path) -> None:
    assert sorted(run.rglob(".*.tmp")) == []


def _on_fsync(monkeypatch: pytest.MonkeyPatch, match: str, nth: int, act: Callable) -> None:
    """Call ``act()`` at the ``nth`` fsync of a file whose path holds ``match`` (atomic writes)."""
    real, seen = os.fsync, []

    def fsync(fd: int) -> None:
        if match in os.readlink(f"/proc/self/fd/{fd}"):
            seen.append(fd)
            if len(seen) == nth:
                act()
        real(fd)

    monkeypatch.setattr(base.os, "fsync", fsync)


def _full_disk() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write on a full disk


# --- a corrupt or empty image in the middle of the target train set --------------------------


@pytest.mark.parametrize(("damage", "workers"), [("truncated", 0), ("empty", 1)])
def test_unreadable_target_image_stops_the_run_naming_it(
    data: Path, tmp_path: Path, capsys, damage: str, workers: int
) -> None:
    bad_data = tmp_path / "data"
    shutil.copytree(data, bad_data)
    image = bad_data / BAD_IMAGE
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"")
    out = tmp_path / "run"
    status, err = _spcl(capsys, _args(bad_data, out, f"data.num_workers={workers}"))
    assert status == 2
    assert err.count("\n") == 1 and str(image) in err  # one line naming the file
    assert (out / "01_warmup" / "done.json").is_file()  # finished before the bad image: kept
    assert (out / "02_prototypes" / "done.json").is_file()
    assert not (out / "03_pseudo_labels" / "done.json").exists()
    image.write_bytes(good)  # repaired: the stage that failed runs, the finished ones are kept
    args = [*_args(bad_data, out, f"data.num_workers={workers}"), "--only", "pseudo_labels"]
    status, _ = _spcl(capsys, args)
    assert status == 0
    assert "[warmup] done already" in (out / "log.txt").read_text()


def test_unreadable_target_image_is_skipped_when_configured(
    data: Path, tmp_path: Path, capsys
) -> None:
    bad_data = tmp_path / "data"
    shutil.copytree(data, bad_data)
    (bad_data / BAD_IMAGE).write_bytes(b"")
    out = tmp_path / "run"
    status, err = _spcl(capsys, _args(bad_data, out, "data.on_error=skip"))
    assert status == 0, err
    log = (out / "log.txt").read_text()
    assert f"[data] skipped an unreadable file: cannot read image {bad_data / BAD_IMAGE}" in log
    assert "left out 1 target image(s) without a pseudo-label: ['target_train_00003.png']" in log
    assert len(list((out / "03_pseudo_labels" / "labels").iterdir())) == 5
    assert (out / "08_evaluate" / "summary.json").is_file()


# --- a full disk while a stage writes ---------------------------------------------------------


@needs_dev_full
def test_full_disk_while_a_checkpoint_is_written(
    data: Path, straight: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        fill_disk_at(patch, "06_self_train/.checkpoint.pth", 2, free=2**20)  # inside torch.save
        status, err = _spcl(capsys, _args(data, out))
    assert status == 2
    checkpoint = out / "06_self_train" / "checkpoint.pth"
    assert err.count("\n") == 1
    assert f"{checkpoint}: No space left on device; the disk is full" in err
    assert torch.load(checkpoint, weights_only=True)["_loop"]["iteration"] == 1  # the last one
    assert all((out / f / "done.json").is_file() for f in ("01_warmup", "04_adapt"))
    _no_temp_files(out)
    status, err = _spcl(capsys, _args(data, out))  # space freed: the same command again
    assert status == 0, err
    assert "[self_train] resumed from" in (out / "log.txt").read_text()
    _same_results(straight, out)


def test_full_disk_while_pseudo_labels_are_written(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    real_save, saved = Image.Image.save, []

    def save(self, fp, *args, **kwargs):  # PIL's own write fails: no file name in the error
        if "labels.partial" in str(fp):
            saved.append(fp)
            if len(saved) == 3:
                _full_disk()
        return real_save(self, fp, *args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", save)
        status, err = _spcl(capsys, _args(data, out))
    assert status == 2
    assert f"{saved[-1]}: No space left on device" in err and err.count("\n") == 1
    assert (out / "01_warmup" / "done.json").is_file()
    assert (out / "01_warmup" / "model.pth").is_file()
    assert not (out / "03_pseudo_labels" / "labels").exists()  # no half label set under its name


# --- Ctrl-C -----------------------------------------------------------------------------------


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt, also where the suite was started in the background (a
    shell without job control starts it with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_a_checkpoint_is_written_stops_cleanly_and_resumes(
    data: Path, straight: Path, tmp_path: Path, capsys, monkeypatch, sigint_raises
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _on_fsync(patch, "04_adapt/.checkpoint.pth", 2, lambda: os.kill(os.getpid(), signal.SIGINT))
        status, err = _spcl(capsys, _args(data, out))
    assert status not in (0, 1)  # neither success nor a bug's traceback
    assert "interrupted" in err.lower() and "Traceback" not in err
    assert torch.load(out / "04_adapt" / "checkpoint.pth", weights_only=True)["_loop"][
        "iteration"
    ] in (1, 2)
    _no_temp_files(out)
    status, err = _spcl(capsys, _args(data, out))
    assert status == 0, err
    log = (out / "log.txt").read_text()
    assert "[adapt] resumed from" in log and "[warmup] done already" in log
    _same_results(straight, out)


# --- a read-only run directory ----------------------------------------------------------------


def test_read_only_run_directory_is_a_named_error_that_changes_nothing(
    data: Path, straight: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS))
    if os.geteuid() == 0:  # root writes through file modes: a read-only mount is simulated
        real_open, real_os_open = logging.FileHandler._open, os.open

        def handler_open(self):
            if self.baseFilename.startswith(str(out)):
                raise OSError(read_only.errno, read_only.strerror, self.baseFilename)
            return real_open(self)

        def os_open(file, flags, *args, **kwargs):  # the atomic writes' temporary files
            if flags & os.O_CREAT and str(file).startswith(str(out)):
                raise OSError(read_only.errno, read_only.strerror, str(file))
            return real_os_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(logging.FileHandler, "_open", handler_open)
        monkeypatch.setattr(base.os, "open", os_open)
    else:
        for path in [out, *out.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
    try:
        status, err = _spcl(capsys, _args(data, out, "adapt.lambda_cl=0.5"))
    finally:
        for path in [out, *out.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert status == 2
    assert err.count("\n") == 1 and f"spcl: error: {out}" in err
    assert "read-only" in err or "no permission" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# --- config files ---------------------------------------------------------------------------


def test_yaml_python_object_tags_are_refused_never_run(tmp_path: Path, capsys) -> None:
    made = tmp_path / "made_by_yaml"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"base: demo\nrun:\n  out: !!python/object/apply:os.mkdir ['{made}']\n")
    status, err = _spcl(capsys, ["run", str(evil)])
    assert status == 2 and not made.exists()
    assert err.count("\n") == 1 and f"{evil}: refused:" in err and "python/object" in err
    override = f"run.out=!!python/object/apply:os.mkdir ['{made}']"
    status, err = _spcl(capsys, ["run", "demo", override])
    assert status == 2 and not made.exists()
    assert err.count("\n") == 1 and "refused" in err


def test_a_base_chain_that_loops_names_the_loop(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nrun: {seed: 1}\n")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    status, err = _spcl(capsys, ["run", str(tmp_path / "a.yaml")])
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert status == 2 and f"'base' chain loops back to {a} ({a} → {b} → {a})" in err
    status, err = _spcl(capsys, ["config", str(tmp_path / "self.yaml")])
    assert status == 2 and "self.yaml: 'base' chain loops back" in err


# --- kill -9 at several points of a stage (child processes) -----------------------------------

INJECT = """
import os, signal, sys
match, nth = sys.argv[1], int(sys.argv[2])
import spcl.base as base
from PIL import Image
real_fsync, real_save, seen = os.fsync, Image.Image.save, []
def hit(path):
    if match in str(path):
        seen.append(path)
        return len(seen) == nth
    return False
def fsync(fd):
    if hit(os.readlink(f"/proc/self/fd/{fd}")):
        os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written, not renamed
    real_fsync(fd)
def save(self, fp, *args, **kwargs):
    if hit(fp):
        with open(fp, "wb") as handle:
            handle.write(b"\\x89PNG")  # a torn label file under its final name
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(self, fp, *args, **kwargs)
base.os.fsync, Image.Image.save = fsync, save
from spcl.cli import main
sys.exit(main(sys.argv[3:]))
"""


KILL_POINTS = (
    ("01_warmup/.checkpoint.pth", 2),  # while a checkpoint is written
    ("03_pseudo_labels/labels.partial", 3),  # while pseudo-labels are written (one torn PNG)
    ("04_adapt/.model.pth", 1),  # while a stage's model is written
    ("05_pseudo_labels/.done.json", 1),  # between a stage's outputs and its done.json
)  # (path fragment, n-th write): each run is killed there, the next one goes on from it


@pytest.mark.slow
def test_kill_9_at_four_points_then_rerun_ends_as_an_undisturbed_run(
    data: Path, straight: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(base.__file__).parents[1])}
    for match, nth in KILL_POINTS:
        killed = subprocess.run(
            [sys.executable, "-c", INJECT, match, str(nth), *_args(data, out)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert killed.returncode == -signal.SIGKILL, (match, killed.stderr)
    rerun = subprocess.run(
        [sys.executable, "-m", "spcl", *_args(data, out)], env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    _no_temp_files(out)
    labels = sorted((out / "03_pseudo_labels" / "labels").iterdir())
    assert len(labels) == 6 and all(p.stat().st_size > 8 for p in labels)
    log = (out / "log.txt").read_text()
    assert "[warmup] resumed from" in log and "(an interrupted write)" in log
    _same_results(straight, out)
