"""What a rehearsal of the shipped configs needs: datasets, weight files, and shrink overrides.

Dataset trees in the real GTA5, SYNTHIA, Synscapes and Cityscapes layouts (:mod:`dataset_trees`)
and weight files in the official layout a config's ``model.pretrained`` names
(:mod:`official_layouts`; a URL is served from a torch hub cache, as after a download; a required
file is passed as a user passes it), written once per :class:`Rehearsal`, at the real sizes ÷
``scale``. Used by tests/test_rehearsal.py (scale 16) and benchmarks/rehearsal.py (scale 1).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from dataset_trees import (
    write_cityscapes,
    write_folder,
    write_gta5,
    write_synscapes,
    write_synthia,
)
from official_layouts import (
    coco_init_state,
    dinov2_layout,
    mit_state,
    random_tensors,
    save_state,
    torchvision_resnet_state,
)
from spcl.config import PACKAGED_CONFIGS, load_config
from spcl.config_schema import Config
from spcl.data.synthetic import generate_pair

SHIPPED = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
SCALE = 16  # CI: spatial sizes ÷ 16 (areas ÷ 256) against the shipped configs
REHEARSED_BATCH = 2  # online images per domain and step in a rehearsal (DAFormer's batch)
PATCH = 14  # DINOv2's patch side: the distillation's input stays a whole number of patches
STAGE_LINE = re.compile(r"^  (\w+)\s+(OK|FAILED)\s+([\d.]+) s", re.MULTILINE)

WEIGHT_LAYOUTS: dict[str, Callable[[re.Match], dict]] = {  # file name pattern → its state
    r"resnet(50|101)-[0-9a-f]+\.pth": lambda m: torchvision_resnet_state(int(m[1])),
    r"DeepLab_resnet_pretrained_init.*\.pth": lambda m: coco_init_state(),
    r"mit_(b[0-5])\.pth": lambda m: mit_state(m[1]),
    r"dinov2_(vit[slbg]14)(_reg4)?_pretrain\.pth": lambda m: random_tensors(
        dinov2_layout(m[1], registers=bool(m[2])), seed=0
    ),
}
REQUIRED_WEIGHTS = {r"(?:daformer|segformer)_mit_(b[0-5])": "mit_{}.pth"}  # model → file


def weight_state(file_name: str) -> dict:
    """Random tensors in the official layout of the weight file named ``file_name``."""
    for pattern, make in WEIGHT_LAYOUTS.items():
        match = re.fullmatch(pattern, file_name)
        if match:
            return make(match)
    raise AssertionError(f"no generator for the weight layout of {file_name!r}: add one")


class Rehearsal:
    """Generated dataset trees and weight files (each written once per test session)."""

    def __init__(self, root: Path, scale: int = SCALE, images: int = 8) -> None:
        self.root, self.scale = root, scale
        self.torch_home = root / "torch_home"
        val = {"train": images, "val": max(4, images // 2)}
        self.data = {
            "gta5": write_gta5(root / "gta5", images, scale),
            "synthia": write_synthia(root / "synthia", images, scale),
            "synscapes": write_synscapes(root / "synscapes", images, scale),
            "cityscapes": write_cityscapes(root / "cityscapes", val, scale),
            "folder": write_folder(root / "folder", val, scale),
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

    def url_file(self, url: str | None) -> bool:
        """Serve the file an http(s) ``url`` names from the hub cache; False if not a URL."""
        if not url or urlparse(url).scheme not in ("http", "https"):
            return False
        self.weight_file(Path(urlparse(url).path).name, self.torch_home / "hub" / "checkpoints")
        return True

    def pretrained_overrides(self, config: Config) -> list[str]:
        """A weight file wherever ``model.pretrained`` names one (URLs: the hub cache)."""
        pretrained = config.model.pretrained
        if pretrained == "???":  # required: the file the model loads, passed by its path
            for pattern, file_name in REQUIRED_WEIGHTS.items():
                match = re.fullmatch(pattern, config.model.name)
                if match:
                    path = self.weight_file(file_name.format(match[1]), self.root / "weights")
                    return [f"model.pretrained={path}"]
            raise AssertionError(f"{config.model.name}: no weight file known for it: add one")
        self.url_file(config.online.distill.pretrained)  # VFM-UDA++'s frozen DINOv2
        if self.url_file(pretrained):
            return []
        if pretrained and Path(pretrained).is_file():
            return []  # a file given already (the other layouts' cases)
        assert not pretrained, f"model.pretrained {pretrained!r}: generate this file too"
        return []

    def overrides(self, name: str, extra: list[str]) -> list[str]:
        """The overrides that rehearse config ``name`` (+ ``extra``) on this world."""
        probe = load_config(name, extra, require_all=False)
        roots = [
            f"data.{d}.root={self.data_root(getattr(probe.data, d).kind)}"
            for d in ("source", "target", "target_val")
        ]
        config = load_config(name, [*roots, *extra], require_all=False)
        shrink = shrink_overrides(config, self.scale)
        return [*roots, *shrink, *self.pretrained_overrides(config), *extra]


def _scaled(values: list[int], scale: int) -> str:
    """``values`` ÷ ``scale`` as an override's list (no spaces: one shell word)."""
    return "[" + ",".join(str(max(1, round(v / scale))) for v in values) + "]"


def shrink_overrides(config: Config, scale: int) -> list[str]:
    """Overrides that shrink every spatial size of ``config`` ÷ ``scale`` (areas ÷ scale²): the
    data sizes, crops, ``evaluate.slide``, HRDA's detail window, the pseudo-label weight's cropped
    rows and margins, MIC's mask blocks, the distillation's input (whole 14-px patches) and
    rare-class pixel thresholds; and the online stage's batch to at most :data:`REHEARSED_BATCH`
    images per domain, one micro-batch per step (the ViT-Adapter resizes any crop to at least
    224², so a VFM-UDA++ config's 4 × 4 images per step would not shrink with the picture).
    Nothing at scale 1."""
    if scale == 1:
        return []
    out = []
    for name in ("source", "target", "target_val"):
        domain = getattr(config.data, name)
        if domain.size:
            out.append(f"data.{name}.size={_scaled(domain.size, scale)}")
        out.append(f"data.{name}.rcs_min_pixels={round(domain.rcs_min_pixels / scale**2)}")
    online = config.online
    for key, value in (("online.crop", online.crop), ("self_train.crop", config.self_train.crop)):
        if value:
            out.append(f"{key}={_scaled(value, scale)}")
    if config.evaluate.slide:
        out.append(f"evaluate.slide={_scaled(config.evaluate.slide, scale)}")
    if config.online.hrda.enabled:  # HRDA's detail window (its corners stay on multiples of 8)
        out.append(f"online.hrda.detail_crop={_scaled(config.online.hrda.detail_crop, scale)}")
    pseudo = online.pseudo
    out += [
        f"online.pseudo.crop_top={round(pseudo.crop_top / scale)}",
        f"online.pseudo.crop_bottom={round(pseudo.crop_bottom / scale)}",
        f"online.masking.block_size={max(1, round(online.masking.block_size / scale))}",
        f"online.distill.input_size={PATCH * max(1, round(online.distill.input_size / scale / PATCH))}",  # noqa: E501
        f"online.optim.batch_size={min(online.optim.batch_size, REHEARSED_BATCH)}",
        "online.optim.grad_accum=1",
    ]
    if pseudo.margins:  # HRDA's PL crop v2 margins (pixels of the whole target image)
        out.append(
            f"online.pseudo.margins=[{','.join(str(round(m / scale)) for m in pseudo.margins)}]"
        )
    return out


def fast_dev_process(
    name: str,
    overrides: list[str],
    *,
    iterations: int = 2,
    keep: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600,
) -> tuple[int, str]:
    """``python -m spcl run NAME OVERRIDES --fast-dev-run N`` in a process of its own, as a user
    runs it; (exit status, stdout + stderr). A timeout is status -1."""
    command = [sys.executable, "-m", "spcl", "run", name, *overrides]
    command += ["--fast-dev-run", str(iterations), *(["--keep"] if keep else [])]
    try:
        done = subprocess.run(
            command,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        return -1, f"timed out after {timeout:.0f} s: {exc.stdout or ''}{exc.stderr or ''}"
    return done.returncode, done.stdout + done.stderr
