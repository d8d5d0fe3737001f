"""The bench: each row's switch changes what it claims, the new terms compute what they say, the
report holds every row, and a partial bench resumes with only what is missing.

Fast tests use a tiny synthetic pair and a 2-step warm-up made once per module; the quick bench
itself runs once, end to end, behind the ``slow`` marker.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spcl import cli
from spcl.base import UsageError
from spcl.config import config_to_dict, load_config
from spcl.context import open_run
from spcl.data.synthetic import generate_pair
from spcl.engine.checkpoint import clean_state_dict, load_state
from spcl.engine.distributed import RanksDivergedError
from spcl.engine.loop import step_terms, weighted_total
from spcl.experiments import bench, payload, report, rows, sharing
from spcl.experiments.rows import QUICK_OVERRIDES
from spcl.models.resnet import FrozenBatchNorm2d
from spcl.pipeline import run_pipeline, stage_fingerprints
from spcl.stages import adapt, evaluate, training
from spcl.stages.builders import domain_dataset
from spcl.stages.training import after_step_hooks
from tiny import TINY

IGNORE = 255


def _roots(data: Path) -> list[str]:
    return [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny pair and a run with warm-up, prototypes and pseudo-labels done."""
    root = tmp_path_factory.mktemp("bench")
    data = generate_pair(
        root / "data", seed=3, n_train=4, n_val=2, size=(64, 128), preview=False, progress=False
    )
    overrides = [*TINY, *_roots(data)]
    run_dir = root / "warm"
    stages = "run.stages=[warmup, prototypes, pseudo_labels]"
    config = load_config("demo", [*overrides, stages, f"run.out={run_dir}"])
    with open_run(config) as ctx:
        outputs = run_pipeline(ctx)
    return {"data": data, "overrides": overrides, "run": run_dir, "outputs": outputs}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "options":
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


SEPICO_ROW = {  # SePiCo's contrast as the bench's DistCL/BankCL rows run it (rows.SEPICO_CONTRAST)
    "warmup.adversarial": False,
    "online.contrast.source": True,
    "online.contrast.target": True,
    "online.contrast.start_iter": 0,
    "online.contrast.statistics": "cumulative",
    "online.contrast.regularizer": 1.0,
    "online.contrast.labels": "ratio",
}
EXPECTED_DIFFERENCES = {  # run → what differs from the spcl run (besides run.out, run.stages)
    "source_only": {"warmup.adversarial": False},
    "source_only_adabn": {"warmup.adversarial": False, "evaluate.adabn": True},
    "spcl": {},
    # the online runs: from the source-only warm-up, each one switch away from the control
    "online": {"warmup.adversarial": False},
    "online_mic": {"warmup.adversarial": False, "online.masking.enabled": True},
    # the contrast rows also start their terms at iteration 0 (rows.CONTRAST_FROM_START)
    "online_contrast_source": {
        "warmup.adversarial": False,
        "online.contrast.source": True,
        "online.contrast.start_iter": 0,
    },
    "online_contrast_target": {
        "warmup.adversarial": False,
        "online.contrast.target": True,
        "online.contrast.start_iter": 0,
    },
    "online_contrast": {
        "warmup.adversarial": False,
        "online.contrast.source": True,
        "online.contrast.target": True,
        "online.contrast.start_iter": 0,
    },
    "online_contrast_ratio": {
        "warmup.adversarial": False,
        "online.contrast.source": True,
        "online.contrast.target": True,
        "online.contrast.start_iter": 0,
        "online.contrast.labels": "ratio",
    },
    **{
        f"online_{loss}cl": {**SEPICO_ROW, "online.contrast.loss": loss}
        for loss in ("dist", "bank")
    },
    # the control: DistCL's passes, no gradient
    "online_distcl_weight0": {
        **SEPICO_ROW,
        "online.contrast.loss": "dist",
        "online.contrast.weight": 0.0,
    },
    "online_hrda": {
        "warmup.adversarial": False,
        "online.hrda.enabled": True,
        "online.hrda.detail_crop": [48, 96],
    },
    "online_no_mix": {"warmup.adversarial": False, "online.mix.enabled": False},
    "online_no_weight": {"warmup.adversarial": False, "online.pseudo.weight": "none"},
    "online_no_ema": {"warmup.adversarial": False, "online.teacher.alpha": 0.0},
    # the online recipe's own source-only run, and the online recipe with a few target labels
    "online_source_only": {"warmup.adversarial": False, "online.source_only": True},
    "online_labels_1_16": {"warmup.adversarial": False, "data.target_labels.fraction": 0.0625},
    "online_labels_1_4": {"warmup.adversarial": False, "data.target_labels.fraction": 0.25},
    "self_training_control": {
        "adapt.contrast_source": False,
        "adapt.contrast_target": False,
        "adapt.lambda_cl": 0.0,
        "adapt.target_ce": 1.0,
    },
    "spcl_source_only_contrast": {"adapt.contrast_target": False},
    "spcl_target_only_contrast": {"adapt.contrast_source": False},
    "oracle": {
        "warmup.adversarial": False,
        "data.source.options": {"domain": "target"},
        # the oracle's source is the target's domain section: its rare-class threshold is the
        # default (unused: the warm-up reads in data order)
        "data.source.rcs_min_pixels": 3000,
    },
    "ablate_tau": {"adapt.temperature": 0.1},
    "ablate_alpha": {"adapt.momentum": 0.9},
    "ablate_absent": {"adapt.absent_policy": "keep"},
    "ablate_cap": {"pseudo_labels.cap": 1.0},
    "ablate_lambda": {"adapt.lambda_cl": 0.1},
    "ablate_tau_lambda": {"adapt.temperature": 0.1, "adapt.lambda_cl": 0.1},
    "ablate_st_contrast": {
        "adapt.target_ce": 1.0,
        "adapt.temperature": 0.1,
        "adapt.lambda_cl": 0.1,
    },
    "ablate_bn": {"adapt.freeze_bn": True},  # the demo trains BN: the ablation freezes it
    "ablate_adabn_labels": {"pseudo_labels.adabn": False},  # the demo config has it on
}


def _bench_runs(base, ablate=()) -> tuple[list[rows.Run], list[rows.Row]]:
    """The runs and rows of a bench with ``ablate`` on ``base``, as ``run_seed`` makes them."""
    extra_rows, extra_runs = rows.ablation_rows(ablate, base)
    specs = [*(rows.ROWS[n] for n in rows.BENCH_ROWS), *extra_rows]
    return rows.runs_for(specs, base, extra_runs), specs


def _bench_configs(tmp_path: Path) -> dict[str, Any]:
    base_overrides = [*QUICK_OVERRIDES, *_roots(tmp_path)]
    runs, specs = _bench_runs(load_config("demo", base_overrides), tuple(rows.ABLATIONS))
    configs = {
        r.name: load_config("demo", r.all_overrides(base_overrides, tmp_path / r.name))
        for r in runs
    }
    return {
        "runs": runs,
        "rows": specs,
        "configs": configs,
        "base": load_config("demo", base_overrides),
    }


def test_each_run_changes_exactly_its_switches(tmp_path: Path) -> None:
    made = _bench_configs(tmp_path)
    flat = {name: _flat(config_to_dict(c)) for name, c in made["configs"].items()}
    reference = flat["spcl"]
    assert set(flat) == set(EXPECTED_DIFFERENCES)
    for name, values in flat.items():
        differs = {
            k: v
            for k, v in values.items()
            if v != reference[k] and k not in ("run.out", "run.stages")
        }
        assert differs == EXPECTED_DIFFERENCES[name], name
    base = _flat(config_to_dict(made["base"]))
    assert [k for k, v in reference.items() if v != base[k]] == ["run.out"]  # spcl = base
    stages = {name: c.run.stages for name, c in made["configs"].items()}
    assert stages["source_only"] == stages["oracle"] == ["warmup", "evaluate"]
    assert stages["spcl"][-2:] == ["self_train", "evaluate"]
    assert stages["self_training_control"] == list(rows.THROUGH_ADAPT)
    made_rows = {r.name: (r.run, r.stage) for r in made["rows"]}
    assert made_rows["spcl"] == ("spcl", "adapt")
    assert made_rows["adversarial_warmup"] == ("spcl", "warmup")
    assert made_rows["spcl_self_training"] == ("spcl", "self_train")


def test_runs_share_the_stages_they_truly_share(tmp_path: Path) -> None:
    prints = {n: stage_fingerprints(c) for n, c in _bench_configs(tmp_path)["configs"].items()}
    assert prints["source_only"]["warmup"] == prints["source_only_adabn"]["warmup"]
    assert prints["oracle"]["warmup"] != prints["source_only"]["warmup"]
    assert prints["spcl"]["warmup"] != prints["source_only"]["warmup"]
    for name in ("self_training_control", "spcl_target_only_contrast", "ablate_tau", "ablate_bn"):
        for stage in ("warmup", "prototypes", "pseudo_labels"):
            assert prints[name][stage] == prints["spcl"][stage], (name, stage)
        assert prints[name]["adapt"] != prints["spcl"]["adapt"], name
    cap = prints["ablate_cap"]
    assert cap["prototypes"] == prints["spcl"]["prototypes"]
    assert cap["pseudo_labels"] != prints["spcl"]["pseudo_labels"]


def test_share_links_only_a_matching_finished_stage(tmp_path: Path) -> None:
    config = load_config("demo", [*_roots(tmp_path), "run.stages=[warmup, evaluate]"])
    key = stage_fingerprints(config)["warmup"]
    good, stale, mine = tmp_path / "good", tmp_path / "stale", tmp_path / "mine"
    for donor, fingerprint in ((stale, "0" * 16), (good, key)):
        (donor / "01_warmup").mkdir(parents=True)
        done = {"fingerprint": fingerprint, "output": "model.pth"}
        (donor / "01_warmup" / "done.json").write_text(json.dumps(done))
        (donor / "01_warmup" / "model.pth").write_bytes(donor.name.encode())
    shared = sharing.share_done_stages(config, mine, [stale, good])
    assert shared == {"warmup": str(good)}
    linked = mine / "01_warmup" / "model.pth"
    assert linked.read_bytes() == b"good"
    assert linked.stat().st_ino == (good / "01_warmup" / "model.pth").stat().st_ino
    assert sharing.share_done_stages(config, mine, [good]) == {}  # already there


REAL_PAIR = [
    "data.source.kind=gta5",
    "data.source.root=/gta",
    "data.source.options={list_file: /gta/list.txt, missing_labels: skip}",
    "data.source.sampling=class_balanced",
    "data.target.kind=cityscapes",
    "data.target.root=/cs",
    "data.target.options={classes: 19}",
    "data.target_val.root=/cs",
]


def test_oracle_trains_on_the_target_split_with_the_target_reader() -> None:
    base = load_config(None, REAL_PAIR)
    runs, _ = _bench_runs(base)
    oracle = next(r for r in runs if r.name == "oracle")
    source = dataclasses.asdict(load_config(None, [*REAL_PAIR, *oracle.overrides]).data.source)
    # overrides merge into mappings: options only the source set fall back to the reader defaults
    expected_options = {"classes": 19, "list_file": None, "missing_labels": "error"}
    assert source == {**dataclasses.asdict(base.data.target), "options": expected_options}
    base.data.source.options["frames"] = 3
    with pytest.raises(ValueError, match="frames"):
        _bench_runs(base)


@pytest.mark.parametrize("pair", ["gta5_to_cityscapes", "synthia_to_cityscapes"])
def test_reference_configs_give_valid_runs(pair: str, tmp_path: Path) -> None:
    roots = ["data.source.root=/source", "data.target.root=/cs", "data.target_val.root=/cs"]
    base = load_config(pair, roots)
    runs, _ = _bench_runs(base, tuple(rows.ABLATIONS))
    configs = {r.name: load_config(pair, r.all_overrides(roots, tmp_path / r.name)) for r in runs}
    oracle = configs["oracle"].data
    assert oracle.source.kind == "cityscapes" and oracle.source.split == "train"
    assert dataclasses.asdict(oracle.source) == dataclasses.asdict(oracle.target)
    assert configs["ablate_bn"].adapt.freeze_bn is False  # the reference freezes BN: flipped
    assert configs["spcl"] == dataclasses.replace(base, run=configs["spcl"].run)


def test_parse_seeds_and_ablations() -> None:
    assert cli.parse_seeds("0, 1,2") == [0, 1, 2]
    assert cli.parse_ablations("all") == tuple(rows.ABLATIONS)
    assert cli.parse_ablations("cap,tau,cap") == ("cap", "tau")
    for bad in ("", "a,b", "1,1"):
        with pytest.raises(Exception, match="--seeds"):
            cli.parse_seeds(bad)
    with pytest.raises(Exception, match="valid: tau"):
        cli.parse_ablations("tau,nope")
    assert cli.parse_rows("oracle, online,oracle") == ("oracle", "online")
    for bad in ("", "online,nope"):
        with pytest.raises(Exception, match=r"--rows.*valid: source_only"):
            cli.parse_rows(bad)
    with pytest.raises(UsageError, match="--rows"):  # checked before anything runs
        bench.run_bench("unused", [0], quick=True, rows=("nope",))


# --- the adaptation step: which terms each row computes, and the target CE's value ---------------


def _naive_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over non-ignored pixels of log-sum-exp minus the labelled logit (numpy, float64)."""
    k = logits.shape[1]
    z = np.moveaxis(logits, 1, -1).reshape(-1, k).astype(np.float64)  # (pixels, K)
    y = labels.reshape(-1)
    keep = y != IGNORE
    z, y = z[keep], y[keep].astype(np.int64)
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float((lse - z[np.arange(len(y)), y]).mean()) if len(y) else 0.0


def _one_step(warm: dict[str, Any], tmp_path: Path, *overrides: str) -> dict:
    """Build the adapt stage (its setup), take its first step, then replay that step's batches."""
    config = load_config("demo", [*warm["overrides"], *overrides, f"run.out={tmp_path}"])
    with open_run(config) as ctx:
        stage = adapt.setup(ctx, tmp_path / "04_adapt", warm["outputs"])
        positions = {k: copy.deepcopy(stage.state[k].state_dict()) for k in ("source", "target")}
        terms = step_terms(stage.step(0))
        terms["loss"] = weighted_total(terms, stage.weights)
        for key, position in positions.items():
            stage.state[key].load_state_dict(position)
        return {
            "terms": {k: float(v.detach()) for k, v in terms.items()},
            "weights": dict(stage.weights),
            "batches": (next(stage.state["source"]), next(stage.state["target"])),
            "model": stage.state["model"],
        }


def test_control_step_has_target_ce_and_no_contrast(warm, tmp_path: Path) -> None:
    control = [f"adapt.{k}" for k in ("contrast_source=false", "contrast_target=false")]
    got = _one_step(warm, tmp_path, *control, "adapt.lambda_cl=0", "adapt.target_ce=1")
    terms = got["terms"]
    assert set(terms) == {"loss", "seg", "tgt_ce"}
    assert terms["loss"] == pytest.approx(terms["seg"] + terms["tgt_ce"], rel=1e-6)
    src, tgt = got["batches"]
    model = got["model"]
    with torch.no_grad():  # same batch, same train-mode BN statistics as the step's forward
        logits = model(torch.cat([src["image"], tgt["image"]])).logits[len(src["image"]) :]
    labels = tgt["label"]
    assert (labels == IGNORE).any() and (labels != IGNORE).any()  # thresholds dropped some pixels
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    assert terms["tgt_ce"] == pytest.approx(_naive_ce(up.numpy(), labels.numpy()), rel=1e-4)


@pytest.mark.parametrize(
    ("overrides", "terms"),
    [
        ((), {"loss", "seg", "cl_src", "cl_tgt"}),
        (("adapt.contrast_target=false",), {"loss", "seg", "cl_src"}),
        (("adapt.contrast_source=false",), {"loss", "seg", "cl_tgt"}),
    ],
)
def test_spcl_variants_compute_their_contrast_terms(
    warm, tmp_path: Path, overrides: tuple[str, ...], terms: set[str]
) -> None:
    got = _one_step(warm, tmp_path, *overrides)["terms"]
    assert set(got) == terms
    contrast = sum(v for k, v in got.items() if k.startswith("cl_"))
    assert got["loss"] == pytest.approx(got["seg"] + contrast, rel=1e-6)  # λ_cl = 1


def test_bn_ablation_freezes_batchnorm_in_adaptation(warm, tmp_path: Path) -> None:
    model = _one_step(warm, tmp_path, "adapt.freeze_bn=true")["model"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_adapt_checks_every_ranks_prototype_bank_before_each_checkpoint(
    warm, tmp_path: Path, monkeypatch
) -> None:
    # main checked the banks once, after the last checkpoint was written (a plain RuntimeError):
    # a divergence then left a checkpoint of diverged banks to resume from
    spreads = iter([0.0, 0.25])
    compared: list[nn.Module] = []

    def difference(module: nn.Module) -> float:  # stands in for the collective comparison
        compared.append(module)
        return next(spreads)

    monkeypatch.setattr(training, "module_difference_across_ranks", difference)
    config = load_config("demo", [*warm["overrides"], "run.ckpt_every=2", f"run.out={tmp_path}"])
    with open_run(config) as ctx:
        stage = adapt.setup(ctx, tmp_path / "04_adapt", warm["outputs"])
        two_ranks = dataclasses.replace(ctx, world=2)
        hooks = after_step_hooks(two_ranks, stage)
        for done in (1, 2, 3):  # checkpoints after steps 2 and 4 only
            for hook in hooks:
                hook(done)
        assert compared == [stage.state["bank"]]
        with pytest.raises(RanksDivergedError) as caught:
            for hook in hooks:
                hook(4)
    assert str(caught.value) == (
        "[adapt] iteration 4: the prototype banks of the 2 ranks differ (max difference 0.25); "
        "this iteration's checkpoint was not written, "
        f"{tmp_path / '04_adapt' / 'checkpoint.pth'} holds the last state they agreed on"
    )
    log = (tmp_path / "log.txt").read_text()
    assert "[adapt] iteration 2: prototype banks of 2 ranks: max difference 0\n" in log


# --- AdaBN at evaluation: only BatchNorm running statistics change -------------------------------


def test_evaluate_adabn_changes_only_batchnorm_statistics(warm, tmp_path: Path) -> None:
    weights = warm["outputs"]["warmup"]
    config = load_config("demo", [*warm["overrides"], "evaluate.adabn=true", f"run.out={tmp_path}"])
    with open_run(config) as ctx:
        model, adapted = evaluate.prepared_model(ctx, weights)  # what the stage scores
        metrics = json.loads(evaluate.score_model(ctx, tmp_path, weights).read_text())
    assert adapted["adabn_layers"] == 20  # every BatchNorm of the ResNet-18
    assert metrics["adabn_layers"] == 20
    before = clean_state_dict(load_state(weights)["model"])
    after = model.state_dict()
    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    for key, value in after.items():
        if key not in stats and not key.endswith("num_batches_tracked"):
            assert torch.equal(before[key], value), f"{key} changed"
    # the first BN layer's statistics: the plain average of per-image statistics of its input
    inputs: list[torch.Tensor] = []
    hook = model.backbone.bn1.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    model.eval()
    with torch.no_grad():
        for sample in domain_dataset(config.data.target, with_labels=False, train=False):
            model(sample["image"][None])
    hook.remove()
    means = np.stack([x.double().numpy().mean(axis=(0, 2, 3)) for x in inputs])
    variances = np.stack([x.double().numpy().var(axis=(0, 2, 3), ddof=1) for x in inputs])
    assert len(inputs) == 4
    np.testing.assert_allclose(model.backbone.bn1.running_mean, means.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.backbone.bn1.running_var, variances.mean(0), rtol=1e-4)


# --- the report ----------------------------------------------------------------------------------

MIOUS = {  # row → per-seed mIoU (seeds 0, 1, 2); the others get 25, 26, 27
    "source_only": [20.0, 21.0, 22.0],
    "source_only_adabn": [33.0, 34.0, 35.0],
    "self_training_control": [31.0, 31.0, 31.0],
    "spcl": [30.0, 30.5, 31.0],
    "online": [33.0, 34.0, 35.0],
    "online_no_mix": [30.0, 30.5, 31.0],
    "online_source_only": [29.0, 30.0, 31.0],
    "online_labels_1_4": [37.0, 38.0, 39.0],
    "oracle": [40.0, 41.0, 42.0],
}


def _payload(published: tuple[payload.Published, ...] = ()) -> dict[str, Any]:
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for i, seed in enumerate((0, 1, 2)):
        per_seed[seed] = {}
        for row in (rows.ROWS[n] for n in rows.BENCH_ROWS):
            miou = MIOUS.get(row.name, [25.0, 26.0, 27.0])[i]
            per_seed[seed][row.name] = {
                "miou": miou,
                "miou_13": miou + 1.0,
                "per_class_iou": {"road": 2 * miou, "car": float(i), "train": None},
                "seconds": 10.0 * (i + 1),
                "run_dir": f"runs/seed{seed}/{row.run}",
                "config": {"run": {"seed": seed}},
            }
    meta = {
        "seeds": [0, 1, 2],
        "quick": False,
        "config": "demo",
        "command": "spcl bench --out runs/bench --seeds 0,1,2",
        "run_commands": {"spcl": "spcl run demo run.seed=0"},
        "seconds": 123.0,
        "stage_seconds": 456.0,
        "machine": {
            "platform": "Linux-test",
            "cpu_count": 2,
            "torch_threads": 2,
            "device": "cpu",
            "spcl": "0.1.0",
            "python": "3.11",
            "torch": "2.x",
            "numpy": "2.x",
        },
    }
    specs = [rows.ROWS[n] for n in rows.BENCH_ROWS]
    return payload.build_payload(specs, per_seed, meta, published)


def test_statistics_match_a_naive_computation() -> None:
    got = _payload()["rows"]
    for name, values in MIOUS.items():
        assert got[name]["miou_mean"] == pytest.approx(np.mean(values))
        assert got[name]["miou_std"] == pytest.approx(np.std(values, ddof=1))
        assert got[name]["miou_13_mean"] == pytest.approx(np.mean(values) + 1.0)
        assert got[name]["per_class_mean"]["road"] == pytest.approx(2 * np.mean(values))
        assert got[name]["per_class_std"]["car"] == pytest.approx(1.0)
        assert got[name]["per_class_mean"]["train"] is None
        assert got[name]["seconds_mean"] == pytest.approx(20.0)
    assert got["spcl"]["gap_closed"] == pytest.approx(100 * (30.5 - 21.0) / (41.0 - 21.0))
    assert got["source_only"]["gap_closed"] == pytest.approx(0.0)
    # non-overlapping mean ± std: AdaBN (34 ± 1) vs spcl (30.5 ± 0.5) differs; control does not
    assert got["source_only_adabn"]["vs_spcl"] == {"delta": pytest.approx(3.5), "differs": True}
    assert got["self_training_control"]["vs_spcl"]["differs"] is False  # 0.5 = 0.5 + 0 touches
    assert got["spcl"]["vs_spcl"] is None and got["spcl"]["vs_control"]["differs"] is False
    # the online rows against their own control; other rows have no such comparison
    assert got["online_no_mix"]["vs_online"] == {"delta": pytest.approx(-3.5), "differs": True}
    assert got["online"]["vs_online"] is None and got["spcl"]["vs_online"] is None
    # every online row against the online recipe's own source-only run, and only those
    assert got["online"]["vs_source_only"] == {"delta": pytest.approx(4.0), "differs": True}
    assert got["online_labels_1_4"]["vs_online"]["delta"] == pytest.approx(4.0)
    assert got["online_labels_1_4"]["vs_source_only"]["delta"] == pytest.approx(8.0)
    assert got["online_source_only"]["vs_source_only"] is None
    assert got["spcl"]["vs_source_only"] is None and got["oracle"]["vs_source_only"] is None
    assert payload.mean_std([3.0]) == (3.0, 0.0)
    assert payload.mean_std([None]) == (None, None)
    assert payload.gap_closed(5.0, 10.0, 10.0) is None


def test_outputs_hold_every_row_and_number(tmp_path: Path) -> None:
    published = (payload.Published("ProDA", "miou_13", 62.0, "Zhang et al., CVPR 2021"),)
    made = _payload(published)
    paths = report.write_outputs(tmp_path, made, title=bench.TITLE)
    assert json.loads(paths["results"].read_text()) == json.loads(json.dumps(made))
    text = paths["report"].read_text()
    for name in rows.BENCH_ROWS:
        starts = [line for line in text.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(starts) == 2  # its lines in the main table and in the per-seed table
    assert "| road |" in text and "| train |" in text and "absent" in text
    assert "spcl bench --out runs/bench --seeds 0,1,2" in text and "2 CPUs" in text
    assert "| ProDA | miou_13 | 62.0 |" in text
    assert "| `source_only_adabn` | 34.0 ± 1.0 | 65% | +3.5 * |" in text
    assert "| `online_no_mix` | 30.5 ± 0.5 | 48% | +0.0 | -0.5 | -3.5 * |" in text
    for key in ("miou", "per_class"):
        assert (
            paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[key].stat().st_size > 5000
        )


# --- the quick bench, end to end, then a partial re-run ------------------------------------------


@pytest.mark.slow
def test_quick_bench_writes_every_row_and_resumes(tmp_path: Path) -> None:
    extra = ("run.progress=false",)
    payload = bench.run_bench(tmp_path, [0], quick=True, overrides=extra, ablate=("tau",))
    names = [*rows.BENCH_ROWS, "ablate_tau"]
    assert list(payload["rows"]) == names
    saved = json.loads((tmp_path / "results.json").read_text())
    report = (tmp_path / "report.md").read_text()
    for name in names:
        entry = saved["rows"][name]["seeds"]["0"]
        assert 0.0 <= entry["miou"] <= 100.0 and len(entry["per_class_iou"]) == 19
        assert entry["config"]["run"]["seed"] == 0 and entry["seconds"] > 0
        assert f"| `{name}` |" in report
    assert saved["rows"]["source_only_adabn"]["seeds"]["0"]["config"]["evaluate"]["adabn"]
    assert (tmp_path / "miou.png").exists() and (tmp_path / "per_class_iou.png").exists()
    runs = tmp_path / "runs" / "seed0"
    # one source-only warm-up for two rows; one adversarial warm-up + labels for the adapt rows
    same = [
        ("source_only", "source_only_adabn", "01_warmup/model.pth"),
        ("spcl", "self_training_control", "01_warmup/model.pth"),
        ("spcl", "ablate_tau", "03_pseudo_labels/thresholds.json"),
    ]
    for a, b, file in same:
        assert (runs / a / file).stat().st_ino == (runs / b / file).stat().st_ino, (a, b)
    control_log = (runs / "self_training_control" / "log.txt").read_text()
    adapt_lines = [line for line in control_log.splitlines() if "[adapt] iteration" in line]
    assert adapt_lines and all("tgt_ce=" in x and "cl_" not in x for x in adapt_lines)
    assert "cl_src=" in (runs / "spcl" / "log.txt").read_text()

    # a bench killed during the control row: its adapt and evaluation never finished
    for stage in ("04_adapt", "08_evaluate"):
        (runs / "self_training_control" / stage / "done.json").unlink()
    finished = {p: p.stat().st_mtime_ns for p in runs.glob("*/*/done.json")}
    again = bench.run_bench(tmp_path, [0], quick=True, overrides=extra, ablate=("tau",))
    rerun = [p for p in runs.glob("*/*/done.json") if finished.get(p) != p.stat().st_mtime_ns]
    assert sorted(str(p.relative_to(runs)) for p in rerun) == [
        "self_training_control/04_adapt/done.json",
        "self_training_control/08_evaluate/done.json",
    ]
    for name in names:
        if name != "self_training_control":
            assert again["rows"][name]["miou_mean"] == payload["rows"][name]["miou_mean"], name

    # --rows: a subset, in the order asked, from the finished runs (nothing trains again)
    finished = {p: p.stat().st_mtime_ns for p in runs.glob("*/*/done.json")}
    subset = bench.run_bench(tmp_path, [0], quick=True, overrides=extra, rows=("oracle", "online"))
    assert list(subset["rows"]) == ["oracle", "online"]
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    assert "--rows oracle,online" in subset["_meta"]["command"]
