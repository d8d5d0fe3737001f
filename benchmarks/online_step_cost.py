"""What an online adaptation step costs over a plain self-training step, measured side by side.

Builds the model of a config (default: the demo's), then times, interleaved in one process, one
training step (forward, backward, optimiser step, and for the online rows the EMA update) of:

- ``self_train``: the self-training stage's step on one batch of target images (the baseline);
- ``online``: the online step as the config sets it (source CE, teacher forward on the clean
  target batch, ClassMix, strong augmentation, the mixed CE), and the variants with MIC, with the
  prototype contrast (source and target) and without mixing.

Batches are the config's batch size of random images and labels at its crop (or image) size: the
cost does not depend on the content. Prints a Markdown table of median milliseconds per step and
the ratio to the self-training step.

Run: ``python benchmarks/online_step_cost.py [--config demo] [--steps 20] [--warmup 3]
[--device cpu] [key=value ...]``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from spcl.base import IMAGENET_MEAN, IMAGENET_STD
from spcl.config import load_config
from spcl.config_schema import Config, OnlineConfig
from spcl.engine.distributed import resolve_device
from spcl.engine.loop import weighted_total
from spcl.method.ema import disable_teacher_dropout, init_teacher, update_teacher
from spcl.method.prototypes import PrototypeBank
from spcl.models import build_model
from spcl.stages.builders import optimizer_and_schedule
from spcl.stages.online_step import OnlineParts, SeededGenerator, online_step, online_weights
from spcl.stages.self_train import self_train_step

Step = Callable[[], None]


def _batch(cfg: Config, size: tuple[int, int], generator: torch.Generator) -> dict:
    b, k = cfg.online.optim.batch_size, cfg.data.num_classes
    return {
        "image": torch.randn(b, 3, *size, generator=generator),
        "label": torch.randint(0, k, (b, *size), generator=generator),
    }


def _model(cfg: Config, device: torch.device) -> torch.nn.Module:
    model = build_model(
        cfg.model.name,
        cfg.data.num_classes,
        width=cfg.model.width,
        freeze_bn=False,
        options=cfg.model.options,
    )
    return model.to(device).train()


def _self_train(cfg: Config, device: torch.device, size: tuple[int, int]) -> Step:
    net = _model(cfg, device)
    optimizer, _ = optimizer_and_schedule(net, cfg.self_train.optim)
    batch = _batch(cfg, size, torch.Generator().manual_seed(1))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        weighted_total(self_train_step(net, device, batch), {"seg": 1.0}).backward()
        optimizer.step()

    return step


def _online(cfg: Config, online: OnlineConfig, device: torch.device, size: tuple[int, int]) -> Step:
    student = _model(cfg, device)
    teacher = copy.deepcopy(student)
    init_teacher(teacher, student)
    disable_teacher_dropout(teacher)
    optimizer, schedule = optimizer_and_schedule(student, online.optim)
    bank = None
    if online.contrast.source or online.contrast.target:
        bank = PrototypeBank(cfg.data.num_classes, student.feature_channels, 0.1, "keep")
        bank = bank.to(device)
    parts = OnlineParts(
        cfg=online,
        num_classes=cfg.data.num_classes,
        student=student,
        teacher=teacher,
        device=device,
        generator=SeededGenerator(0),
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        schedule=schedule,
        bank=bank,
    )
    weights = online_weights(online, feature_distance=False)
    generator = torch.Generator().manual_seed(2)
    src, tgt = _batch(cfg, size, generator), _batch(cfg, size, generator)
    done = [0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        weighted_total(online_step(parts, src, tgt), weights).backward()
        optimizer.step()
        schedule.step()
        done[0] += 1
        update_teacher(teacher, student, done[0], online.teacher.alpha)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    cfg = load_config(args.config, list(args.overrides))
    device = resolve_device(args.device)
    size = tuple(cfg.online.crop) if cfg.online.crop else tuple(cfg.data.synthetic.size)
    on = dataclasses.replace(
        cfg.online, contrast=dataclasses.replace(cfg.online.contrast, start_iter=0)
    )
    variants = {
        "online": on,
        "online + MIC": dataclasses.replace(
            on, masking=dataclasses.replace(on.masking, enabled=True)
        ),
        "online + contrast (source, target)": dataclasses.replace(
            on, contrast=dataclasses.replace(on.contrast, source=True, target=True)
        ),
        "online without mixing": dataclasses.replace(
            on, mix=dataclasses.replace(on.mix, enabled=False)
        ),
    }
    steps = {"self_train": _self_train(cfg, device, size)}
    steps |= {name: _online(cfg, online, device, size) for name, online in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    for _ in range(args.steps):  # interleaved: machine load hits every row alike
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            begin = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - begin)
    base = statistics.median(times["self_train"])
    b = cfg.online.optim.batch_size
    print(
        f"config {args.config}, model {cfg.model.name} width {cfg.model.width}, "
        f"{size[0]}x{size[1]}, batch {b} (online: {b} source + {b} target), "
        f"device {device}, threads {torch.get_num_threads()}, {args.steps} steps each\n"
    )
    print("| step | median ms | × self-training step |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {1000 * median:.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
