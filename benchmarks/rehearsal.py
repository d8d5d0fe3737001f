"""Every shipped config at its true size: one training step of each stage, seconds and memory.

For each config (``--configs``, default all) this runs ``spcl run CONFIG --fast-dev-run 2`` in a
fresh process on generated data in the real dataset layouts and with random weight files in the
official layouts (tests/rehearsal_world.py), at the configs' true image sizes, crops and batches
(``--scale 1``; a larger scale divides every spatial size, as CI's rehearsal does with 8), and
prints one row per stage: the second training step's seconds (``sec_per_iter`` in log.txt; the
first carries one-off costs), the whole stage's seconds with two steps (model building, weight
loading, passes, evaluation), the process's peak resident memory during the stage and, on CUDA,
the peak GPU memory allocated; and each config's parameter count (its model built on the meta
device).

``--amp-steps 20`` then compares bf16 autocast with fp32 over 20 online steps for one config per
model family (DeepLab-v2, MiT, DINOv2) at ``--amp-scale`` (default 8 on CPU: 20 real-size steps
of three models would take hours on two cores), with the learning-rate warm-up off so that the
20 steps train at the config's full rate: the total loss of every step side by side (at full
precision, from the run's TensorBoard events) and the largest and mean relative difference.
``--amp-configs`` picks some of them. ``--device cuda`` gives a GPU user the same tables.

Key=value overrides after the options apply to every config's stage rows: ``run.amp=bf16`` gives
the same table under bf16 autocast, ``run.stages=[online]`` one stage alone.

Run: ``PYTHONPATH=src python benchmarks/rehearsal.py [--configs a,b] [--device cpu]
[--scale 1] [--amp-steps 20] [--amp-scale 8] [--amp-configs a,b] [--out runs/rehearsal_bench]
[key=value ...]``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the data generators

from rehearsal_world import SHIPPED, STAGE_LINE, Rehearsal, fast_dev_process
from spcl.config import load_config
from spcl.models.build import build_model
from spcl.models.hrda import HRDASegmenter, HRDASettings
from spcl.stages.class_sets import run_class_table

AMP_CONFIGS = {  # one shipped config per model family
    "DeepLab-v2 R101": "gta5_to_cityscapes_daformer_dlv2",
    "MiT-B5": "gta5_to_cityscapes_daformer_mitb5",
    "MiT-B5 + HRDA": "gta5_to_cityscapes_hrda_mitb5",
    "DINOv2 ViT-B/14": "gta5_to_cityscapes_vfmuda_vitb14",
}
AMP_OVERRIDES = [  # the comparison trains at the config's full learning rate from its first step:
    "online.optim.warmup_iters=0",  # inside the warm-up (1500 steps) 20 steps barely move
]  # the weights (lr about 1e-6), so the comparison would see the forward pass only
KEPT = re.compile(r"kept (\S+)")
ITERATION = re.compile(r"\[(\w+)\] iteration (\d+): (.*)$", re.MULTILINE)
NUMBER = re.compile(r"([\w/]+)=(-?[\d.]+(?:e[-+]?\d+)?|nan|-?inf)\b")  # key=value in a log line
GIB = 2**30


def parameter_count(name: str, extra: list[str]) -> float:
    """Millions of parameters of the config's model (built on the meta device: no memory), HRDA's
    scale-attention head included when ``online.hrda`` is on."""
    config = load_config(name, extra, require_all=False)
    classes = config.data.num_classes or run_class_table(config.data).num_classes  # own data
    with torch.device("meta"):
        model = build_model(
            config.model.name,
            classes,
            width=config.model.width,
            options=config.model.options,
        )
        if config.online.hrda.enabled:
            settings = HRDASettings.from_mapping(dataclasses.asdict(config.online.hrda))
            model = HRDASegmenter(model, settings)
    return sum(p.numel() for p in model.parameters()) / 1e6


def iteration_scalars(log: Path) -> dict[tuple[str, int], dict[str, float]]:
    """(stage tag, iteration) → the scalars log.txt holds for it."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for tag, step, text in ITERATION.findall(log.read_text()):
        values = out.setdefault((tag, int(step)), {})  # scalars and validation lines merge
        values |= {key: float(value) for key, value in NUMBER.findall(text)}
    return out


def fast_dev_run(
    name: str, overrides: list[str], iterations: int, work: Path, env: dict, timeout: float
) -> tuple[int, str, Path | None]:
    """One ``--fast-dev-run --keep`` in a fresh process; (exit status, output, kept folder)."""
    status, output = fast_dev_process(
        name, overrides, iterations=iterations, keep=True, env=env, cwd=work, timeout=timeout
    )
    kept = KEPT.search(output) or re.search(r" in (\S+spcl-fast-dev-run-\S+)", output)
    return status, output, Path(kept[1]) if kept else None


def stage_rows(name: str, world: Rehearsal, args: argparse.Namespace, env: dict) -> list[str]:
    overrides = [*world.overrides(name, []), f"run.device={args.device}", *args.overrides]
    params = parameter_count(name, overrides)
    begin = time.perf_counter()
    status, output, kept = fast_dev_run(name, overrides, 2, args.out, env, args.timeout)
    rows = []
    scalars = iteration_scalars(kept / "log.txt") if kept and (kept / "log.txt").is_file() else {}
    for line in output.splitlines():
        match = STAGE_LINE.match(line)
        if not match:
            continue
        stage, ok, seconds = match.groups()
        step = scalars.get((stage, 2), {}).get("sec_per_iter")
        ram = re.search(r"([\d.]+) GiB RAM", line)
        gpu = re.search(r"([\d.]+) GiB GPU", line)
        rows.append(
            f"| {name} | {params:.1f} | {stage} | {'' if step is None else f'{step:.2f}'} | "
            f"{float(seconds):.1f} | {ram[1] if ram else ''} | {gpu[1] if gpu else ''} | {ok} |"
        )
    if status != 0:
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        why = "killed (out of memory?)" if status in (-9, 137) else last
        rows.append(f"| {name} | {params:.1f} | (failed) | | | | | {why[:120]} |")
    if kept is not None:
        shutil.rmtree(kept, ignore_errors=True)
    print(f"  {name}: {time.perf_counter() - begin:.0f} s", file=sys.stderr, flush=True)
    return rows


def amp_losses(
    name: str, world: Rehearsal, amp: str, args: argparse.Namespace, env: dict
) -> tuple[list[float], float]:
    """The total loss of each of ``--amp-steps`` online steps of ``name`` under ``run.amp=amp``,
    read at full precision from the run's TensorBoard events (log.txt rounds to four digits),
    and the learning rate of the last step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = [
        *world.overrides(name, []),
        f"run.device={args.device}",
        f"run.amp={amp}",
        "run.stages=[online]",
        *AMP_OVERRIDES,
    ]
    status, output, kept = fast_dev_run(name, overrides, args.amp_steps, args.out, env, 1e5)
    if status != 0 or kept is None:
        raise RuntimeError(f"{name} with run.amp={amp} failed: {output[-2000:]}")
    events = EventAccumulator(str(kept / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    losses = {event.step: event.value for event in events.Scalars("online/loss")}
    lr = events.Scalars("online/lr")[-1].value
    shutil.rmtree(kept, ignore_errors=True)
    return [losses[i] for i in range(1, args.amp_steps + 1)], lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="all", help="comma list of shipped configs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", type=int, default=1, help="divide every spatial size by this")
    parser.add_argument("--amp-steps", type=int, default=20, help="0: no bf16/fp32 comparison")
    parser.add_argument("--amp-scale", type=int, default=8)
    parser.add_argument(
        "--amp-configs",
        default="all",
        help="comma list of the bf16 comparison's configs (default: one per model family)",
    )
    parser.add_argument("--skip-stages", action="store_true", help="the bf16 comparison only")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per config")
    parser.add_argument("--out", type=Path, default=Path("runs/rehearsal_bench"))
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="applied to every config's stage rows (e.g. run.amp=bf16 'run.stages=[online]')",
    )
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    names = SHIPPED if args.configs == "all" else args.configs.split(",")
    tmp = args.out / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if not args.skip_stages:
        world = Rehearsal(args.out / f"world_scale{args.scale}", scale=args.scale)
        env["TORCH_HOME"] = str(world.torch_home)
        extra = f", {' '.join(args.overrides)}" if args.overrides else ""
        print(f"## One training step of every stage (sizes ÷ {args.scale}{extra})\n")
        print("| config | params (M) | stage | step s | stage s | peak RAM GiB | peak GPU GiB | |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
        for name in names:
            for row in stage_rows(name, world, args, env):
                print(row, flush=True)
    if args.amp_steps > 0:
        world = Rehearsal(args.out / f"world_scale{args.amp_scale}", scale=args.amp_scale)
        env["TORCH_HOME"] = str(world.torch_home)
        print(
            f"\n## bf16 autocast against fp32, {args.amp_steps} online steps (÷ {args.amp_scale}, "
            f"{' '.join(AMP_OVERRIDES)})\n"
        )
        chosen = None if args.amp_configs == "all" else args.amp_configs.split(",")
        unknown = sorted(set(chosen or []) - set(AMP_CONFIGS.values()))
        if unknown:
            parser.error(f"--amp-configs: {unknown} not among {sorted(AMP_CONFIGS.values())}")
        for family, name in AMP_CONFIGS.items():
            if chosen is not None and name not in chosen:
                continue
            fp32, lr = amp_losses(name, world, "off", args, env)
            bf16, _ = amp_losses(name, world, "bf16", args, env)
            diffs = [abs(b - f) / max(abs(f), 1e-12) for f, b in zip(fp32, bf16, strict=True)]
            print(
                f"{family} ({name}): relative difference of the loss: max {max(diffs):.3%}, "
                f"mean {sum(diffs) / len(diffs):.3%}; fp32 loss {fp32[0]:.4f} → {fp32[-1]:.4f} "
                f"(learning rate at the last step {lr:.3g})"
            )
            print("| step | fp32 loss | bf16 loss | relative difference |")
            print("| ---: | ---: | ---: | ---: |")
            for i, (f, b, d) in enumerate(zip(fp32, bf16, diffs, strict=True), start=1):
                print(f"| {i} | {f:.5f} | {b:.5f} | {d:.3%} |")
            print(flush=True)


if __name__ == "__main__":
    main()
