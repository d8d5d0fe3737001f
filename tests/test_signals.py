"""Stopping a command: SIGTERM behaves like Ctrl-C, both say how to resume; a diverged loss is a
named one-line error with exit 1 that leaves the last checkpoint intact.

Before, SIGTERM ended a run without a word (exit -15, the lock file's process gone), Ctrl-C printed
only "interrupted", and a NaN loss ended in a FloatingPointError traceback.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spcl import cli
from spcl.base import NonFiniteLossError
from test_class_tables import _overrides, make_folder


def _stop_with(monkeypatch: pytest.MonkeyPatch, command: str, how: str) -> None:
    """Make ``command``'s handler stop as after Ctrl-C or SIGTERM."""

    def handler(args: object) -> int:
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, f"_cmd_{command}", handler)


@pytest.mark.parametrize(("how", "status"), [("ctrl-c", 130), ("sigterm", 143)])
def test_a_stopped_run_says_how_to_resume(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, how: str, status: int
) -> None:
    _stop_with(monkeypatch, "run", how)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["run", "demo", "run.out=somewhere", "run.seed=3"]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("stopped by SIGTERM" if how == "sigterm" else "spcl: interrupted") in err
    assert "run the same command to resume: spcl run demo run.out=somewhere run.seed=3" in err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_stopped_evaluation_does_not_talk_of_resuming(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _stop_with(monkeypatch, "evaluate", "sigterm")
    assert cli.main(["evaluate", "--pred-dir", "p", "--gt-dir", "g"]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "resume" not in err


def test_a_diverged_loss_is_one_line_with_exit_1_and_the_checkpoint_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = make_folder(tmp_path / "data", 3)
    run = tmp_path / "run"
    overrides = [
        *_overrides(root, 3, run),
        "run.stages=[warmup]",
        "warmup.adversarial=false",
        "warmup.optim.lr=1e9",
        "warmup.optim.max_iter=30",
        "warmup.optim.stop_iter=30",
        "run.ckpt_every=1",
    ]
    assert cli.main(["run", str(_config(tmp_path)), *overrides]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the stage's log lines
    assert err.startswith("spcl: error: [warmup] iteration ")
    assert "the loss is not finite (seg=" in err and "loss=" in err
    checkpoint = run / "01_warmup" / "checkpoint.pth"
    assert f"the last checkpoint ({checkpoint}, iteration " in err
    failed = int(err.split("iteration ")[1].split(":")[0])
    saved = torch.load(checkpoint, weights_only=True)["_loop"]["iteration"]
    assert saved == failed - 1  # intact: the one written after the last finite step
    assert f"iteration {saved}) is intact" in err
    assert issubclass(NonFiniteLossError, FloatingPointError)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True], ids=["process", "process-group"])
def test_sigterm_stops_a_run_cleanly_and_the_same_command_resumes(
    tmp_path: Path, group: bool
) -> None:
    """``group``: the signal goes to the whole process group, data-loader workers included, as
    `timeout`, SLURM, `docker stop` and `kill -- -PGID` send it. Before, the workers died of it
    and PyTorch's SIGCHLD handler replaced the clean stop with a RuntimeError traceback."""
    root = make_folder(tmp_path / "data", 3)
    run = tmp_path / "run"
    overrides = [
        *_overrides(root, 3, run),
        "run.stages=[warmup]",
        "warmup.optim.max_iter=60",
        "warmup.optim.stop_iter=60",
        "run.ckpt_every=2",
        *(["data.num_workers=2"] if group else []),
    ]
    command = [sys.executable, "-m", "spcl", "run", str(_config(tmp_path)), *overrides]
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=group
    )
    checkpoint = run / "01_warmup" / "checkpoint.pth"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not checkpoint.exists():
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be stopped"
    if group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("spcl: stopped by SIGTERM;") and "run the same command to resume" in last
    assert not (run / "01_warmup" / "done.json").exists()
    with open(run / ".lock") as handle:  # released: this process can take it
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    stopped_at = torch.load(checkpoint, weights_only=True)["_loop"]["iteration"]
    assert 2 <= stopped_at < 60

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {checkpoint} at iteration" in (run / "log.txt").read_text()
    assert (run / "01_warmup" / "done.json").exists()
