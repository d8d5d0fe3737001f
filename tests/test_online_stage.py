"""The online stage: which terms each switch computes, the EMA teacher after a step, the contrast
start, and kill -9 + resume with the teacher bit-identical (slow)."""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from spcl.base import IGNORE_INDEX
from spcl.config import load_config
from spcl.context import open_run
from spcl.data.lists import to_tensor
from spcl.data.synthetic import generate_pair
from spcl.engine.loop import step_terms, weighted_total
from spcl.experiments.rows import QUICK_OVERRIDES
from spcl.stages import online
from spcl.stages.training import after_step_hooks, write_outputs
from tiny import tiny_warmup


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny pair and a finished 2-step source-only warm-up."""
    return tiny_warmup(tmp_path_factory.mktemp("online"), seed=4, n_train=4)


def _steps(warm: dict, tmp_path: Path, steps: int, *overrides: str) -> dict:
    """Build the online stage (its setup) and take ``steps`` plain steps with its hooks,
    recording the terms, the weights, the teacher before and after, and the student."""
    config = load_config("demo", [*warm["overrides"], *overrides, f"run.out={tmp_path}"])
    with open_run(config) as ctx:
        stage = online.setup(ctx, tmp_path / "07_online", {"warmup": warm["warmup"]})
        got: dict[str, Any] = {"terms": [], "weights": dict(stage.weights)}
        got["teacher_0"] = copy.deepcopy(stage.state["teacher"].state_dict())
        hooks = after_step_hooks(ctx, stage)
        for done in range(1, steps + 1):
            for opt in stage.optimizers:
                opt.zero_grad()
            terms = step_terms(stage.step(done - 1))
            weighted_total(terms, stage.weights).backward()
            for opt in stage.optimizers:
                opt.step()
            for schedule in stage.schedulers:
                schedule.step()
            got["student"] = copy.deepcopy(stage.state["model"].state_dict())
            for hook in hooks:
                hook(done)
            got["terms"].append({k: float(v.detach()) for k, v in terms.items()})
        got["teacher"] = stage.state["teacher"].state_dict()
    return got


CONTRAST_NOW = "online.contrast.start_iter=0"  # terms with a gradient at the first step


def _one_step_gradients(warm: dict, tmp_path: Path, *overrides: str) -> tuple[list, list]:
    """One online step through its parts, each part's weighted sum backpropagated as the loop
    does: (the term names of each part, the student's gradients)."""
    config = load_config("demo", [*warm["overrides"], *overrides, f"run.out={tmp_path}"])
    with open_run(config) as ctx:
        stage = online.setup(ctx, tmp_path / "07_online", {"warmup": warm["warmup"]})
        names = []
        result = stage.step(0)  # a mapping (joint), or the parts one by one (per pass)
        for part in [result] if isinstance(result, Mapping) else result:
            names.append(sorted(part))
            weighted = {k: w for k, w in stage.weights.items() if k in part}
            weighted_total(part, weighted).backward()
        model = stage.state["model"]
        return names, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    ("overrides", "parts"),
    [
        (("online.masking.enabled=true",), [["seg"], ["mix"], ["mask"]]),
        (("data.target_labels.fraction=0.5",), [["seg"], ["mix"], ["tgt_gt"]]),  # few labels
        (  # the source contrast needs the source pass's features: it waits for them
            ("online.contrast.source=true", "online.contrast.target=true", CONTRAST_NOW),
            [["mix"], ["cl_src", "cl_tgt", "seg"]],
        ),
        (  # the target contrast reuses the self-training pass's features
            ("online.contrast.target=true", "online.mix.enabled=false", CONTRAST_NOW),
            [["seg"], ["cl_tgt", "tgt"]],
        ),
    ],
)
def test_per_pass_backward_gives_the_joint_gradient_one_pass_at_a_time(
    warm: dict, tmp_path: Path, overrides: tuple[str, ...], parts: list[list[str]]
) -> None:
    joint_parts, joint = _one_step_gradients(warm, tmp_path / "joint", *overrides)
    names, per_pass = _one_step_gradients(
        warm, tmp_path / "per_pass", *overrides, "online.backward=per_pass"
    )
    assert joint_parts == [sorted({n for part in parts for n in part})]  # one part by default
    assert names == parts
    assert len(per_pass) == len(joint) > 0
    for a, b in zip(joint, per_pass, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("overrides", "terms"),
    [
        ((), {"seg", "mix"}),
        (("online.mix.enabled=false",), {"seg", "tgt"}),
        (("online.masking.enabled=true",), {"seg", "mix", "mask"}),
        (
            ("online.contrast.source=true", "online.contrast.target=true"),
            {"seg", "mix", "cl_src", "cl_tgt"},
        ),
        (("online.contrast.target=true", "online.mix.enabled=false"), {"seg", "tgt", "cl_tgt"}),
        *(
            (
                (
                    "online.contrast.source=true",
                    "online.contrast.target=true",
                    "online.contrast.statistics=cumulative",
                    f"online.contrast.loss={loss}",
                    "online.contrast.labels=ratio",
                    "online.contrast.regularizer=1.0",
                    "online.contrast.augment_source=true",
                ),
                {"seg", "mix", "cl_src", "cl_tgt"},
            )
            for loss in ("proto", "dist", "bank")
        ),
    ],
)
def test_each_switch_computes_its_terms(
    warm, tmp_path: Path, overrides: tuple[str, ...], terms: set[str]
) -> None:
    got = _steps(warm, tmp_path, 1, *overrides, "online.contrast.start_iter=0")
    assert set(got["terms"][0]) == terms == set(got["weights"])
    assert all(torch.isfinite(torch.tensor(v)) for v in got["terms"][0].values())


def test_teacher_is_the_ema_of_the_student_after_each_step(warm, tmp_path: Path) -> None:
    got = _steps(warm, tmp_path, 1, "online.teacher.alpha=0.99")
    # after step 1: α_1 = min(1 − 1/2, 0.99) = 0.5, so θ_T = (θ_T0 + θ_S1) / 2 for parameters;
    # DAFormer leaves buffers (BatchNorm statistics) out of the average
    params = {name for name, _ in _model(warm).named_parameters()}
    for key, value in got["teacher"].items():
        if key in params:
            expected = 0.5 * got["teacher_0"][key] + 0.5 * got["student"][key]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
    assert any(
        not torch.equal(got["teacher"][k], got["student"][k]) for k in params
    )  # the teacher is not the student


def _model(warm: dict) -> torch.nn.Module:
    from spcl.models.files import load_model_file

    return load_model_file(warm["warmup"])[0]


def test_contrast_terms_are_zero_before_the_start_iteration(warm, tmp_path: Path) -> None:
    both = ("online.contrast.source=true", "online.contrast.target=true")
    # weight 1 everywhere: a 2-step warm-up is confident nowhere, and with DAFormer's quality
    # weight q = 0 no target pixel would take part
    both += ("online.pseudo.weight=none",)
    got = _steps(warm, tmp_path, 3, *both, "online.contrast.start_iter=2")
    values = [(t["cl_src"], t["cl_tgt"]) for t in got["terms"]]
    assert values[0] == values[1] == (0.0, 0.0)  # schedule iterations 0 and 1
    assert all(v > 0 for v in values[2])  # from iteration 2: ≈ ln K at the reference scale


def test_the_prototype_pass_leaves_the_teachers_batchnorm_statistics(warm, tmp_path: Path) -> None:
    # the teacher's running statistics come from its clean target batches alone: the extra pass
    # on source images that feeds the prototypes must not pull them toward the source
    plain = _steps(warm, tmp_path / "plain", 1)  # one step: same teacher weights
    contrast = ("online.contrast.source=true", "online.contrast.start_iter=0")
    with_bank = _steps(warm, tmp_path / "bank", 1, *contrast)
    stats = [k for k in plain["teacher"] if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:  # the students differ (one more loss term): compare buffers only
        torch.testing.assert_close(with_bank["teacher"][key], plain["teacher"][key], rtol=0, atol=0)


def test_sepico_statistics_are_checkpointed_checked_across_ranks_and_fed_each_step(
    warm, tmp_path: Path
) -> None:
    sepico = (
        "online.contrast.source=true",
        "online.contrast.statistics=cumulative",
        "online.contrast.loss=bank",
        "online.contrast.memory_length=3",
        "online.contrast.start_iter=0",
    )
    config = load_config("demo", [*warm["overrides"], *sepico, f"run.out={tmp_path}"])
    with open_run(config) as ctx:
        stage = online.setup(ctx, tmp_path / "07_online", {"warmup": warm["warmup"]})
        statistics = stage.state["statistics"]
        assert "bank" not in stage.state
        assert [a.module for a in stage.agree] == [stage.state["teacher"], statistics]
        assert tuple(statistics.bank.shape[:2]) == (ctx.config.data.num_classes, 3)
        step_terms(stage.step(0))
        assert int(statistics.count.sum()) > 0  # the teacher's source pixels, from iteration 0
        assert int(statistics.filled.max()) == 2  # the zero vector and this batch's mean


def test_augment_source_gives_the_student_a_strongly_augmented_source_batch(
    warm, tmp_path: Path
) -> None:
    plain = _steps(warm, tmp_path / "plain", 1)
    augmented = _steps(warm, tmp_path / "aug", 1, "online.contrast.augment_source=true")
    assert augmented["terms"][0]["seg"] != plain["terms"][0]["seg"]  # same weights, other input


def test_dist_and_bank_contrast_need_cumulative_statistics() -> None:
    from spcl.base import ConfigError

    with pytest.raises(ConfigError, match=r"contrast\.statistics: cumulative"):
        load_config(
            "demo",
            [
                "online.contrast.source=true",
                "online.contrast.start_iter=0",
                "online.contrast.loss=dist",
            ],
        )


def test_no_weight_and_no_ema_switches_reach_the_step(warm, tmp_path: Path) -> None:
    got = _steps(warm, tmp_path, 1, "online.pseudo.weight=none", "online.teacher.alpha=0")
    for key, value in got["teacher"].items():  # α = 0: the teacher is the student
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(value, got["student"][key], rtol=0, atol=0)


def test_the_teacher_handed_on_is_validated_checked_and_written_as_model_pth(
    warm, tmp_path: Path
) -> None:
    config = load_config(
        "demo", [*warm["overrides"], "online.hand_on=teacher", f"run.out={tmp_path}"]
    )
    out = tmp_path / "07_online"
    with open_run(config) as ctx:
        stage = online.setup(ctx, out, {"warmup": warm["warmup"]})
        assert stage.handed_on is stage.state["teacher"]
        assert [a.module for a in stage.agree] == [stage.state["teacher"]]
        with torch.no_grad():  # the student moves away from the teacher copied from it
            next(stage.state["model"].parameters()).add_(1.0)
        out.mkdir(exist_ok=True)
        assert write_outputs(ctx, out, stage) == out / "model.pth"
    assert (out / "model.pth").read_bytes() == (out / "teacher.pth").read_bytes()
    assert (out / "student.pth").read_bytes() != (out / "teacher.pth").read_bytes()


def _command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spcl",
        "run",
        "demo",
        *QUICK_OVERRIDES,
        *(f"data.{d}.root={data}" for d in ("source", "target", "target_val")),
        "run.stages=[warmup, online, evaluate]",
        "warmup.adversarial=false",
        "online.init=warmup",
        "online.masking.enabled=true",
        "online.contrast.source=true",
        "online.contrast.target=true",
        "online.optim.max_iter=12",
        "online.optim.stop_iter=12",
        "run.deterministic=true",
        "run.progress=false",
        "run.ckpt_every=1",
        f"run.out={out}",
    ]


@pytest.mark.slow
def test_kill_9_in_the_online_stage_then_rerun_is_bit_identical(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_pair(data, seed=5, n_train=16, n_val=6, size=(64, 128), preview=False, progress=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_command(data, straight), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _command(data, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed / "07_online" / "checkpoint.pth"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if torch.load(checkpoint, weights_only=True)["_loop"]["iteration"] >= 5:
                break
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "07_online" / "done.json").exists()
    subprocess.run(_command(data, killed), check=True, env=env, capture_output=True)
    assert "[online] resumed from" in (killed / "log.txt").read_text()
    for name in ("model.pth", "teacher.pth"):
        a = torch.load(straight / "07_online" / name, weights_only=True)["model"]
        b = torch.load(killed / "07_online" / name, weights_only=True)["model"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after resume"


def test_only_the_source_crop_limits_its_top_class(warm, tmp_path: Path, monkeypatch) -> None:
    from spcl.stages import builders

    shares: list[float] = []
    real = builders.build_train_transform

    def spy(**kwargs: Any) -> Any:
        shares.append(kwargs["crop_max_share"])
        return real(**kwargs)

    monkeypatch.setattr(builders, "build_train_transform", spy)
    got = _steps(warm, tmp_path, 1, "online.source_crop_max_share=0.75")
    assert shares == [0.75, 1.0]  # the source stream, then the target stream
    assert all(torch.isfinite(torch.tensor(v)) for v in got["terms"][0].values())


def test_rare_class_crops_need_their_class_when_the_ratio_is_set(
    warm, tmp_path: Path, monkeypatch
) -> None:
    from spcl.stages import builders

    datasets: list[Any] = []
    real = builders.train_loader

    def spy(ctx: Any, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        datasets.append(dataset)
        return real(ctx, dataset, *args, **kwargs)

    monkeypatch.setattr(builders, "train_loader", spy)
    extra = ("data.source.rcs_min_pixels=6", "data.source.rcs_min_crop_ratio=0.5")
    got = _steps(warm, tmp_path, 1, "online.source_sampling=rare_class", *extra)
    assert [d.min_class_pixels for d in datasets] == [3.0]  # the source stream: 6 × 0.5
    assert all(torch.isfinite(torch.tensor(v)) for v in got["terms"][0].values())
    assert [(d.joint_tries, d.max_share) for d in datasets] == [(0, 1.0)]
    datasets.clear()  # VFM-UDA's joint rule: the dataset checks the share, not the crop
    shares: list[float] = []
    real_transform = builders.build_train_transform
    monkeypatch.setattr(
        builders,
        "build_train_transform",
        lambda **kw: shares.append(kw["crop_max_share"]) or real_transform(**kw),
    )
    joint = ("data.source.rcs_joint_tries=20", "online.source_crop_max_share=0.75")
    _steps(warm, tmp_path / "joint", 1, "online.source_sampling=rare_class", *extra, *joint)
    assert [(d.joint_tries, d.max_share) for d in datasets] == [(20, 0.75)]
    assert shares == [1.0, 1.0]  # neither the source's nor the target's crop retries


@pytest.mark.parametrize("regenerate", [True, False])
def test_the_class_balanced_crop_cuts_whole_target_images(
    warm, tmp_path: Path, monkeypatch, regenerate: bool
) -> None:
    from spcl.stages import online_step

    seen: list[tuple[int, ...]] = []
    teacher_inputs: list[tuple[int, ...]] = []
    real = online_step.class_balanced_corners

    def spy(labels: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(tuple(labels.shape))
        return real(labels, *args, **kwargs)

    real_labels = online_step._pseudo_labels

    def labels_spy(parts: Any, images: torch.Tensor, **kwargs: Any) -> Any:
        teacher_inputs.append(tuple(images.shape[-2:]))
        return real_labels(parts, images, **kwargs)

    monkeypatch.setattr(online_step, "class_balanced_corners", spy)
    monkeypatch.setattr(online_step, "_pseudo_labels", labels_spy)
    got = _steps(
        warm,
        tmp_path,
        2,
        "online.pseudo.class_balanced_crop=true",
        f"online.pseudo.regenerate={str(regenerate).lower()}",
        "online.crop=[32, 48]",
        "data.target.size=[64, 128]",
        "online.masking.enabled=true",
    )
    assert seen == [(2, 64, 128)] * 2  # the teacher's labels of the whole target images
    per_step = [(64, 128), (32, 48)] if regenerate else [(64, 128)]
    assert teacher_inputs == per_step * 2  # then, regenerating, of the crops
    assert all(torch.isfinite(torch.tensor(v)) for t in got["terms"] for v in t.values())


def test_the_class_balanced_crop_needs_a_crop_and_a_target_size(warm, tmp_path):
    from spcl.base import ConfigError

    cbc = "online.pseudo.class_balanced_crop=true"
    for extra, message in (
        (("online.crop=[]",), "needs online.crop"),
        (("online.crop=[32, 48]", "data.target.size=[]"), "needs data.target.size"),
        (("online.crop=[32, 256]", "data.target.size=[64, 128]"), "larger than data.target.size"),
    ):
        with pytest.raises(ConfigError, match=message):
            _steps(warm, tmp_path, 1, cbc, *extra)


def test_the_random_scale_rescales_both_streams_and_the_pseudo_label_margins(
    warm, tmp_path: Path
) -> None:
    """VFM-UDA++'s resize × U(0.9, 1.1) (``online.scale_range``), here pinned at 0.5 with whole
    images: source images and labels, target images and their margin mask all come at half size."""
    config = load_config(
        "demo",
        [
            *warm["overrides"],
            "online.scale_range=[0.5, 0.5]",
            "online.crop=[]",
            "online.pseudo.margins=[8, 16, 8, 8]",
            f"run.out={tmp_path}",
        ],
    )
    with open_run(config) as ctx:
        stage = online.setup(ctx, tmp_path / "07_online", {"warmup": warm["warmup"]})
        src, tgt = next(stage.state["source"]), next(stage.state["target"])
    assert src["image"].shape[-2:] == (32, 64) and src["label"].shape[-2:] == (32, 64)
    assert tgt["image"].shape[-2:] == (32, 64)
    valid = tgt["pseudo_valid"][0]  # the margins of the 64x128 image, halved with it
    assert not valid[:4].any() and not valid[-8:].any() and valid[4:24, 4:60].all()


@pytest.mark.parametrize("pad", ["center", "bottom_right"])
def test_an_image_smaller_than_the_crop_is_padded_where_online_pad_says(
    warm, tmp_path: Path, pad: str
) -> None:
    """``online.pad``: the demo's 64x128 images at scale 0.5 (32x64) in a 48x80 crop are padded
    by 16 rows and 16 columns, half on each side (``center``) or all to the right and below
    (``bottom_right``, VFM-UDA++): source labels ignored there, target images black and their
    margin mask invalid there."""
    config = load_config(
        "demo",
        [
            *warm["overrides"],
            "online.scale_range=[0.5, 0.5]",
            "online.crop=[48, 80]",
            "online.pseudo.margins=[0, 0, 0, 0]",
            f"online.pad={pad}",
            "online.hflip=false",  # a flip after the crop moves right-hand padding to the left
            f"run.out={tmp_path}",
        ],
    )
    with open_run(config) as ctx:
        stage = online.setup(ctx, tmp_path / "07_online", {"warmup": warm["warmup"]})
        src, tgt = next(stage.state["source"]), next(stage.state["target"])
    top, left = (8, 8) if pad == "center" else (0, 0)
    inside = (slice(None), slice(top, top + 32), slice(left, left + 64))
    padded = torch.ones(48, 80, dtype=torch.bool)
    padded[inside[1:]] = False
    label, image, valid = src["label"], tgt["image"], tgt["pseudo_valid"]
    assert label.shape[-2:] == image.shape[-2:] == (48, 80)
    assert (label[:, padded] == IGNORE_INDEX).all() and (label[inside] != IGNORE_INDEX).any()
    black = to_tensor(np.zeros((1, 1, 3), np.uint8)).view(1, 3, 1)  # 0 after normalisation
    inner = image[:, :, inside[1], inside[2]].flatten(2)
    assert (image[:, :, padded] == black).all() and (inner != black).any()
    assert not valid[:, padded].any() and valid[inside].all()


def test_the_random_scale_is_checked_when_the_config_loads() -> None:
    from spcl.base import ConfigError

    with pytest.raises(ConfigError, match="low <= high"):
        load_config("demo", ["online.scale_range=[1.1, 0.9]"])
    with pytest.raises(ConfigError, match=r"set online.scale_range: \[\]"):
        load_config(
            "demo", ["online.scale_range=[0.9, 1.1]", "online.pseudo.class_balanced_crop=true"]
        )


def test_the_torchvision_mix_augment_jitters_the_target_then_the_mixed_and_masked_images(
    warm, tmp_path: Path, monkeypatch
) -> None:
    """VFM-UDA(++) (``online.mix.augment: torchvision``): the target weakly jittered before it is
    mixed (``random_aug_weak``), the mixed and the masked images by ``random_aug_uda``; DACS's
    batch-wide augmentation never runs."""
    from spcl.method.vfm_augment import WEAK_SOURCE, uda_augment_recipe
    from spcl.stages import online_step

    calls: list[tuple[Any, torch.Tensor]] = []
    real = online_step.torchvision_augment

    def spy(images: torch.Tensor, generator: Any, recipe: Any, mean: Any, std: Any):
        out = real(images, generator, recipe, mean, std)
        calls.append((recipe, out))
        return out

    pasted: list[torch.Tensor] = []
    real_mix = online_step.mix_batch

    def mix_spy(mask: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, *args: Any) -> Any:
        pasted.append(tgt)
        return real_mix(mask, src, tgt, *args)

    def dacs(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("DACS's augmentation ran")

    monkeypatch.setattr(online_step, "torchvision_augment", spy)
    monkeypatch.setattr(online_step, "mix_batch", mix_spy)
    monkeypatch.setattr(online_step, "strong_augment", dacs)
    overrides = ("online.mix.augment=torchvision", "online.masking.enabled=true")
    got = _steps(warm, tmp_path, 1, *overrides)
    mix = load_config("demo", list(overrides)).online.mix
    uda = uda_augment_recipe(mix.color_jitter, mix.color_jitter_p, mix.blur)
    assert [recipe for recipe, _ in calls] == [WEAK_SOURCE, uda, uda]
    assert pasted[0] is calls[0][1]  # the mix pastes source classes onto the jittered target
    assert set(got["terms"][0]) >= {"seg", "mix", "mask"}
    assert all(math.isfinite(v) for v in got["terms"][0].values())
