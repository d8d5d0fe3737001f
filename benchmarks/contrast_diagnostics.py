"""Why SPCL's pixel-to-prototype contrast does or does not change the model, in measured numbers.

Replays the first ``--batches`` steps of a finished run's adaptation from its warm-up model, as
the stage builds them (:func:`spcl.stages.adapt.setup`: its config, loader seeds, batch size,
initial prototypes with the per-batch EMA step, pseudo-labels), applies nothing, and prints
Markdown tables: (1) each term's loss (vs ln K) and gradient L2 norm w.r.t. all parameters and
w.r.t. the feature map, also ÷ the source CE's — source CE, target CE
on the pseudo-labels, contrast on source (reliable pixels) and on target (pseudo-labels) at each
``--temperatures`` τ (divisor of the cosine; reference 100); (2) prototype softmax sharpness per τ
and nearest-prototype accuracy; (3) prototype drift over the adaptation and class separation;
(4) pseudo-label quality from the stages' stats.json. Model in train mode as in adaptation
(``--eval-mode``: BatchNorm running statistics).

Run: ``python benchmarks/contrast_diagnostics.py RUN [--batches 4] [--temperatures 100,1,0.1]
[--device cpu] [--eval-mode]``, RUN e.g. OUT/runs/seed0/spcl of ``spcl bench``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from spcl.base import IGNORE_INDEX
from spcl.config import load_config
from spcl.context import RunContext
from spcl.engine.checkpoint import load_state
from spcl.engine.distributed import resolve_device
from spcl.engine.tracking import Tracker
from spcl.method.contrastive import pixel_prototype_logits, pixel_prototype_loss
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.method.prototypes import downsample_labels
from spcl.recipe import STAGE_FOLDERS
from spcl.stages.adapt import PLAIN_CE, TARGET_STREAM, AdaptParts, adapt_forward
from spcl.stages.adapt import setup as adapt_setup
from spcl.stages.builders import class_table, domain_dataset, train_loader

EXIT_USER_ERROR = 2
TINY = 1e-30  # floor of a denominator
DEFAULT_TEMPERATURES = (100.0, 1.0, 0.1)
SRC, TGT, GT = "source, reliable GT", "target, pseudo-labels", "target, ground truth"
TERM_STATS = ("loss", "param", "feature", "cos")
Totals = defaultdict[tuple, float]  # (name, statistic, ...) → sum over batches
Taus = Sequence[float]
Replay = tuple[dict[str, Tensor], list[Tensor], Tensor, dict[str, tuple[Tensor, Tensor]]]
CE_SRC, CE_TGT = "source CE", "target CE (pseudo-labels)"
GRADIENT_HEADER = ("term", "loss", "loss − ln K", "‖∇θ‖", "÷ source CE", "cos(∇θ, ∇θ source CE)",
                   "‖∇feat‖", "÷ source CE")  # fmt: skip
ACCURACY_HEADER = ("labelled pixels", "count", "argmax norm(f)·P (what the loss ranks)",
                   "nearest prototype by cosine", "chance 1/K")  # fmt: skip
WHAT = ("coverage", "accuracy")
DRIFT_HEADER = ("class", "seen at init", "‖P initial‖", "‖P final‖", "cos(initial, final)")


@dataclass(frozen=True)
class RunFiles:
    """What the diagnostics read from a pipeline run directory."""

    warmup: Path
    initial: Path
    labels: Path
    final: Path
    stats: tuple[Path, ...]  # stats.json of the pseudo-label stages that wrote one


@dataclass
class Diagnostics:
    """Means over the batches: per term {"loss", "param", "feature", "cos"}; softmax; accuracy."""

    num_classes: int
    temperatures: tuple[float, ...]
    batches: int
    terms: dict[str, dict[str, float]] = field(default_factory=dict)
    max_prob: dict[tuple[str, float], float] = field(default_factory=dict)
    accuracy: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # n, dot, cos


def term_name(domain: str, tau: float) -> str:
    return f"contrast {domain}, τ={tau:g}"


def _need(path: Path, stage: str, run_dir: Path, stages: Sequence[str]) -> Path:
    if path.exists():
        return path
    if stage not in stages:
        fix = f"this run's run.stages {list(stages)} lack '{stage}'; use a run that adapts"
        raise FileNotFoundError(f"{path} is missing: {fix}, e.g. OUT/runs/seed0/spcl of spcl bench")
    command = shlex.join(["spcl", "run", str(run_dir / "config.yaml"), f"run.out={run_dir}"])
    raise FileNotFoundError(f"{path} is missing; the '{stage}' stage writes it: run `{command}`")


def locate_run(run_dir: Path) -> RunFiles:
    """The run's input files; raises :class:`FileNotFoundError` naming the first one missing."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(
            f"{config} is missing: {run_dir} is not a pipeline run; make one with "
            "`spcl bench --out OUT --seeds 0 --quick` (then RUN = OUT/runs/seed0/spcl), "
            "`spcl demo --out OUT` (RUN = OUT/runs/spcl) or `spcl run CONFIG run.out=RUN`"
        )
    stages = load_config(config).run.stages
    folder = {name: run_dir / sub for name, sub in STAGE_FOLDERS.items()}
    stats = [folder[name] / "stats.json" for name in ("pseudo_labels", "pseudo_labels_2")]
    return RunFiles(
        warmup=_need(folder["warmup"] / "model.pth", "warmup", run_dir, stages),
        initial=_need(folder["prototypes"] / "prototypes.pth", "prototypes", run_dir, stages),
        labels=_need(folder["pseudo_labels"] / "labels", "pseudo_labels", run_dir, stages),
        final=_need(folder["adapt"] / "prototypes.pth", "adapt", run_dir, stages),
        stats=tuple(path for path in stats if path.is_file()),
    )


def open_context(run_dir: Path, device: str) -> RunContext:
    """The run's config on ``device``, with a tracker that writes nothing."""
    tracker = Tracker(run_dir, enabled=False, progress=False)
    return RunContext(
        load_config(run_dir / "config.yaml"), run_dir, resolve_device(device), tracker
    )


def _truth(ctx: RunContext) -> Iterator | None:
    """The target ground truth in step with the adaptation's pseudo-labelled stream (same images,
    transform and seed: same order and flips), or None when the target has no labels."""
    cfg, data = ctx.config.adapt, ctx.config.data
    try:
        truth = domain_dataset(data.target, with_labels=True, train=True, hflip=data.hflip)
    except (FileNotFoundError, ValueError):
        return None
    return train_loader(ctx, truth, cfg.optim.batch_size, TARGET_STREAM)


def _replay_step(ctx: RunContext, parts: AdaptParts, batch: dict, taus: Taus) -> Replay:
    """The adaptation's own forward pass and prototype step (``adapt_forward``) on one batch
    pair, then every loss term at each τ, and (features, labels) per pixel set."""
    cfg, dev = ctx.config.adapt, ctx.device
    step = adapt_forward(parts, batch["src"], batch["tgt"])
    src, tgt, protos = step.out.src, step.out.tgt, step.prototypes
    src_logits = upsample_logits(src.logits, step.src_labels.shape[-2:])
    tgt_logits = upsample_logits(tgt.logits, step.tgt_labels.shape[-2:])
    losses = {
        CE_SRC: tempered_cross_entropy(src_logits, step.src_labels, cfg.source_temperature),
        CE_TGT: tempered_cross_entropy(tgt_logits, step.tgt_labels, PLAIN_CE),
    }
    for tau in taus:
        losses[term_name("source", tau)] = pixel_prototype_loss(
            src.features, step.src_mask, protos, tau
        )
        losses[term_name("target", tau)] = pixel_prototype_loss(
            tgt.features, step.tgt_mask, protos, tau
        )
    sets = {
        SRC: (src.features.detach(), step.src_mask),
        TGT: (tgt.features.detach(), step.tgt_mask),
    }
    if "gt" in batch:
        if list(batch["gt"]["name"]) != list(batch["tgt"]["name"]):
            raise RuntimeError("target ground-truth stream out of step with the pseudo-labels")
        gt = downsample_labels(batch["gt"]["label"].to(dev), step.tgt_mask.shape[-2:])
        sets[GT] = (sets[TGT][0], gt)
    return losses, list(step.out.feature_maps), protos, sets


def _norm(tensors: Sequence[Tensor | None]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors if t is not None))


def _add_gradients(losses: dict, features: list, params: list, totals: Totals) -> None:
    """Add each term's loss, gradient norms (parameters, features) and cosine to the source CE's."""
    reference: Sequence[Tensor | None] = ()
    for name, loss in losses.items():
        inputs = [*params, *features]
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        param_grads = grads[: len(params)]
        reference = param_grads if name == CE_SRC else reference
        pairs = zip(param_grads, reference, strict=True)
        dot = sum(float((g * r).sum()) for g, r in pairs if g is not None and r is not None)
        param_norm = _norm(param_grads)
        totals[(name, "loss")] += float(loss.detach())
        totals[(name, "param")] += param_norm
        totals[(name, "feature")] += _norm(grads[len(params) :])
        totals[(name, "cos")] += dot / max(param_norm * _norm(reference), TINY)


@torch.no_grad()
def _add_classification(sets: dict, protos: Tensor, taus: Taus, totals: Totals) -> None:
    """Softmax max-probability per τ and nearest-prototype hits over each set's labelled pixels."""
    unit = F.normalize(protos, dim=1)  # zero prototypes stay zero
    for name, (feat, labels) in sets.items():
        valid = labels != IGNORE_INDEX
        totals[(name, "pixels")] += int(valid.sum())
        scores = pixel_prototype_logits(feat, protos, 1.0)  # norm(f)·P
        for tau in taus:
            totals[(name, "max_prob", tau)] += float((scores / tau).softmax(1).amax(1)[valid].sum())
        totals[(name, "hit_dot")] += int((scores.argmax(1) == labels)[valid].sum())
        cosine = pixel_prototype_logits(feat, unit, 1.0)
        totals[(name, "hit_cos")] += int((cosine.argmax(1) == labels)[valid].sum())


def measure(ctx: RunContext, files: RunFiles, batches: int, taus: Taus, train: bool) -> Diagnostics:
    """Replay ``batches`` adaptation steps from the warm-up weights; means of the statistics."""
    k = ctx.config.data.num_classes
    torch.manual_seed(ctx.config.run.seed)
    inputs = {"warmup": files.warmup, "prototypes": files.initial, "pseudo_labels": files.labels}
    stage = adapt_setup(ctx, ctx.run_dir / STAGE_FOLDERS["adapt"], inputs)  # nothing written
    model, source, target = (stage.state[key] for key in ("model", "source", "target"))
    model.train(train)
    params = [p for p in model.parameters() if p.requires_grad]
    truth = _truth(ctx)
    totals: Totals = defaultdict(float)
    for _ in range(batches):
        batch = {"src": next(source), "tgt": next(target)}
        if truth is not None:
            batch["gt"] = next(truth)
        losses, features, protos, sets = _replay_step(ctx, stage.parts, batch, taus)
        _add_gradients(losses, features, params, totals)
        _add_classification(sets, protos, taus, totals)
    out = Diagnostics(k, tuple(taus), batches)
    for name in losses:
        out.terms[name] = {s: totals[(name, s)] / batches for s in TERM_STATS}
    for name in sets:
        pixels = int(totals[(name, "pixels")])
        hits = [totals[(name, hit)] / max(pixels, 1) for hit in ("hit_dot", "hit_cos")]
        out.accuracy[name] = (pixels, *hits)
        for tau in taus:
            out.max_prob[(name, tau)] = totals[(name, "max_prob", tau)] / max(pixels, 1)
    return out


def _separation(protos: Tensor) -> tuple[float, float]:
    """Mean and max cosine between the non-zero prototypes of different classes."""
    unit = F.normalize(protos[protos.norm(dim=1) > 0], dim=1)
    off = (unit @ unit.T)[~torch.eye(unit.shape[0], dtype=torch.bool)]  # empty below 2 classes
    return (float(off.mean()), float(off.max())) if off.numel() else (math.nan, math.nan)


def prototype_drift(initial: Path, final: Path) -> tuple[list[list[float]], dict[str, tuple]]:
    """Per class [seen, ‖P0‖, ‖P1‖, cos(P0, P1) or nan]; separation of the initial and final P."""
    start, end = load_state(initial), load_state(final)
    p0, p1 = start["prototypes"].double(), end["prototypes"].double()
    cos = F.cosine_similarity(p0, p1, dim=1)
    cos[(p0.norm(dim=1) == 0) | (p1.norm(dim=1) == 0)] = math.nan
    rows = torch.stack([start["seen"].double(), p0.norm(dim=1), p1.norm(dim=1), cos], 1).tolist()
    return rows, {"initial": _separation(p0), "final": _separation(p1)}


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None or math.isnan(value) else f"{value:{spec}}"


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    lines = [f"### {caption}\n", _row(header), "|" + "---|" * len(header), *map(_row, rows)]
    print("\n".join(lines) + "\n")


def print_gradients(diag: Diagnostics, ctx: RunContext, mode: str) -> None:
    cfg, ln_k, ref = ctx.config.adapt, math.log(diag.num_classes), diag.terms[CE_SRC]
    rows = [
        [name, _fmt(t["loss"]), _fmt(t["loss"] - ln_k, "+.2e"), _fmt(t["param"], ".3e"),
         _fmt(t["param"] / max(ref["param"], TINY), ".3e"), _fmt(t["cos"], "+.3f"),
         _fmt(t["feature"], ".3e"), _fmt(t["feature"] / max(ref["feature"], TINY), ".3e")]
        for name, t in diag.terms.items()
    ]  # fmt: skip
    caption = (
        f"1. Loss terms and their gradients, mean over {diag.batches} batches of "
        f"{cfg.optim.batch_size} source + {cfg.optim.batch_size} target images, model in {mode} "
        f"mode (ln K = {ln_k:.4f}, K = {diag.num_classes}; run: τ = {cfg.temperature:g}, "
        f"λ_cl = {cfg.lambda_cl:g})"
    )
    _table(caption, GRADIENT_HEADER, rows)
    src, tgt = (diag.terms[term_name(d, cfg.temperature)] for d in ("source", "target"))
    share = cfg.lambda_cl * (src["param"] + tgt["param"]) / max(ref["param"], TINY)
    print(
        f"At the run's τ = {cfg.temperature:g}: λ_cl·(‖∇θ L_src‖ + ‖∇θ L_tgt‖) = {share:.3e} "
        "× ‖∇θ source CE‖ (a bound on the contrast's share of the summed gradient).\n"
    )


def print_classification(diag: Diagnostics, run_tau: float) -> None:
    k, sets = diag.num_classes, [name for name in (SRC, TGT) if name in diag.accuracy]
    rows = [
        [f"{tau:g}" + (" (run)" if tau == run_tau else ""),
         *(_fmt(diag.max_prob[(name, tau)]) for name in sets), _fmt(1 / k)]
        for tau in diag.temperatures
    ]  # fmt: skip
    caption = "2a. Prototype softmax: mean max-probability over labelled pixels (1 = one-hot)"
    _table(caption, ["τ", *(f"max-prob, {name}" for name in sets), "uniform 1/K"], rows)
    rows = [[name, n, _fmt(d), _fmt(c), _fmt(1 / k)] for name, (n, d, c) in diag.accuracy.items()]
    _table("2b. Nearest-prototype accuracy at feature resolution (any τ)", ACCURACY_HEADER, rows)


def print_drift(rows: list[list[float]], separation: dict, names: Sequence[str]) -> None:
    table = [
        [name, "yes" if seen else "no", _fmt(n0), _fmt(n1), _fmt(cos)]
        for name, (seen, n0, n1, cos) in zip(names, rows, strict=True)
    ]
    _table("3a. Prototype drift over the adaptation: initial vs final", DRIFT_HEADER, table)
    table = [[when, _fmt(mean), _fmt(top)] for when, (mean, top) in separation.items()]
    caption = "3b. Class separation: cosine between non-zero prototypes of different classes"
    _table(caption, ["prototypes", "mean cosine", "max cosine"], table)


def print_pseudo_labels(stats_files: Sequence[Path], names: Sequence[str]) -> None:
    caption = "4. Pseudo-label quality per class (coverage = kept / predicted; accuracy of kept)"
    if not stats_files:
        print(f"### {caption}\n\nno stats.json in the pseudo-label stages\n")
        return
    stats = [json.loads(path.read_text()) for path in stats_files]
    header = ["class", *(f"{w} {p.parent.name}" for p in stats_files for w in WHAT)]
    rows = [["all", *(c for s in stats for c in (_fmt(s["coverage"]), _fmt(s.get("accuracy"))))]]
    for name in names:
        cells = [(s["per_class_coverage"], s.get("per_class_accuracy", {})) for s in stats]
        rows.append([name, *(_fmt(part.get(name)) for pair in cells for part in pair)])
    _table(caption, header, rows)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="pipeline run directory, e.g. OUT/runs/seed0/spcl")
    parser.add_argument("--batches", type=int, default=4, help="adaptation batches (4)")
    parser.add_argument("--temperatures", type=_floats, default=DEFAULT_TEMPERATURES,
                        help="τ values; the run's τ is added (default 100,1,0.1)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device (cpu)")
    parser.add_argument("--eval-mode", action="store_true", help="BN on running statistics")
    args = parser.parse_args(argv)
    if args.batches < 1 or min(args.temperatures) <= 0:
        parser.error("--batches must be at least 1 and every temperature positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    words = sys.argv[1:] if argv is None else list(argv)
    print(f"`{shlex.join(['python', 'benchmarks/contrast_diagnostics.py', *words])}`\n")
    try:
        files = locate_run(Path(args.run))
        ctx = open_context(Path(args.run), args.device)
        run_tau = ctx.config.adapt.temperature
        taus = tuple(dict.fromkeys([*args.temperatures, run_tau]))
        diag = measure(ctx, files, args.batches, taus, train=not args.eval_mode)
        drift, separation = prototype_drift(files.initial, files.final)
    except FileNotFoundError as err:  # a missing input of RUN (named), or the run's data
        print(f"contrast_diagnostics: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    names = class_table(ctx).names
    print_gradients(diag, ctx, "eval" if args.eval_mode else "train")
    print_classification(diag, run_tau)
    print_drift(drift, separation, names)
    print_pseudo_labels(files.stats, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
