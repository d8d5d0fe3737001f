"""The runs and rows that ``spcl demo`` and ``spcl bench`` train and report, in one table.

A :class:`Run` is one pipeline run per seed: a variant of the base config (overrides) and the
stages it needs. A :class:`Row` is one line of a report: the model of one stage of one run (the
evaluation stage's ``metrics.json`` for it, :func:`spcl.pipeline.metrics_path`). The demo shows
:data:`DEMO_ROWS`; the bench shows :data:`BENCH_ROWS` and the ablations asked for
(:data:`ABLATIONS`, each a variant of the ``spcl`` run). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spcl.base import ConfigError
from spcl.config_schema import Config
from spcl.recipe import STAGE_NAMES

__all__ = [
    "ABLATIONS",
    "BENCH_ROWS",
    "CONTROL_ROW",
    "DEMO_ROWS",
    "HIGH_ROW",
    "LABEL_ROWS",
    "LOW_ROW",
    "METHOD_ROW",
    "ONLINE_ROW",
    "ONLINE_SOURCE_ONLY_ROW",
    "ONLINE_VARIANTS",
    "QUICK_OVERRIDES",
    "ROWS",
    "Row",
    "Run",
    "ablation_rows",
    "runs_for",
    "source_only_overrides",
    "yaml_value",
]

# A CI-sized variant: tiny images, model and schedule; numbers mean nothing, the plumbing is real.
QUICK_OVERRIDES = (
    "data.synthetic.n_train=16",
    "data.synthetic.n_val=6",
    "data.synthetic.size=[64, 128]",
    "data.num_workers=0",
    "model.width=8",
    "warmup.optim.max_iter=6",
    "warmup.optim.stop_iter=6",
    "warmup.optim.batch_size=4",
    "adapt.optim.max_iter=4",
    "adapt.optim.stop_iter=4",
    "adapt.optim.batch_size=2",
    "self_train.optim.max_iter=4",
    "self_train.optim.stop_iter=4",
    "self_train.optim.batch_size=4",
    "self_train.crop=[64, 128]",
    "online.optim.max_iter=4",
    "online.optim.stop_iter=4",
    "online.optim.batch_size=2",
    "online.contrast.start_iter=2",
    "run.log_every=2",
    "run.ckpt_every=2",
)
METHOD_ROW, CONTROL_ROW = "spcl", "self_training_control"  # every row is compared to these two
LOW_ROW, HIGH_ROW = "source_only", "oracle"  # the ends of the gap that rows close
RowKind = Literal["baseline", "control", "method", "online", "bound", "ablation"]

WARMUP_ONLY = ("warmup", "evaluate")
SPCL_CHAIN = tuple(n for n in STAGE_NAMES if n != "online")  # the published SPCL pipeline
THROUGH_ADAPT = ("warmup", "prototypes", "pseudo_labels", "adapt", "evaluate")
NO_ADVERSARIAL = ("warmup.adversarial=false",)
# what the runs named "spcl…" claim: adversarial warm-up, both contrastive terms, no target CE
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
ONLINE_ROW = "online"  # the online recipe's control: the rows below add or remove one ingredient
ONLINE_SOURCE_ONLY_ROW = "online_source_only"  # the online recipe on the source alone: its own
# source-only run (same warm-up, sampling and schedule), which the online rows are compared with
SOURCE_ONLY_ONLINE = ("online.source_only=true",)
# few target labels (spcl.stages.target_labels): the online recipe with a share of the target-train
# labels in every stage it trains (the warm-up too), drawn with the section's own seed
LABEL_ROWS: dict[str, tuple[str, float]] = {
    "online_labels_1_16": ("online + 1/16 of the target-train labels", 1 / 16),
    "online_labels_1_4": ("online + 1/4 of the target-train labels", 1 / 4),
}
# what the online control claims: EMA teacher, ClassMix, the config's pseudo-label weight, no MIC,
# no contrast
ONLINE_PINS = (
    "online.mix.enabled=true",
    "online.masking.enabled=false",
    "online.contrast.source=false",
    "online.contrast.target=false",
)
# the contrast rows start their terms at once: they start from a trained warm-up, whose teacher
# features give meaningful prototypes from the first step (SePiCo waits 3,000 of 40,000
# iterations from ImageNet weights; at the config default the terms would never start in a
# demo-sized stage)
CONTRAST_FROM_START = "online.contrast.start_iter=0"
CONTRAST_BOTH = ("online.contrast.source=true", "online.contrast.target=true")
SEPICO_CONTRAST = (  # SePiCo's contrast as its experiments run it, beside the loss it picks
    *CONTRAST_BOTH,
    "online.contrast.statistics=cumulative",
    "online.contrast.regularizer=1.0",
    "online.contrast.labels=ratio",
)
# HRDA at the demo's scale: the authors' detail window is half the 1024 crop's side; the demo
# trains on whole 96×192 images (64×128 with --quick), so the window is half of 96×192
HRDA_DEMO_DETAIL = "[48,96]"
ONLINE_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    ONLINE_ROW: ("online: EMA teacher + ClassMix + confidence weight (no MIC, no contrast)", ()),
    "online_mic": ("online + masked image consistency (MIC)", ("online.masking.enabled=true",)),
    "online_contrast_source": (
        "online + prototype contrast on source pixels",
        ("online.contrast.source=true", CONTRAST_FROM_START),
    ),
    "online_contrast_target": (
        "online + prototype contrast on target pseudo-labels",
        ("online.contrast.target=true", CONTRAST_FROM_START),
    ),
    "online_contrast": (
        "online + prototype contrast on source and target (SePiCo-style)",
        ("online.contrast.source=true", "online.contrast.target=true", CONTRAST_FROM_START),
    ),
    "online_contrast_ratio": (
        "online + prototype contrast, labels down-scaled by SePiCo's 0.75 ratio rule",
        (*CONTRAST_BOTH, CONTRAST_FROM_START, "online.contrast.labels=ratio"),
    ),
    "online_distcl": (
        "online + SePiCo's DistCL (cumulative statistics, regulariser, ratio labels)",
        (*SEPICO_CONTRAST, CONTRAST_FROM_START, "online.contrast.loss=dist"),
    ),
    "online_bankcl": (
        "online + SePiCo's BankCL (cumulative statistics, regulariser, ratio labels)",
        (*SEPICO_CONTRAST, CONTRAST_FROM_START, "online.contrast.loss=bank"),
    ),
    "online_distcl_weight0": (  # control: what the contrast's passes change without its gradient
        "online + DistCL's passes and statistics at weight 0 (no contrast gradient)",
        (
            *SEPICO_CONTRAST,
            CONTRAST_FROM_START,
            "online.contrast.loss=dist",
            "online.contrast.weight=0",
        ),
    ),
    "online_hrda": (
        "online + HRDA (context at ×0.5, a 48×96 detail window of the 96×192 image)",
        ("online.hrda.enabled=true", f"online.hrda.detail_crop={HRDA_DEMO_DETAIL}"),
    ),
    "online_no_mix": (
        "online without mixing (EMA-teacher self-training on target crops)",
        ("online.mix.enabled=false",),
    ),
    "online_no_weight": (
        "online, mixing without the teacher's confidence weight (weight 1)",
        ("online.pseudo.weight=none",),
    ),
    "online_no_ema": (
        "online without the EMA (α = 0: the student labels itself)",
        ("online.teacher.alpha=0",),
    ),
}


@dataclass(frozen=True)
class Run:
    """One pipeline run per seed: its stages and its overrides of the base config."""

    name: str
    stages: tuple[str, ...]
    overrides: tuple[str, ...]

    def all_overrides(self, base: Sequence[str], run_dir: Path) -> list[str]:
        """Base overrides, then this run's own (later ones win), its stages and folder."""
        stages = "[" + ", ".join(self.stages) + "]"
        return [
            *base,
            *self.overrides,
            f"run.stages={stages}",
            f"run.out={yaml_value(str(run_dir))}",
        ]


@dataclass(frozen=True)
class Row:
    """One line of a report: the model of ``stage`` in the run ``run``."""

    name: str
    title: str
    run: str
    stage: str
    kind: RowKind  # colours the plots


ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row(LOW_ROW, "source only (no adversarial term)", LOW_ROW, "warmup", "baseline"),
        Row("source_only_adabn", "source only + AdaBN (target BN statistics)",
            "source_only_adabn", "warmup", "control"),
        Row("adversarial_warmup", "adversarial warm-up (output space)", "spcl", "warmup",
            "baseline"),
        Row(CONTROL_ROW, "self-training control (source + target CE, no contrast)", CONTROL_ROW,
            "adapt", "control"),
        Row("spcl_source_only_contrast", "SPCL, contrast on source pixels only",
            "spcl_source_only_contrast", "adapt", "method"),
        Row("spcl_target_only_contrast", "SPCL, contrast on target pixels only",
            "spcl_target_only_contrast", "adapt", "method"),
        Row(METHOD_ROW, "SPCL adaptation (contrast on source and target)", "spcl", "adapt",
            "method"),
        Row("spcl_self_training", "SPCL + self-training (all stages)", "spcl", "self_train",
            "method"),
        Row(ONLINE_SOURCE_ONLY_ROW, "online recipe on the source alone (no target term)",
            ONLINE_SOURCE_ONLY_ROW, "online", "baseline"),
        *(Row(name, title, name, "online", "online" if name == ONLINE_ROW else "ablation")
          for name, (title, _) in ONLINE_VARIANTS.items()),
        *(Row(name, title, name, "online", "ablation") for name, (title, _) in LABEL_ROWS.items()),
        Row(HIGH_ROW, "oracle (warm-up on target labels)", HIGH_ROW, "warmup", "bound"),
    )
}  # fmt: skip
# the demo: the published SPCL chain (three rows) beside the online recipe, between the gap's ends
DEMO_ROWS = (
    LOW_ROW,
    "adversarial_warmup",
    METHOD_ROW,
    "spcl_self_training",
    ONLINE_ROW,
    HIGH_ROW,
)
BENCH_ROWS = tuple(ROWS)

# ablation name → (title, overrides of the spcl run); "bn" and "adabn_labels" flip the config
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


def yaml_value(value: Any) -> str:
    """An override value that YAML reads back unchanged (JSON is YAML)."""
    return json.dumps(value)


def oracle_source(base: Config) -> tuple[str, ...]:
    """Overrides that make the source the target training split, with its labels.

    Overrides merge into mappings, so reader options only the source sets are reset to the target
    reader's defaults.

    Raises:
        ConfigError: the source sets a reader option that the target's reader does not take.
    """
    from spcl.data.registry import dataset_options  # the readers: imported when a bench runs

    target = dataclasses.asdict(base.data.target)
    options = dict(target.pop("options", {}))
    leftover = [k for k in base.data.source.options if k not in options]
    if leftover:
        defaults = dataset_options(base.data.target.kind)
        unknown = [k for k in leftover if k not in defaults]
        if unknown:
            raise ConfigError(
                f"oracle row: data.source.options {unknown} mean nothing to the target reader "
                f"'{base.data.target.kind}' (its options: {list(defaults)}); move them to a "
                f"source-only config"
            )
        options |= {k: defaults[k] for k in leftover}
    overrides = [f"data.source.{key}={yaml_value(value)}" for key, value in target.items()]
    if options or leftover:
        overrides.append(f"data.source.options={yaml_value(options)}")
    return tuple(overrides)


def _ablation(name: str, base: Config) -> tuple[str, tuple[str, ...]]:
    title, overrides = ABLATIONS[name]
    if name == "bn":  # the reference freezes BN, the demo trains it: adaptation gets the other
        frozen = not base.model.freeze_bn
        title = title.format(state="frozen" if frozen else "trainable")
        overrides = (f"adapt.freeze_bn={yaml_value(frozen)}",)
    if name == "adabn_labels":  # the demo re-estimates BN before pseudo-labels, the reference not
        adabn = not base.pseudo_labels.adabn
        title = title.format(state="after" if adabn else "without")
        overrides = (f"pseudo_labels.adabn={yaml_value(adabn)}",)
    return title, overrides


def _online_stages(base: Config) -> tuple[str, ...]:
    """The online runs' stages: from the (shared) source-only warm-up, or from the ImageNet init."""
    return (
        ("warmup", "online", "evaluate") if base.online.init == "warmup" else ("online", "evaluate")
    )


def source_only_overrides(base: Config) -> tuple[str, ...]:
    """The overrides that turn ``base``'s recipe into its own source-only run: the same model,
    init, augmentation and schedule on the source alone. A run with the online stage keeps its
    stages with ``online.source_only=true``; the SPCL chain keeps its warm-up, without the
    adversarial term, and evaluates it (the ``source_only`` row)."""
    if "online" in base.run.stages:
        return SOURCE_ONLY_ONLINE
    return (*NO_ADVERSARIAL, f"run.stages={yaml_value(list(WARMUP_ONLY))}")


def _runs(base: Config) -> dict[str, Run]:
    """Every run a row of :data:`ROWS` needs, by name, in the order they should run."""
    online = tuple(
        Run(name, _online_stages(base), (*NO_ADVERSARIAL, *ONLINE_PINS, *overrides))
        for name, (_, overrides) in ONLINE_VARIANTS.items()
    )
    runs = (
        Run(LOW_ROW, WARMUP_ONLY, NO_ADVERSARIAL),
        Run("source_only_adabn", WARMUP_ONLY, (*NO_ADVERSARIAL, "evaluate.adabn=true")),
        Run(METHOD_ROW, SPCL_CHAIN, SPCL_PINS),
        Run(CONTROL_ROW, THROUGH_ADAPT, (*SPCL_PINS, *CONTROL_OVERRIDES)),
        Run("spcl_source_only_contrast", THROUGH_ADAPT,
            (*SPCL_PINS, "adapt.contrast_target=false")),
        Run("spcl_target_only_contrast", THROUGH_ADAPT,
            (*SPCL_PINS, "adapt.contrast_source=false")),
        Run(ONLINE_SOURCE_ONLY_ROW, _online_stages(base),
            (*NO_ADVERSARIAL, *ONLINE_PINS, *SOURCE_ONLY_ONLINE)),
        *online,
        *(Run(name, _online_stages(base), (*NO_ADVERSARIAL, *ONLINE_PINS,
                                           f"data.target_labels.fraction={share!r}"))
          for name, (_, share) in LABEL_ROWS.items()),
        Run(HIGH_ROW, WARMUP_ONLY, (*NO_ADVERSARIAL, *oracle_source(base))),
    )  # fmt: skip
    return {run.name: run for run in runs}


def ablation_rows(names: Sequence[str], base: Config) -> tuple[list[Row], list[Run]]:
    """The rows and runs of the ablations ``names`` (variants of the ``spcl`` run)."""
    rows, runs = [], []
    for name in names:
        title, overrides = _ablation(name, base)
        runs.append(Run(f"ablate_{name}", THROUGH_ADAPT, (*SPCL_PINS, *overrides)))
        rows.append(Row(f"ablate_{name}", title, f"ablate_{name}", "adapt", "ablation"))
    return rows, runs


def runs_for(rows: Sequence[Row], base: Config, extra: Sequence[Run] = ()) -> list[Run]:
    """The runs that ``rows`` need, in the table's order (extra runs, e.g. ablations, last)."""
    needed = {row.run for row in rows}
    table = _runs(base) | {run.name: run for run in extra}
    unknown = sorted(needed - set(table))
    if unknown:
        raise KeyError(f"rows need runs {unknown} that no table defines")
    return [run for name, run in table.items() if name in needed]
