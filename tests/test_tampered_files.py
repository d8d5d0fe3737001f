"""Edited, damaged and foreign files: every one a named error before anything is built.

Model files whose metadata was edited (``arch`` a list, a field missing, a string or negative
value, ``width: 100000``), a corrupt ``.safetensors`` as ``model.pretrained``, a checkpoint whose
entries do not fit the stage, a ``done.json`` holding ``[]``, a URL without network, an option
out of range: one line naming the file (or key) and what is wrong, exit status 2. And the two
``model.pretrained`` values that were refused but mean something: ``""`` (none) and another run's
model file for a MiT model below width 64.
"""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from spcl import cli
from spcl.base import CheckpointError, ConfigError
from spcl.data.synthetic import generate_pair
from spcl.engine.loop import LoopConfig, train_loop
from spcl.engine.tracking import Tracker
from spcl.models import files
from spcl.models.build import build_model
from spcl.models.files import load_model_file, save_model_file
from spcl.models.safetensors_file import write_safetensors_model
from tiny import TINY

ARCH, WIDTH, CLASSES = "deeplabv2_resnet18", 8, 3  # a tiny model file, fast on a CPU
MIT = "daformer_mit_b0"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pth"
    torch.manual_seed(0)
    model = build_model(ARCH, CLASSES, width=WIDTH)
    save_model_file(model, path, name=ARCH, num_classes=CLASSES, width=WIDTH, class_names="abc")
    return path


def _edited(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    state = torch.load(source, weights_only=True)
    edit(state)
    torch.save(state, target)
    return target


def _spcl(capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    status = cli.main(args)
    err = capsys.readouterr().err
    return status, err[err.find("spcl:") :] if "spcl:" in err else err


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        state["arch"][key] = value

    return edit


EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {  # edit, what the error says
    "arch a list": (
        lambda s: s.update(arch=[ARCH, CLASSES, WIDTH]),
        "'arch' is a list ['deeplabv2_resnet18', 3, 8], not a mapping",
    ),
    "no num_classes": (lambda s: s["arch"].pop("num_classes"), "'arch' lacks ['num_classes']"),
    "num_classes a string": (
        _set("num_classes", "3"),
        "arch.num_classes must be a positive integer, got the string '3'",
    ),
    "negative num_classes": (
        _set("num_classes", -3),
        "arch.num_classes must be a positive integer, got -3",
    ),
    "negative width": (_set("width", -8), "arch.width must be a positive integer, got -8"),
    "options a list": (_set("options", [1]), "arch.options must be a mapping"),
    "an unknown model": (_set("name", "resnet9000"), "its arch cannot be built: unknown model"),
    "too few class names": (
        lambda s: s.update(class_names=["a"]),
        "class_names has 1 entries but arch.num_classes is 3",
    ),
    "a palette colour of 2 channels": (
        lambda s: s.update(palette=[[1, 2], [3, 4, 5], [6, 7, 8]]),
        "palette[0] must be [r, g, b] in 0..255",
    ),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_edited_model_file_is_one_line_naming_the_file_and_the_field(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    edit, says = EDITS[case]
    path = _edited(model_file, tmp_path / "edited.pth", edit)
    out = tmp_path / "model.safetensors"
    status, err = _spcl(capsys, ["export", str(path), "--format", "safetensors", "--out", str(out)])
    assert status == 2 and err.count("\n") == 1, err
    assert f"spcl: error: {path}: {says}" in err
    assert not out.exists()


@pytest.mark.parametrize("form", ["pth", "safetensors"])
def test_an_edited_width_is_refused_before_the_model_is_allocated(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    if form == "pth":
        path = _edited(model_file, tmp_path / "wide.pth", _set("width", 100_000))
    else:
        model, info = load_model_file(model_file)
        path = tmp_path / "wide.safetensors"
        arch = {**info["arch"], "width": 100_000}  # a 1 kB edit of the metadata
        write_safetensors_model(path, model.state_dict(), arch=arch, class_names="abc")
    real, built = files.build_model, []

    def build(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
        on_meta = torch.get_default_device().type == "meta"
        built.append(on_meta)
        assert on_meta or kwargs["width"] < 1000, "would allocate the model the metadata names"
        return real(name, num_classes, **kwargs)

    monkeypatch.setattr(files, "build_model", build)
    with pytest.raises(CheckpointError) as caught:
        load_model_file(path)
    message = str(caught.value)
    assert f"{path}: weights do not fit the arch it names ({ARCH}, width 100000" in message
    assert "shape mismatch" in message and "vs model (100000" in message
    assert built == [True]  # built on the meta device only


# --- model.pretrained -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pair") / "data"
    return generate_pair(root, seed=1, n_train=2, n_val=1, size=(32, 64), preview=False)


def _run(data: Path, out: Path, *overrides: str) -> list[str]:
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    return ["run", "demo", *TINY, *roots, f"run.out={out}", "run.stages=[warmup]", *overrides]


def test_a_corrupt_safetensors_as_pretrained_is_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from safetensors.torch import save_file

    good = tmp_path / "mit_b0.safetensors"
    save_file({"patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7)}, good)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:-100])  # the header promises more than the file holds
    args = _run(data, tmp_path / "run", f"model.name={MIT}", "model.width=64")
    status, err = _spcl(capsys, [*args, f"model.pretrained={corrupt}"])
    assert status == 2 and err.count("\n") == 1, err
    assert f"spcl: error: {corrupt}: not a readable PyTorch checkpoint" in err


def test_an_edited_model_file_as_pretrained_is_named_at_start(
    model_file: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _edited(model_file, tmp_path / "edited.pth", _set("num_classes", "3"))
    args = _run(data, tmp_path / "run", f"model.name={ARCH}", f"model.pretrained={path}")
    status, err = _spcl(capsys, args)
    assert status == 2 and err.count("\n") == 1, err
    assert f"{path}: arch.num_classes must be a positive integer, got the string '3'" in err
    assert not (tmp_path / "run" / "01_warmup").exists()  # refused before any stage started


def test_an_empty_pretrained_means_none() -> None:
    torch.manual_seed(0)
    empty = build_model(ARCH, CLASSES, width=WIDTH, pretrained="")
    torch.manual_seed(0)
    none = build_model(ARCH, CLASSES, width=WIDTH)
    expected = none.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in empty.state_dict().items())


def test_a_url_that_cannot_be_fetched_says_where_to_place_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, dst: str, progress: bool = True) -> None:
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    url = "https://example.org/weights/resnet18-tiny.pth"
    with pytest.raises(CheckpointError) as caught:
        build_model(ARCH, CLASSES, width=WIDTH, pretrained=url)
    message = str(caught.value)
    assert message.startswith(f"model.pretrained {url} cannot be fetched (")
    assert "Temporary failure in name resolution" in message and "\n" not in message
    assert f"place it at {tmp_path / 'hub' / 'checkpoints' / 'resnet18-tiny.pth'}" in message


def test_an_option_out_of_range_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"model 'daformer_mit_b0' cannot be built .*dropout"):
        build_model(MIT, CLASSES, width=WIDTH, options={"dropout": 2})


@pytest.mark.parametrize("name", [MIT, "dinov2_vits14"])
def test_an_spcl_model_file_is_a_pretrained_encoder_at_any_width(tmp_path: Path, name: str) -> None:
    torch.manual_seed(1)
    trained = build_model(name, 5, width=WIDTH)
    path = tmp_path / "model.pth"
    save_model_file(trained, path, name=name, num_classes=5, width=WIDTH, class_names="abcde")
    model = build_model(name, CLASSES, width=WIDTH, pretrained=path)  # other classes: head anew
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in trained.backbone.state_dict().items())
    with pytest.raises(CheckpointError, match=rf"spcl model file of '{name}' at width 8; its "):
        build_model(name, CLASSES, width=2 * WIDTH, pretrained=path)


# --- checkpoints and run records --------------------------------------------------------------


def _resume(checkpoint: Path, teacher: nn.Module) -> None:
    """Start a one-step loop with a student and a teacher from ``checkpoint``."""
    student = nn.Linear(3, 2)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    tracker = Tracker(checkpoint.parent, enabled=False)
    train_loop(
        lambda _: {"loss_term": student(torch.ones(1, 3)).sum()},
        weights={"loss_term": 1.0},
        state={"model": student, "teacher": teacher, "optimizer": opt},
        optimizers=[opt],
        schedulers=[],
        config=LoopConfig(stop_iter=1, checkpoint=checkpoint),
        tracker=tracker,
    )


def test_a_checkpoint_entry_of_other_keys_or_shapes_is_named(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pth"
    _resume(checkpoint, nn.Linear(3, 2))  # writes the checkpoint of a finished step
    with pytest.raises(CheckpointError) as caught:
        _resume(checkpoint, nn.Linear(3, 4))  # a teacher of another shape
    assert str(caught.value).startswith(
        f"{checkpoint}: the 'teacher' entry does not fit this stage's Linear: shapes (2): "
        f"weight: file (2, 3) vs model (4, 3)"
    )
    with pytest.raises(CheckpointError, match=r"'teacher' entry .*unexpected \(2\): weight, bias"):
        _resume(checkpoint, nn.Sequential(nn.Linear(3, 2)))  # other keys
    state = torch.load(checkpoint, weights_only=True)
    state["teacher"] = [1, 2]
    torch.save(state, checkpoint)
    with pytest.raises(CheckpointError, match=r"the 'teacher' entry is a list, not a state dict"):
        _resume(checkpoint, nn.Linear(3, 2))


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ("[]", "holds a list, not the JSON object spcl writes there"),
        ('{"fingerprint": 3, "output": "model.pth"}', "'fingerprint' must be a string, found int"),
        ('{"fingerprint": "abc"}', "'output' must be a string, found nothing"),
    ],
)
def test_an_edited_done_json_is_one_line_naming_it(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, record: str, says: str
) -> None:
    done = tmp_path / "run" / "01_warmup" / "done.json"
    done.parent.mkdir(parents=True)
    done.write_text(record)
    status, err = _spcl(capsys, _run(data, tmp_path / "run"))
    assert status == 2 and err.count("\n") == 1, err
    assert f"spcl: error: {done}: {says}; delete it to run the stage again" in err
    assert json.loads(done.read_text()) == json.loads(record)  # left as it was
