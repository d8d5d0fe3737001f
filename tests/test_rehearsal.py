"""Every shipped config, rehearsed as a user runs it: ``spcl run CONFIG --fast-dev-run``.

Each config runs every one of its stages (two iterations each, a few images) with its real
architecture and widths, on dataset trees in the real GTA5, SYNTHIA, Synscapes and Cityscapes
layouts and with a weight file in the official layout its ``model.pretrained`` names (a URL is
served from a torch hub cache, as after a download; a required file is passed as a user passes
it). What is shrunk for the CI budget, and by how much: every spatial size ÷ 8 (dataset files,
``data.*.size``, crops, ``evaluate.slide``, the pseudo-label weight's cropped rows, MIC's mask
blocks) and rare-class pixel thresholds ÷ 64 (areas). A shipped config whose dataset kind or
weight layout has no generator here fails: a config no rehearsal runs is not shipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from dataset_trees import write_cityscapes, write_gta5, write_synscapes, write_synthia
from official_layouts import (
    coco_init_state,
    dinov2_layout,
    mit_state,
    random_tensors,
    save_state,
    torchvision_resnet_state,
)
from spcl.cli import main
from spcl.config import PACKAGED_CONFIGS, load_config
from spcl.config_schema import Config
from spcl.data.synthetic import generate_pair
from spcl.pipeline import plan

SHIPPED = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
SCALE = 8  # spatial sizes ÷ 8 (areas ÷ 64) against the shipped configs
THREADS = 2  # the big models run faster on both cores (conftest sets one)
STAGE_LINE = re.compile(r"^  (\w+)\s+(OK|FAILED)\s+[\d.]+ s", re.MULTILINE)

WEIGHT_LAYOUTS: dict[str, Callable[[re.Match], dict]] = {  # file name pattern → its state
    r"resnet(50|101)-[0-9a-f]+\.pth": lambda m: torchvision_resnet_state(int(m[1])),
    r"DeepLab_resnet_pretrained_init.*\.pth": lambda m: coco_init_state(),
    r"mit_(b[0-5])\.pth": lambda m: mit_state(m[1]),
    r"dinov2_(vit[slbg]14)(_reg4)?_pretrain\.pth": lambda m: random_tensors(
        dinov2_layout(m[1], registers=bool(m[2])), seed=0
    ),
}
REQUIRED_WEIGHTS = {"daformer_mit_b": "mit_{}.pth"}  # model name prefix → the file it needs


def weight_state(file_name: str) -> dict:
    """Random tensors in the official layout of the weight file named ``file_name``."""
    for pattern, make in WEIGHT_LAYOUTS.items():
        match = re.fullmatch(pattern, file_name)
        if match:
            return make(match)
    raise AssertionError(f"no generator for the weight layout of {file_name!r}: add one")


class Rehearsal:
    """Generated dataset trees and weight files (each written once per test session)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.torch_home = root / "torch_home"
        self.data = {
            "gta5": write_gta5(root / "gta5"),
            "synthia": write_synthia(root / "synthia"),
            "synscapes": write_synscapes(root / "synscapes"),
            "cityscapes": write_cityscapes(root / "cityscapes"),
        }

    def data_root(self, kind: str) -> Path:
        if kind == "synthetic" and kind not in self.data:
            self.data[kind] = generate_pair(
                self.root / "synthetic", n_train=8, n_val=4, size=(96, 192), preview=False
            )
        assert kind in self.data, f"no generated dataset of kind {kind!r}: add one"
        return self.data[kind]

    def weight_file(self, file_name: str, folder: Path) -> Path:
        path = folder / file_name
        if not path.is_file():
            save_state(weight_state(file_name), path)
        return path

    def pretrained_overrides(self, config: Config) -> list[str]:
        """A weight file wherever ``model.pretrained`` names one (URLs: the hub cache)."""
        pretrained = config.model.pretrained
        if pretrained == "???":
            prefix = next(p for p in REQUIRED_WEIGHTS if config.model.name.startswith(p))
            file_name = REQUIRED_WEIGHTS[prefix].format(config.model.name[len(prefix) - 1 :])
            return [f"model.pretrained={self.weight_file(file_name, self.root / 'weights')}"]
        if pretrained and urlparse(pretrained).scheme in ("http", "https"):
            self.weight_file(
                Path(urlparse(pretrained).path).name, self.torch_home / "hub" / "checkpoints"
            )
            return []
        assert not pretrained, f"model.pretrained {pretrained!r}: rehearse a local file too"
        return []


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    return Rehearsal(tmp_path_factory.mktemp("rehearsal"))


def _scaled(values: list[int]) -> str:
    """``values`` ÷ 8 as an override's list (no spaces: one shell word)."""
    return "[" + ",".join(str(max(1, round(v / SCALE))) for v in values) + "]"


def shrink_overrides(config: Config) -> list[str]:
    """Overrides that shrink every spatial size ÷ 8 (see the module docstring)."""
    out = []
    for name in ("source", "target", "target_val"):
        domain = getattr(config.data, name)
        if domain.size:
            out.append(f"data.{name}.size={_scaled(domain.size)}")
        out.append(f"data.{name}.rcs_min_pixels={round(domain.rcs_min_pixels / SCALE**2)}")
    online = config.online
    for key, value in (("online.crop", online.crop), ("self_train.crop", config.self_train.crop)):
        if value:
            out.append(f"{key}={_scaled(value)}")
    if config.evaluate.slide:
        out.append(f"evaluate.slide={_scaled(config.evaluate.slide)}")
    pseudo = online.pseudo
    out += [
        f"online.pseudo.crop_top={round(pseudo.crop_top / SCALE)}",
        f"online.pseudo.crop_bottom={round(pseudo.crop_bottom / SCALE)}",
        f"online.masking.block_size={max(1, round(online.masking.block_size / SCALE))}",
    ]
    return out


def rehearse(
    name: str, rehearsal: Rehearsal, extra: list[str], monkeypatch, capsys
) -> tuple[int, str]:
    """``spcl run NAME ... --fast-dev-run`` in this process; (exit status, its output)."""
    probe = load_config(name, extra, require_all=False)
    roots = [
        f"data.{d}.root={rehearsal.data_root(getattr(probe.data, d).kind)}"
        for d in ("source", "target", "target_val")
    ]
    config = load_config(name, [*roots, *extra], require_all=False)
    overrides = [*roots, *shrink_overrides(config), *rehearsal.pretrained_overrides(config), *extra]
    monkeypatch.setenv("TORCH_HOME", str(rehearsal.torch_home))
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        status = main(["run", name, *overrides, "--fast-dev-run"])
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def check_every_stage_ran(name: str, extra: list[str], status: int, output: str) -> None:
    config = load_config(
        name, ["data.source.root=/s", "data.target.root=/t", *extra], require_all=False
    )
    wanted = [s.name for s in plan(config)]
    assert status == 0, output[-3000:]
    assert STAGE_LINE.findall(output) == [(s, "OK") for s in wanted], output[-3000:]
    assert "fast dev run passed" in output


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_runs_every_stage(name: str, rehearsal, monkeypatch, capsys) -> None:
    status, output = rehearse(name, rehearsal, [], monkeypatch, capsys)
    check_every_stage_ran(name, [], status, output)


OTHER_LAYOUTS = {  # official weight layouts no shipped config names, on a config they fit
    "coco_init": ("gta5_to_cityscapes_daformer_dlv2", "DeepLab_resnet_pretrained_init.pth", []),
    "mit_b0": ("gta5_to_cityscapes_daformer_mitb5", "mit_b0.pth", ["model.name=daformer_mit_b0"]),
    "dinov2_registers": (
        "gta5_to_cityscapes_vfmuda_vitb14",
        "dinov2_vitb14_reg4_pretrain.pth",
        ["model.name=dinov2_vitb14_reg"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(OTHER_LAYOUTS))
def test_the_other_official_layouts_run_too(case: str, rehearsal, monkeypatch, capsys) -> None:
    name, file_name, extra = OTHER_LAYOUTS[case]
    path = rehearsal.weight_file(file_name, rehearsal.root / "weights")
    extra = [*extra, f"model.pretrained={path}"]
    status, output = rehearse(name, rehearsal, extra, monkeypatch, capsys)
    check_every_stage_ran(name, extra, status, output)
