"""A full disk while spcl writes, met where the kernel reports it, and Ctrl-C at a file's creation.

The kernel's own ENOSPC comes from ``/dev/full`` once the bytes left on the "disk" are written
(:mod:`full_disk`), so the writer (torch.save's zip writer, PIL's encoder, json, YAML) meets the
failure inside its own ``write``, as on a full disk, never after it returned. Where
the machine lets a user mount a file system in a namespace of their own, a 2 MB tmpfs is filled by
a real run (skipped elsewhere, e.g. in most CI containers). Each case: one line naming the file,
exit status 2, the previous file intact, no temporary file left.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from full_disk import DEV_FULL, fill_disk_at, needs_dev_full
from spcl import cli
from spcl.base import atomic_write_bytes
from spcl.engine.checkpoint import load_state, save_state
from spcl.engine.tracking import Tracker


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def _stderr_tail(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    return err[err.find("spcl:") :] if "spcl:" in err else err


@needs_dev_full
def test_a_full_disk_inside_torch_save_is_the_os_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pth"
    save_state({"step": 1}, path)
    with monkeypatch.context() as patch:
        fill_disk_at(patch, f".{path.name}.", free=64 * 1024)  # 64 kB of the 400 kB fit
        with pytest.raises(OSError) as caught:  # not RuntimeError: [enforce fail at …]
            save_state({"w": torch.zeros(100_000), "step": 2}, path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert load_state(path) == {"step": 1}  # the previous checkpoint, as it was
    assert _temps(tmp_path) == []


def _labels(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(2):
        label = rng.integers(0, 4, (8, 12), dtype=np.uint8)
        Image.fromarray(label).save(folder / f"frame_{i}.png")
    return folder


WRITES = {  # a file of each kind a command writes: (its name, the command's arguments)
    "yaml": ("config.yaml", ["config", "demo", "--save", "{out}/config.yaml"]),
    "json": ("scores.json", ["evaluate", "--pred-dir", "{gt}", "--gt-dir", "{gt}"]),
    "png": ("confusion.png", ["evaluate", "--pred-dir", "{gt}", "--gt-dir", "{gt}"]),
}
FLAGS = {"json": ["--json", "{out}/scores.json"], "png": ["--confusion", "{out}/confusion.png"]}


@needs_dev_full
@pytest.mark.parametrize("kind", sorted(WRITES))
def test_a_full_disk_is_one_line_naming_the_file_for_every_kind_of_write(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    gt, out = _labels(tmp_path / "gt"), tmp_path / "out"
    out.mkdir()
    name, args = WRITES[kind]
    args = [a.format(out=out, gt=gt) for a in [*args, *FLAGS.get(kind, [])]]
    capsys.readouterr()
    with monkeypatch.context() as patch:
        fill_disk_at(patch, f".{name}.")
        status = cli.main(args)
    err = _stderr_tail(capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert f"spcl: error: {out / name}: No space left on device; the disk is full" in err
    assert not (out / name).exists() and _temps(out) == []


@pytest.mark.parametrize("write", ["bytes", "checkpoint"])
def test_ctrl_c_right_after_the_temporary_file_is_created_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    real = os.open

    def open_(file, flags, *args, **kwargs):
        fd = real(file, flags, *args, **kwargs)
        if flags & os.O_CREAT and str(file).endswith(".tmp"):
            os.close(fd)
            raise KeyboardInterrupt  # Ctrl-C the moment the file exists, before it is returned
        return fd

    monkeypatch.setattr(os, "open", open_)
    path = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt):
        if write == "bytes":
            atomic_write_bytes(path, b"{}")
        else:
            save_state({"step": 1}, path)
    assert sorted(tmp_path.iterdir()) == []


@needs_dev_full
def test_a_full_disk_under_log_txt_is_the_os_error_naming_it(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, progress=False)
    handler = next(h for h in tracker.logger.handlers if hasattr(h, "baseFilename"))
    handler.stream.close()
    handler.stream = DEV_FULL.open("w")  # the file's next line meets a full disk
    with pytest.raises(OSError) as caught:  # not a "--- Logging error ---" block on stderr
        tracker.info("a line that does not fit")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "log.txt")
    handler.stream = open(os.devnull, "w")  # noqa: SIM115 (closed by the tracker)
    tracker.close()


def test_a_full_disk_under_tensorboard_names_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.utils.tensorboard as tensorboard

    class FullWriter:  # as TensorBoard's writer raises once its thread met a full disk
        def __init__(self, log_dir: str) -> None:
            self.log_dir = log_dir

        def add_scalar(self, *args, **kwargs) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self) -> None:
            pass

    monkeypatch.setattr(tensorboard, "SummaryWriter", FullWriter)
    tracker = Tracker(tmp_path, progress=False)
    with pytest.raises(OSError) as caught:
        tracker.scalars("train", {"loss": 1.0}, 1)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "tensorboard")
    tracker.close()


# --- a real full disk: a 2 MB tmpfs in a user namespace (where the machine allows one) ---------

SAVE = """
import sys, torch
from spcl.base import describe_os_error
from spcl.engine.checkpoint import save_state
try:
    save_state({"w": torch.zeros(1_000_000)}, sys.argv[1])  # 4 MB into 2 MB
except OSError as exc:
    sys.exit(describe_os_error(exc))
"""
REAL_DISK = """
mount -t tmpfs -o size=2m tmpfs "$MNT" || exit 99
"$PY" -c "$SAVE" "$MNT/checkpoint.pth" 2> "$ERR/save.txt"
echo $? > "$ERR/save.status"
"$PY" -c "import sys; f = open(sys.argv[1], 'wb', buffering=0)
try:
    while True: f.write(bytes(4096))
except OSError: pass" "$MNT/filler"
"$PY" -m spcl config demo --save "$MNT/config.yaml" 2> "$ERR/config.txt"
echo $? > "$ERR/config.status"
find "$MNT" -name '.*.tmp' > "$ERR/temps.txt"
"""


def _user_mounts() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def test_a_real_full_disk_inside_torch_save_and_a_yaml_write_is_one_line(tmp_path: Path) -> None:
    if not _user_mounts():
        pytest.skip("this machine lets no user mount a tmpfs (unshare -rm)")
    mnt, err = tmp_path / "mnt", tmp_path / "err"
    mnt.mkdir(), err.mkdir()
    env = {**os.environ, "MNT": str(mnt), "ERR": str(err), "PY": sys.executable, "SAVE": SAVE}
    env["PYTHONPATH"] = str(Path(cli.__file__).parents[1])
    script = subprocess.run(
        ["unshare", "-rm", "sh", "-c", REAL_DISK], env=env, capture_output=True, text=True
    )
    assert script.returncode == 0, script.stderr
    save_err = (err / "save.txt").read_text()
    assert (err / "save.status").read_text().strip() == "1", save_err  # sys.exit(message)
    assert save_err.startswith(f"{mnt / 'checkpoint.pth'}: No space left on device; the disk")
    assert save_err.count("\n") == 1  # describe_os_error's line, no RuntimeError traceback
    config_err = (err / "config.txt").read_text()
    assert (err / "config.status").read_text().strip() == "2", config_err
    assert config_err.count("\n") == 1
    assert config_err.startswith(f"spcl: error: {mnt / 'config.yaml'}: No space left on device")
    assert (err / "temps.txt").read_text() == ""  # no temporary file on the full disk
