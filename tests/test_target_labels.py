"""Few target labels: which images are labelled (share, list, errors), their CE term in every
training stage, the online stage's source-only baseline, and that evaluation never scores them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from spcl.base import ConfigError, MissingFileError
from spcl.config import load_config
from spcl.context import open_run
from spcl.data.target_labels import (
    check_kept_out,
    draw_fraction,
    drawn_count,
    select_from_list,
)
from spcl.engine.loop import step_terms
from spcl.experiments.rows import QUICK_OVERRIDES
from spcl.pipeline import prepare_data, run_pipeline
from spcl.stages import online, warmup
from spcl.stages.target_labels import LABELLED_TERM, check_target_labels
from spcl.stages.training import train
from tiny import tiny_warmup

# --- the selection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "total", "count"),
    [
        (1 / 16, 300, 19),  # 18.75 → 19
        (1 / 4, 300, 75),
        (0.5, 3, 2),  # 1.5: half rounds up
        (0.25, 10, 3),  # 2.5 → 3
        (0.01, 10, 1),  # at least one image
        (1.0, 7, 7),
        (0.0, 10, 0),
    ],
)
def test_a_share_labels_round_half_up_at_least_one(fraction, total, count) -> None:
    assert drawn_count(fraction, total) == count
    assert len(draw_fraction(total, fraction, seed=0)) == count


def test_the_draw_is_reproducible_and_its_own_seed_decides() -> None:
    first = draw_fraction(300, 1 / 16, seed=0)
    assert first == draw_fraction(300, 1 / 16, seed=0) == sorted(set(first))
    assert first != draw_fraction(300, 1 / 16, seed=1)
    assert all(0 <= i < 300 for i in first)


def _split(root: Path, names: list[str]) -> tuple[list[Path], list[str], Path]:
    images = [root / "images" / f"{n}.png" for n in names]
    return images, names, root


def test_a_list_names_images_by_name_file_or_path(tmp_path: Path) -> None:
    train = _split(tmp_path / "train", ["a", "b", "c", "d"])
    listed = tmp_path / "labelled.txt"
    listed.write_text("# my labelled frames\nd\n\nb.png\nimages/a.png\nd\n")
    assert select_from_list(listed, "key", train) == [0, 1, 3]


def test_list_errors_name_the_file_the_line_and_the_image(tmp_path: Path) -> None:
    train = _split(tmp_path / "train", ["a", "b"])
    val = _split(tmp_path / "val", ["v1", "v2"])
    listed = tmp_path / "labelled.txt"
    with pytest.raises(MissingFileError, match=r"the_key: no such file: .*labelled\.txt"):
        select_from_list(listed, "the_key", train, val)
    listed.write_text("a\nzebra\n")
    with pytest.raises(ConfigError, match=r"labelled\.txt line 2: 'zebra' is not an image of"):
        select_from_list(listed, "the_key", train, val)
    listed.write_text("a\nv2\n")
    with pytest.raises(ConfigError, match=r"line 2 names 'v2', an image of the evaluation split"):
        select_from_list(listed, "the_key", train, val)
    listed.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match=r"names no image"):
        select_from_list(listed, "the_key", train, val)


def test_an_evaluation_split_with_a_labelled_image_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    check_kept_out([a], [b], "the val split")
    with pytest.raises(ConfigError, match=r"the val split holds 1 of the labelled .*a\.png"):
        check_kept_out([a], [b, a], "the val split")


# --- in the stages --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny pair and a finished 2-step source-only warm-up."""
    return tiny_warmup(tmp_path_factory.mktemp("labels"), seed=5, n_train=8)


def _terms(world: dict, tmp_path: Path, module: Any, *overrides: str) -> tuple[dict, dict]:
    """One step of a stage's setup: its terms (after a backward of their sum) and weights."""
    config = load_config("demo", [*world["overrides"], *overrides, f"run.out={tmp_path}"])
    with open_run(config) as ctx:
        stage = module.setup(ctx, tmp_path / "stage", {"warmup": world["warmup"]})
        terms = step_terms(stage.step(0))
        sum(terms[k] * w for k, w in stage.weights.items()).backward()
        grads = [p.grad for p in stage.state["model"].parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        return terms, {"weights": dict(stage.weights), "state": set(stage.state)}


@pytest.mark.parametrize("module", [warmup, online], ids=["warmup", "online"])
def test_labelled_target_images_add_a_ce_term(world, tmp_path: Path, module) -> None:
    plain, before = _terms(world, tmp_path / "a", module)
    assert LABELLED_TERM not in plain and LABELLED_TERM not in before["weights"]
    few = ("data.target_labels.fraction=0.25", "data.target_labels.weight=0.5")
    terms, after = _terms(world, tmp_path / "b", module, *few)
    assert after["weights"] == {**before["weights"], LABELLED_TERM: 0.5}
    assert "target_labelled" in after["state"]  # the stream resumes with the stage
    assert float(terms[LABELLED_TERM].detach()) > 0 and terms[LABELLED_TERM].requires_grad
    for name in plain:  # the stage's own terms are computed as before, draws included
        assert torch.equal(terms[name].detach(), plain[name].detach()), name


def test_the_online_source_only_baseline_trains_on_source_alone(world, tmp_path: Path) -> None:
    terms, got = _terms(world, tmp_path, online, "online.source_only=true")
    assert set(terms) == set(got["weights"]) == {"seg"}
    labelled, got = _terms(world, tmp_path / "l", online, "online.source_only=true",
                           "data.target_labels.fraction=0.25")  # fmt: skip
    assert set(labelled) == set(got["weights"]) == {"seg", LABELLED_TERM}


def test_the_run_refuses_to_evaluate_on_labelled_images(world, tmp_path: Path) -> None:
    same = ("data.target_val.split=train", "data.target_labels.fraction=0.25")
    config = load_config("demo", [*world["overrides"], *same, f"run.out={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data.target_val .*holds 2 of the labelled target"):
        check_target_labels(config, evaluates=True)
    assert len(check_target_labels(config, evaluates=False)) == 2  # 0.25 × 8 training images
    with open_run(config) as ctx, pytest.raises(ConfigError, match=r"data\.target_val"):
        prepare_data(ctx)  # the run stops before any stage trains


def test_a_list_naming_a_val_image_stops_the_run(world, tmp_path: Path) -> None:
    val = sorted((world["data"] / "target" / "images" / "val").glob("*.png"))
    listed = tmp_path / "labelled.txt"
    listed.write_text(f"{val[0].name}\n")
    extra = (f"data.target_labels.list_file={listed}",)
    config = load_config("demo", [*world["overrides"], *extra, f"run.out={tmp_path}"])
    with open_run(config) as ctx, pytest.raises(ConfigError, match=r"labelled\.txt line 1 names"):
        prepare_data(ctx)


@pytest.mark.slow
def test_every_training_stage_of_a_run_trains_on_the_labels(world, tmp_path: Path) -> None:
    roots = [f"data.{d}.root={world['data']}" for d in ("source", "target", "target_val")]
    stages = "run.stages=[warmup, prototypes, pseudo_labels, adapt, pseudo_labels_2, self_train, online, evaluate]"  # noqa: E501
    overrides = [*QUICK_OVERRIDES, *roots, "run.progress=false", "data.synthetic.generate=false"]
    overrides += ["online.init=warmup", "data.target_labels.fraction=0.5", stages]
    config = load_config("demo", [*overrides, f"run.out={tmp_path}"])
    with open_run(config) as ctx:
        run_pipeline(ctx)
    log = (tmp_path / "log.txt").read_text()
    for tag in ("warmup", "adapt", "self_train", "online"):
        assert f"[{tag}] 4 labelled target images join training as '{LABELLED_TERM}'" in log
        lines = [x for x in log.splitlines() if f"[{tag}] iteration" in x]
        assert lines and all(f"{LABELLED_TERM}=" in x for x in lines), tag


def _train_to(world: dict, out: Path, stop: int) -> dict[str, torch.Tensor]:
    """Build the warm-up with labels afresh (as a new process would) and train it to ``stop``."""
    steps = ["warmup.optim.max_iter=4", f"warmup.optim.stop_iter={stop}", "run.ckpt_every=2"]
    few = [*steps, "data.target_labels.fraction=0.5", "warmup.optim.batch_size=2"]
    config = load_config("demo", [*world["overrides"], *few, f"run.out={out}"])
    with open_run(config) as ctx:
        stage = warmup.setup(ctx, out / "01_warmup", {})
        train(ctx, out / "01_warmup", stage)
        return {k: v.clone() for k, v in stage.state["model"].state_dict().items()}


def test_a_resumed_stage_draws_the_labelled_batches_an_uninterrupted_one_draws(
    world, tmp_path: Path
) -> None:
    straight = _train_to(world, tmp_path / "a", 4)
    _train_to(world, tmp_path / "b", 2)  # stops after its checkpoint at iteration 2
    resumed = _train_to(world, tmp_path / "b", 4)
    assert "resumed from" in (tmp_path / "b" / "log.txt").read_text()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
