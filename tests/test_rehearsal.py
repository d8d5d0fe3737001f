"""Every shipped config, rehearsed as a user runs it: ``spcl run CONFIG --fast-dev-run``.

Each config runs every one of its stages (two iterations each, a few images) with its real
architecture and widths, on dataset trees in the real GTA5, SYNTHIA, Synscapes and Cityscapes
layouts and with a weight file in the official layout its ``model.pretrained`` names (a URL is
served from a torch hub cache, as after a download; a required file is passed as a user passes
it). What is shrunk for the CI budget, and by how much: every spatial size ÷ 16 (dataset files,
``data.*.size``, crops, ``evaluate.slide``, the pseudo-label weight's cropped rows, MIC's mask
blocks) and rare-class pixel thresholds ÷ 256 (areas); at ÷ 8 the rehearsals took 13 minutes of
an idle CI run, at ÷ 16 about half (docs/shipped_configs.md). A shipped config whose dataset kind or
weight layout has no generator here fails: a config no rehearsal runs is not shipped.
"""

from __future__ import annotations

import pytest
import torch

from rehearsal_world import SCALE, SHIPPED, STAGE_LINE, Rehearsal
from spcl.cli import main
from spcl.config import load_config
from spcl.pipeline import plan

THREADS = 2  # the big models run faster on both cores (conftest sets one)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    return Rehearsal(tmp_path_factory.mktemp("rehearsal"), scale=SCALE)


def rehearse(
    name: str, rehearsal: Rehearsal, extra: list[str], monkeypatch, capsys
) -> tuple[int, str]:
    """``spcl run NAME ... --fast-dev-run`` in this process; (exit status, its output)."""
    overrides = rehearsal.overrides(name, extra)
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
    ran = [(stage, ok) for stage, ok, _seconds in STAGE_LINE.findall(output)]
    assert ran == [(s, "OK") for s in wanted], output[-3000:]
    assert "fast dev run passed" in output


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_runs_every_stage(name: str, rehearsal, monkeypatch, capsys) -> None:
    status, output = rehearse(name, rehearsal, [], monkeypatch, capsys)
    check_every_stage_ran(name, [], status, output)


OTHER_LAYOUTS = {  # official weight layouts no shipped config names, on a config they fit (its
    # first stage only: the layout is what is checked; the config's other stages ran above)
    "coco_init": (
        "gta5_to_cityscapes_daformer_dlv2",
        "DeepLab_resnet_pretrained_init.pth",
        ["run.stages=[online]"],
    ),
    "mit_b0": (
        "gta5_to_cityscapes_daformer_mitb5",
        "mit_b0.pth",
        ["model.name=daformer_mit_b0", "run.stages=[online]"],
    ),
    "dinov2_registers": (
        "gta5_to_cityscapes_vfmuda_vitb14",
        "dinov2_vitb14_reg4_pretrain.pth",
        ["model.name=dinov2_vitb14_reg", "run.stages=[online]"],
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
