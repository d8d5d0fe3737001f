"""``spcl bench``: what each part of SPCL buys, over seeds, with controls and ablations.

Every row (:data:`ROWS`) is the target-val mIoU of one model on the same budget: source-only, with
AdaBN (``evaluate.adabn``: target BatchNorm statistics, no gradient step), the adversarial
warm-up, the self-training control (same pseudo-labels and steps, source CE + target CE, no
contrast), SPCL with contrast on source only / target only / both, SPCL + self-training, and the
oracle (warm-up on target labels); ablations (:data:`ABLATIONS`) add variants of ``spcl``. Each
seed sets the training seed and, for the synthetic pair, the generator seed.

Each row comes from a pipeline run directory ``OUT/runs/seed<S>/<run>``, so a killed bench
continues where it stopped. Before a run starts, every stage that an earlier run of the seed
finished with the very fingerprint this run would compute is hard-linked in
(:mod:`spcl.bench_stages`): one source-only warm-up serves two rows, one adversarial warm-up and
its pseudo-labels serve all the adaptations. :mod:`spcl.bench_report` writes the report.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spcl.bench_report import (
    CONTROL_ROW,
    HIGH_ROW,
    METHOD_ROW,
    Published,
    build_payload,
    format_summary,
    write_outputs,
)
from spcl.bench_stages import row_seconds, share_done_stages, total_stage_seconds
from spcl.config import config_to_dict, load_config
from spcl.config_schema import Config
from spcl.context import environment, open_run
from spcl.data.registry import dataset_options
from spcl.demo import QUICK_OVERRIDES
from spcl.engine.distributed import barrier, resolve_device
from spcl.pipeline import STAGE_NAMES, run_lock, run_pipeline

__all__ = [
    "ABLATIONS",
    "CONTROL_ROW",
    "DEFAULT_SEEDS",
    "METHOD_ROW",
    "QUICK_SEEDS",
    "ROWS",
    "BenchRun",
    "Row",
    "bench_runs",
    "parse_ablations",
    "parse_seeds",
    "run_bench",
]

BENCH_CONFIG = "demo"  # shipped config the bench runs by default
DEFAULT_SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)  # seeds of `spcl bench` and of `spcl bench --quick`
WARMUP_ONLY = ("warmup", "evaluate")
THROUGH_ADAPT = ("warmup", "prototypes", "pseudo_labels", "adapt", "evaluate")
NO_ADVERSARIAL = ("warmup.adversarial=false",)
# what the rows named "spcl…" claim: adversarial warm-up, both contrastive terms, no target CE
SPCL_PINS = (
    "warmup.adversarial=true",
    "adapt.contrast_source=true",
    "adapt.contrast_target=true",
    "adapt.target_ce=0",
)
CONTROL_OVERRIDES = (
    "adapt.contrast_source=false",
    "adapt.contrast_target=false",
    "adapt.lambda_cl=0",
    "adapt.target_ce=1",
)


@dataclass(frozen=True)
class Row:
    """One line of the report: the model of ``stage`` in the bench run ``run``."""

    name: str
    title: str
    run: str
    stage: str
    kind: str  # baseline, control, method, bound or ablation (colours the plots)


@dataclass(frozen=True)
class BenchRun:
    """One pipeline run per seed: its stages and its overrides of the bench's base config."""

    name: str
    stages: tuple[str, ...]
    overrides: tuple[str, ...]

    def all_overrides(self, base: Sequence[str], run_dir: Path) -> list[str]:
        """Base overrides, then this run's own (later ones win), its stages and folder."""
        stages = "[" + ", ".join(self.stages) + "]"
        return [*base, *self.overrides, f"run.stages={stages}", f"run.out={_yaml(str(run_dir))}"]


ROWS: tuple[Row, ...] = (
    Row("source_only", "source only (no adversarial term)", "source_only", "warmup", "baseline"),
    Row("source_only_adabn", "source only + AdaBN (target BN statistics)", "source_only_adabn",
        "warmup", "control"),
    Row("adversarial_warmup", "adversarial warm-up (output space)", "spcl", "warmup", "baseline"),
    Row(CONTROL_ROW, "self-training control (source + target CE, no contrast)", CONTROL_ROW,
        "adapt", "control"),
    Row("spcl_source_only_contrast", "SPCL, contrast on source pixels only",
        "spcl_source_only_contrast", "adapt", "method"),
    Row("spcl_target_only_contrast", "SPCL, contrast on target pixels only",
        "spcl_target_only_contrast", "adapt", "method"),
    Row(METHOD_ROW, "SPCL adaptation (contrast on source and target)", "spcl", "adapt", "method"),
    Row("spcl_self_training", "SPCL + self-training (all stages)", "spcl", "self_train", "method"),
    Row(HIGH_ROW, "oracle (warm-up on target labels)", HIGH_ROW, "warmup", "bound"),
)  # fmt: skip
# ablation name → (title, overrides of the spcl row); "bn" and "adabn_labels" flip the config
ABLATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tau": ("SPCL, temperature 0.1 (reference: cosine / 100)", ("adapt.temperature=0.1",)),
    "alpha": ("SPCL, prototype EMA α = 0.9 (slow; reference 0.1)", ("adapt.momentum=0.9",)),
    "absent": ("SPCL, absent classes keep their prototype", ("adapt.absent_policy=keep",)),
    "cap": ("SPCL, threshold = pure median (cap 1.0)", ("pseudo_labels.cap=1.0",)),
    "lambda": ("SPCL, λ_cl = 0.1", ("adapt.lambda_cl=0.1",)),
    "tau_lambda": (
        "SPCL, temperature 0.1 and λ_cl = 0.1",
        ("adapt.temperature=0.1", "adapt.lambda_cl=0.1"),
    ),
    "st_contrast": (  # does the contrast add anything to plain self-training?
        "self-training control + contrast (temperature 0.1, λ_cl = 0.1)",
        ("adapt.target_ce=1", "adapt.temperature=0.1", "adapt.lambda_cl=0.1"),
    ),
    "bn": ("SPCL, BatchNorm {state} in adaptation only (model.freeze_bn flipped)", ()),
    "adabn_labels": ("SPCL, pseudo-labels {state} AdaBN (pseudo_labels.adabn flipped)", ()),
}
ALL_ABLATIONS = "all"  # --ablate all


def _yaml(value: Any) -> str:
    """An override value that YAML reads back unchanged (JSON is YAML)."""
    return json.dumps(value)


def _oracle_source(base: Config) -> tuple[str, ...]:
    """Overrides that make the source the target training split, with its labels.

    Overrides merge into mappings, so reader options only the source sets are reset to the target
    reader's defaults.

    Raises:
        ValueError: the source sets a reader option that the target's reader does not take.
    """
    target = dataclasses.asdict(base.data.target)
    options = dict(target.pop("options", {}))
    leftover = [k for k in base.data.source.options if k not in options]
    if leftover and base.data.target.kind != "synthetic":
        defaults = dataset_options(base.data.target.kind)
        unknown = [k for k in leftover if k not in defaults]
        if unknown:
            raise ValueError(
                f"oracle row: data.source.options {unknown} mean nothing to the target reader "
                f"'{base.data.target.kind}' (its options: {list(defaults)}); move them to a "
                f"source-only config"
            )
        options |= {k: defaults[k] for k in leftover}
    overrides = [f"data.source.{key}={_yaml(value)}" for key, value in target.items()]
    if options or leftover:
        overrides.append(f"data.source.options={_yaml(options)}")
    return tuple(overrides)


def _ablation(name: str, base: Config) -> tuple[str, tuple[str, ...]]:
    title, overrides = ABLATIONS[name]
    if name == "bn":  # the reference freezes BN, the demo trains it: adaptation gets the other
        frozen = not base.model.freeze_bn
        title = title.format(state="frozen" if frozen else "trainable")
        overrides = (f"adapt.freeze_bn={_yaml(frozen)}",)
    if name == "adabn_labels":  # the demo re-estimates BN before pseudo-labels, the reference not
        adabn = not base.pseudo_labels.adabn
        title = title.format(state="after" if adabn else "without")
        overrides = (f"pseudo_labels.adabn={_yaml(adabn)}",)
    return title, overrides


def bench_runs(base: Config, ablate: Sequence[str] = ()) -> tuple[list[BenchRun], list[Row]]:
    """The pipeline runs of one seed, in the order they run, and the rows they give.

    Args:
        base: the resolved base config (for the oracle's source and the ``bn`` ablation).
        ablate: names from :data:`ABLATIONS`.
    """
    runs = [
        BenchRun("source_only", WARMUP_ONLY, NO_ADVERSARIAL),
        BenchRun("source_only_adabn", WARMUP_ONLY, (*NO_ADVERSARIAL, "evaluate.adabn=true")),
        BenchRun("spcl", STAGE_NAMES, SPCL_PINS),
        BenchRun(CONTROL_ROW, THROUGH_ADAPT, (*SPCL_PINS, *CONTROL_OVERRIDES)),
        BenchRun(
            "spcl_source_only_contrast", THROUGH_ADAPT, (*SPCL_PINS, "adapt.contrast_target=false")
        ),
        BenchRun(
            "spcl_target_only_contrast", THROUGH_ADAPT, (*SPCL_PINS, "adapt.contrast_source=false")
        ),
        BenchRun(HIGH_ROW, WARMUP_ONLY, (*NO_ADVERSARIAL, *_oracle_source(base))),
    ]
    rows = list(ROWS)
    for name in ablate:
        title, overrides = _ablation(name, base)
        runs.append(BenchRun(f"ablate_{name}", THROUGH_ADAPT, (*SPCL_PINS, *overrides)))
        rows.append(Row(f"ablate_{name}", title, f"ablate_{name}", "adapt", "ablation"))
    return runs, rows


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` → [0, 1, 2]; ArgumentTypeError unless distinct integers."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--seeds expects integers like 0,1,2, got '{text}'")
    if len({int(p) for p in parts}) != len(parts):
        raise argparse.ArgumentTypeError(f"--seeds repeats a seed: '{text}'")
    return [int(p) for p in parts]


def parse_ablations(text: str) -> tuple[str, ...]:
    """``--ablate tau,cap`` (or ``all``) → names; ArgumentTypeError listing the valid ones."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == [ALL_ABLATIONS]:
        return tuple(ABLATIONS)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--ablate: unknown ablation(s) {unknown}; valid: {', '.join(ABLATIONS)} or all"
        )
    return tuple(dict.fromkeys(names))


def _collect(run_dir: Path, row: Row, config: Config) -> dict[str, Any]:
    metrics_file = run_dir / "07_evaluate" / row.stage / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    seconds = row_seconds(run_dir, row.stage) + float(metrics.get("adabn_seconds", 0.0))
    return {
        **{k: v for k, v in metrics.items() if k.startswith("miou")},
        "per_class_iou": metrics["per_class_iou"],
        "seconds": round(seconds, 2),
        "run_dir": str(run_dir),
        "config": config_to_dict(config),
    }


def _seed_overrides(base: Config, out: Path, seed: int) -> list[str]:
    """Seeds, and for a generated synthetic pair one data folder per generator seed."""
    overrides = [f"run.seed={seed}"]
    data = base.data
    if data.source.kind == "synthetic" and data.synthetic.generate:
        root = _yaml(str(out / "data" / f"seed{seed}"))
        overrides += [f"data.synthetic.seed={seed}"]
        overrides += [f"data.{d}.root={root}" for d in ("source", "target", "target_val")]
    return overrides


def _run_one(config: Config, run_dir: Path, donors: Sequence[Path]) -> None:
    with open_run(config, run_dir) as ctx:
        lock = run_lock(run_dir) if ctx.is_main else contextlib.nullcontext()
        with lock:
            if ctx.is_main:
                shared = share_done_stages(config, run_dir, donors)
                for stage, donor in shared.items():
                    ctx.tracker.info(f"[bench] {stage}: finished stage shared from {donor}")
            barrier()
            run_pipeline(ctx)


def _bench_command(
    out: Path, seeds: Sequence[int], quick: bool, config: str, overrides: Sequence[str],
    ablate: Sequence[str],
) -> str:  # fmt: skip
    words = ["spcl", "bench", "--out", str(out), "--seeds", ",".join(map(str, seeds))]
    words += ["--quick"] if quick else []
    words += ["--config", config] if config != BENCH_CONFIG else []
    words += ["--ablate", ",".join(ablate)] if ablate else []
    return shlex.join([*words, *overrides])


def run_bench(
    out: str | Path,
    seeds: Sequence[int],
    *,
    quick: bool,
    config: str = BENCH_CONFIG,
    overrides: Sequence[str] = (),
    ablate: Sequence[str] = (),
    published: Sequence[Published] = (),
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every row for every seed into ``out``; write and return the results.

    Args:
        out: bench folder (``data/``, ``runs/seed<S>/<run>/``, ``results.json``, ``report.md``,
            ``miou.png``, ``per_class_iou.png``).
        seeds: bench seeds; each sets ``run.seed`` and, for the synthetic pair, its generator seed.
        quick: tiny sizes and schedules (:data:`spcl.demo.QUICK_OVERRIDES`), for CI; numbers
            mean nothing.
        config: YAML file or shipped config name (``demo``, ``gta5_to_cityscapes``, ...).
        overrides: ``key=value`` applied to every row before the row's own switches.
        ablate: names from :data:`ABLATIONS` (extra rows, variants of ``spcl``).
        published: other papers' numbers to print beside ours (benchmarks/real_benchmarks.py).
        command: the command line to record; None records the equivalent ``spcl bench`` one.

    Returns:
        The content of ``results.json`` (see :func:`spcl.bench_report.write_outputs`).

    Raises:
        ValueError: no seed, a repeated seed, or an unknown ablation.
    """
    out, seeds, ablate = Path(out), list(seeds), tuple(ablate)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    unknown = [a for a in ablate if a not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}; valid: {', '.join(ABLATIONS)}")
    common = [*(QUICK_OVERRIDES if quick else ()), *overrides]
    begin = time.perf_counter()
    per_seed, commands = {}, {}
    for seed in seeds:
        rows, per_seed[seed], commands[seed], first = _run_seed(out, seed, config, common, ablate)
    meta = {
        "seeds": seeds,
        "quick": quick,
        "config": config,
        "overrides": list(overrides),
        "ablate": list(ablate),
        "command": command or _bench_command(out, seeds, quick, config, overrides, ablate),
        "run_commands": commands[seeds[0]],
        "seconds": round(time.perf_counter() - begin, 1),
        "stage_seconds": total_stage_seconds(out / "runs"),
        "machine": {**environment(resolve_device(first.run.device)), "cpu_count": os.cpu_count()},
    }
    payload = build_payload(rows, per_seed, meta, published=published)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 writes the report
        write_outputs(out, payload)
        print(format_summary(payload))
        print(f"\nreport: {out / 'report.md'}   results: {out / 'results.json'}")
    return payload


def _run_seed(
    out: Path, seed: int, config: str, common: list[str], ablate: tuple[str, ...]
) -> tuple[list[Row], dict[str, dict[str, Any]], dict[str, str], Config]:
    """Run (or resume) one seed's runs; returns its rows, their results, the run commands."""
    base_overrides = [*common, *_seed_overrides(load_config(config, common), out, seed)]
    runs, rows = bench_runs(load_config(config, base_overrides), ablate)
    configs: dict[str, Config] = {}
    commands: dict[str, str] = {}
    done: list[Path] = []
    for spec in runs:
        run_dir = out / "runs" / f"seed{seed}" / spec.name
        run_overrides = spec.all_overrides(base_overrides, run_dir)
        configs[spec.name] = load_config(config, run_overrides)
        commands[spec.name] = shlex.join(["spcl", "run", config, *run_overrides])
        _run_one(configs[spec.name], run_dir, done)
        done.append(run_dir)
    results = {
        row.name: _collect(out / "runs" / f"seed{seed}" / row.run, row, configs[row.run])
        for row in rows
    }
    return rows, results, commands, configs[runs[0].name]
