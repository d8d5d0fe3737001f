"""Every shipped config, rehearsed as a user runs it: ``spcl run CONFIG --fast-dev-run``.

Each config runs every one of its stages (two iterations each, a few images) with its real
architecture and widths, on dataset trees in the real GTA5, SYNTHIA, Synscapes and Cityscapes
layouts and with a weight file in the official layout its ``model.pretrained`` names (a URL is
served from a torch hub cache, as after a download; a required file is passed as a user passes
it). What is shrunk for the CI budget, and by how much: every spatial size ÷ 16 (dataset files,
``data.*.size``, crops, ``evaluate.slide``, the pseudo-label weight's cropped rows, MIC's mask
blocks) and rare-class pixel thresholds ÷ 256 (areas); the online batch is at most 2 images per
domain, without accumulation. Each rehearsal is a process of its own,
two at a time (docs/shipped_configs.md has the times). A shipped config whose dataset kind or
weight layout has no generator here fails: a config no rehearsal runs is not shipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from rehearsal_world import SCALE, SHIPPED, STAGE_LINE, Rehearsal, fast_dev_process
from spcl.config import load_config
from spcl.pipeline import plan

PROCESSES = 2  # rehearsals side by side, one thread each: most of one is single-threaded work
# (building and loading models, writing checkpoints), so two keep both cores busy
LONGEST_FIRST = ("vitl14", "_to_cityscapes.", "mitb5", "vitb14")  # start the long ones first


def _rank(key: str) -> int:
    return next(
        (i for i, part in enumerate(LONGEST_FIRST) if part in key + "."), len(LONGEST_FIRST)
    )


class Rehearsals:
    """Every selected rehearsal, started at once in a pool of :data:`PROCESSES` processes."""

    def __init__(self, world: Rehearsal, cases: dict[str, tuple[str, list[str]]]) -> None:
        env = {"TORCH_HOME": str(world.torch_home), "OMP_NUM_THREADS": "1"}
        env |= {"TMPDIR": str(world.root), "PYTHONUNBUFFERED": "1"}
        commands = {
            key: (name, world.overrides(name, extra)) for key, (name, extra) in cases.items()
        }
        self.pool = ThreadPoolExecutor(PROCESSES)  # weight files are written above, not here
        self.futures: dict[str, Future] = {
            key: self.pool.submit(fast_dev_process, name, overrides, env=env, cwd=world.root)
            for key, (name, overrides) in sorted(commands.items(), key=lambda kv: _rank(kv[0]))
        }

    def result(self, key: str) -> tuple[int, str]:
        return self.futures[key].result()


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


def _case(key: str, world: Rehearsal) -> tuple[str, list[str]]:
    """A rehearsal's config and extra overrides: a shipped config, or ``layout:CASE``."""
    if not key.startswith("layout:"):
        return key, []
    name, file_name, extra = OTHER_LAYOUTS[key.removeprefix("layout:")]
    path = world.weight_file(file_name, world.root / "weights")
    return name, [*extra, f"model.pretrained={path}"]


@pytest.fixture(scope="module")
def rehearsals(tmp_path_factory: pytest.TempPathFactory, request) -> Iterator[Rehearsals]:
    """The rehearsals of the tests selected in this session, started together."""
    world = Rehearsal(tmp_path_factory.mktemp("rehearsal"), scale=SCALE)
    keys = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is request.module and "name" in params:
            keys.append(params["name"])
        elif item.module is request.module and "case" in params:
            keys.append(f"layout:{params['case']}")
    begin = time.perf_counter()
    started = Rehearsals(world, {key: _case(key, world) for key in keys})
    print(f"rehearsals started after {time.perf_counter() - begin:.0f} s of set-up")
    yield started
    started.pool.shutdown(wait=True, cancel_futures=True)


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
def test_every_shipped_config_runs_every_stage(name: str, rehearsals: Rehearsals) -> None:
    status, output = rehearsals.result(name)
    check_every_stage_ran(name, [], status, output)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(OTHER_LAYOUTS))
def test_the_other_official_layouts_run_too(case: str, rehearsals: Rehearsals) -> None:
    name, _file, extra = OTHER_LAYOUTS[case]
    status, output = rehearsals.result(f"layout:{case}")
    check_every_stage_ran(name, extra, status, output)
