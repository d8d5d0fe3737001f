"""What an online adaptation step costs over a plain self-training step, measured side by side.

Builds each row's stage as a run does, with the stage's own ``setup``
(:func:`spcl.stages.self_train.setup`, :func:`spcl.stages.online.setup`) from a config (default:
the demo's) with the model's random init (``model.pretrained=null``), then times, interleaved in
one process, one training step (forward, backward, optimiser and schedule steps, and the stage's
after-step hooks: for the online rows the EMA update) of:

- ``self_train``: the self-training stage's step on one batch of target images (the baseline);
- ``online``: the online step as the config sets it (source CE, teacher forward on the clean
  target batch, ClassMix, strong augmentation, the mixed CE), and the variants with MIC, with the
  contrast on source and target from the first iteration (SPCL's EMA prototypes; SePiCo's
  ProtoCL, DistCL and BankCL on cumulative statistics with its regulariser and ratio labels) and
  without mixing;
- the two passes every row is made of: a student pass (forward, CE, backward; no optimiser step)
  and a teacher forward (no gradient), each on one batch.

Each online row's *floor* is the passes it cannot do without (``FLOORS``): the online step two
student passes (source, mixed) and one teacher forward (pseudo-labels); MIC one more student pass
(the masked image); the contrast one more teacher forward (the class statistics on the source
image) and, with mixing on, one more student pass (the features of the augmented target crop,
which the mixed pass cannot give: SePiCo runs the same extra pass, ``mode='aux'``). The table
prints each row's time over its floor's; what is above 1 is everything else (augmentation,
mixing, the losses, the statistics, the optimiser and EMA steps).

Batches are the config's batch size of random images and labels at its crop (or image) size: the
cost does not depend on the content. The stages' data streams, which the timed steps do not draw
from, are built on a tiny synthetic pair in a temporary folder. Prints a Markdown table of median
milliseconds per step and the ratio to the self-training step.

``--sections`` also times, inside the contrast rows' steps, the teacher's source pass with the
statistics update and the contrast losses' forward (a second table; their backward is in the
step's).

Run: ``python benchmarks/online_step_cost.py [--config demo] [--steps 20] [--warmup 3]
[--device cpu] [--sections] [key=value ...]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spcl.config import load_config
from spcl.config_schema import Config
from spcl.context import RunContext
from spcl.data.synthetic import generate_pair
from spcl.engine.distributed import resolve_device
from spcl.engine.loop import step_terms, weighted_total
from spcl.engine.tracking import Tracker
from spcl.method.losses import upsample_logits
from spcl.method.weighted_ce import pixel_weighted_cross_entropy
from spcl.stages import online, online_contrast, self_train
from spcl.stages.builders import build_segmenter, save_weights
from spcl.stages.online_step import online_step
from spcl.stages.self_train import self_train_step
from spcl.stages.training import TrainingSetup

Step = Callable[[], None]
PAIR_SIZE = (64, 128)  # the tiny pair the stages' streams are built on (never drawn from)
CONTRAST = ("online.contrast.source=true", "online.contrast.target=true")
SEPICO = (  # SePiCo's contrast settings beside its loss
    *CONTRAST,
    "online.contrast.statistics=cumulative",
    "online.contrast.regularizer=1.0",
    "online.contrast.labels=ratio",
)
VARIANTS = {  # row → its overrides of the config
    "online": (),
    "online + MIC": ("online.masking.enabled=true",),
    "online + contrast (source, target)": CONTRAST,
    "online + ProtoCL (SePiCo)": (*SEPICO, "online.contrast.loss=proto"),
    "online + DistCL": (*SEPICO, "online.contrast.loss=dist"),
    "online + BankCL": (*SEPICO, "online.contrast.loss=bank"),
    "online without mixing": ("online.mix.enabled=false",),
}
PASSES = ("student pass", "teacher forward")  # the rows the floors are made of
FLOORS = {  # row → (student passes, teacher forwards) it cannot do without
    "online": (2, 1),
    "online + MIC": (3, 1),
    "online + contrast (source, target)": (3, 2),
    "online + ProtoCL (SePiCo)": (3, 2),
    "online + DistCL": (3, 2),
    "online + BankCL": (3, 2),
    "online without mixing": (2, 1),
}
COMMON = (
    "model.pretrained=null",  # the random init (no weights to download)
    "online.init=pretrained",  # from it, not from a warm-up
    "online.contrast.start_iter=0",  # the contrast rows compute it from the first step
    "online.source_sampling=uniform",  # the tiny pair has no class statistics to sample by
    "data.source.sampling=uniform",
    "data.synthetic.generate=false",
    "data.num_workers=0",
    "run.progress=false",
)


def _data(root: Path) -> tuple[str, ...]:
    """Overrides that point every split at the synthetic pair in ``root``."""
    splits = {"source": "source", "target": "target", "target_val": "target"}
    return tuple(
        override
        for split, domain in splits.items()
        for override in (
            f"data.{split}.kind=synthetic",
            f"data.{split}.root={root}",
            f"data.{split}.options={{_delete_: true, domain: {domain}}}",
        )
    )


def _context(config: Config, run_dir: Path, device: torch.device) -> RunContext:
    return RunContext(config, run_dir, device, Tracker(run_dir, enabled=False, progress=False))


def _size(cfg: Config) -> tuple[int, int]:
    """The batches' size: the online crop, else the synthetic pair's image size."""
    size = cfg.online.crop or cfg.data.synthetic.size
    return size[0], size[1]


def _batch(cfg: Config, size: tuple[int, int], generator: torch.Generator) -> dict[str, Tensor]:
    b, k = cfg.online.optim.batch_size, cfg.data.num_classes
    return {
        "image": torch.randn(b, 3, *size, generator=generator),
        "label": torch.randint(0, k, (b, *size), generator=generator),
    }


def _timed(stage: TrainingSetup, terms: Callable[[int], Any]) -> Step:
    """One training step of ``stage`` on fixed batches (``terms`` of the iteration, all passes
    backpropagated together)."""
    done = [0]

    def step() -> None:
        for optimizer in stage.optimizers:
            optimizer.zero_grad(set_to_none=True)
        weighted_total(step_terms(terms(done[0])), stage.weights).backward()
        for optimizer in stage.optimizers:
            optimizer.step()
        for schedule in stage.schedulers:
            schedule.step()
        done[0] += 1
        for hook in stage.hooks:
            hook(done[0])

    return step


def _self_train(ctx: RunContext, pair: Path, size: tuple[int, int]) -> Step:
    """The self-training stage from a model of the random init, on the pair's target labels."""
    weights = save_weights(ctx, build_segmenter(ctx), ctx.run_dir / "init.pth")
    inputs = {"adapt": weights, "pseudo_labels_2": pair / "target" / "labels" / "train"}
    stage = self_train.setup(ctx, ctx.run_dir / "self_train", inputs)
    batch = _batch(ctx.config, size, torch.Generator().manual_seed(1))
    return _timed(stage, lambda _: self_train_step(stage.parts, batch))


def _online(ctx: RunContext, size: tuple[int, int]) -> Step:
    stage = online.setup(ctx, ctx.run_dir / "online", {})
    generator = torch.Generator().manual_seed(2)
    src, tgt = _batch(ctx.config, size, generator), _batch(ctx.config, size, generator)
    return _timed(stage, lambda iteration: online_step(stage.parts, iteration, src, tgt))


def _passes(ctx: RunContext, size: tuple[int, int]) -> dict[str, Step]:
    """One student pass (forward, the source CE, backward) and one teacher forward, each on one
    batch, with the online stage's own models."""
    stage = online.setup(ctx, ctx.run_dir / "online", {})
    parts = stage.parts
    batch = _batch(ctx.config, size, torch.Generator().manual_seed(3))

    def student() -> None:
        parts.student.zero_grad(set_to_none=True)
        logits = upsample_logits(parts.student(batch["image"]).logits, size, align_corners=False)
        pixel_weighted_cross_entropy(logits, batch["label"]).backward()

    @torch.no_grad()
    def teacher() -> None:
        parts.teacher(batch["image"])

    return dict(zip(PASSES, (student, teacher), strict=True))


def _steps(args: argparse.Namespace, cfg: Config, tmp: Path) -> dict[str, Step]:
    """Every row's step, each stage built by its setup in its own folder under ``tmp``."""
    images = max(cfg.self_train.optim.batch_size, cfg.online.optim.batch_size)  # one batch
    pair = generate_pair(tmp / "data", n_train=images, n_val=1, size=PAIR_SIZE, progress=False)
    size = _size(cfg)
    device = resolve_device(args.device)

    def context(name: str, extra: tuple[str, ...] = ()) -> RunContext:
        overrides = [*args.overrides, *COMMON, *_data(pair), *extra, f"run.out={tmp / name}"]
        return _context(load_config(args.config, overrides), tmp / name, device)

    steps = {"self_train": _self_train(context("self_train"), pair, size)}
    for i, (name, extra) in enumerate(VARIANTS.items()):
        steps[name] = _online(context(f"online{i}", extra), size)
    return steps | _passes(context("passes"), size)


SECTIONS = {  # function of spcl.stages.online_contrast → its line in the --sections table
    "_update_statistics": "teacher source pass + statistics update",
    "_loss": "contrast losses (forward)",
}


def _sectioned() -> dict[str, float]:
    """Wrap the :data:`SECTIONS` functions with timers; returns the seconds each has spent since
    the dict was last cleared."""
    spent: dict[str, float] = {}
    for attr, label in SECTIONS.items():
        function = getattr(online_contrast, attr)

        def timed(*args: Any, _fn: Callable = function, _label: str = label) -> Any:
            begin = time.perf_counter()
            out = _fn(*args)
            spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - begin
            return out

        setattr(online_contrast, attr, timed)
    return spent


def _time(
    steps: dict[str, Step], rounds: int, warmup: int, device: torch.device, spent: dict
) -> tuple[dict, dict]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    sections: dict[str, dict[str, list[float]]] = {name: {} for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            step()
    for _ in range(rounds):  # interleaved: machine load hits every row alike
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            spent.clear()
            begin = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - begin)
            for label, seconds in spent.items():
                sections[name].setdefault(label, []).append(seconds)
    return times, sections


def _print_sections(sections: dict[str, dict[str, list[float]]]) -> None:
    """Median milliseconds per step of each timed section, per row that ran it."""
    print("\n| step | section | median ms |")
    print("|---|---|---:|")
    for name, parts in sections.items():
        for label, values in parts.items():
            print(f"| {name} | {label} | {1000 * statistics.median(values):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sections", action="store_true", help="time the contrast's sections")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.overrides, *COMMON], require_all=False)  # for sizes
    device = resolve_device(args.device)
    size = _size(cfg)
    with tempfile.TemporaryDirectory(prefix="online_step_cost.") as tmp:
        steps = _steps(args, cfg, Path(tmp))
        spent = _sectioned() if args.sections else {}
        times, sections = _time(steps, args.steps, args.warmup, device, spent)
    base = statistics.median(times["self_train"])
    b = cfg.online.optim.batch_size
    print(
        f"config {args.config}, model {cfg.model.name} width {cfg.model.width}, "
        f"{size[0]}x{size[1]}, batch {b} (online: {b} source + {b} target), "
        f"device {device}, threads {torch.get_num_threads()}, {args.steps} steps each\n"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    print("| step | median ms | × self-training step | floor ms | × floor |")
    print("|---|---:|---:|---:|---:|")
    for name, median in medians.items():
        floor = ""
        if name in FLOORS:
            cost = sum(n * medians[p] for n, p in zip(FLOORS[name], PASSES, strict=True))
            floor = f"{1000 * cost:.0f} | {median / cost:.2f}"
        else:
            floor = " | "
        print(f"| {name} | {1000 * median:.0f} | {median / base:.2f} | {floor} |")

    if args.sections:
        _print_sections(sections)


if __name__ == "__main__":
    main()
