"""Time and memory of SPCL's method ops on this machine; prints Markdown tables.

(a) prototype update, vectorised (``PrototypeBank.update``) vs a per-class loop written like the
    reference (a boolean mask repeated over all channels, ``masked_select``, mean);
(b) contrastive loss forward + backward;
(c) the share of those ops in one DeepLab-v2 ResNet-101 train step (2 source + 2 target images);
(d) peak memory of the streaming thresholds vs the reference's ``np.append`` of every pixel.

Run: ``PYTHONPATH=src python benchmarks/method_ops.py [--repeats N] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spcl.method.contrastive import (
    REFERENCE_TEMPERATURE,
    pixel_prototype_loss,
    spcl_contrastive_loss,
)
from spcl.method.prototypes import REFERENCE_MOMENTUM, PrototypeBank
from spcl.method.pseudo_labels import REFERENCE_THRESHOLD_CAP, ThresholdEstimator

NUM_CLASSES = 19  # Cityscapes train ids
PRESENT_CLASSES = 17  # labels drawn from the first 17 classes: two stay absent
IGNORED_FRACTION = 0.1  # share of pixels labelled 255
IGNORE = 255
CHANNELS = 2048  # ResNet-101 layer4
PROTO_FEATURE_SIZE = (65, 129)  # DeepLab-v2 OS8 features of a 512×1024 image
STEP_IMAGE_SIZE = (260, 516)  # → 33×65 features; 512×1024 is far too slow on 2 CPU cores
QUICK_STEP_IMAGE_SIZE = (132, 260)  # → 17×33 features
BATCH_PER_DOMAIN = 2  # 2 source + 2 target images per step
MEMORY_IMAGE_SIZE = (512, 1024)  # the reference's pseudo-label resolution
MEMORY_IMAGE_COUNTS = (50, 200)
QUICK_MEMORY_IMAGE_COUNTS = (50,)
MAX_ALLOWED_DIFF = 1e-5  # vectorised vs loop prototypes
SOURCE_TEMPERATURE = 1.8
MIB = 2**20
KIB = 2**10


def _timeit(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run if asked."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_inputs(batch: int, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, CHANNELS, *size, generator=gen)
    labels = torch.randint(0, PRESENT_CLASSES, (batch, *size), generator=gen)
    labels[torch.rand(batch, *size, generator=gen) < IGNORED_FRACTION] = IGNORE
    return features, labels


def reference_loop_update(
    prototypes: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, momentum: float
) -> torch.Tensor:
    """The reference's update: per present class, a (C, B, h, w) repeated mask and masked_select."""
    feat = F.normalize(features, p=2, dim=1).transpose(0, 1)  # (C, B, h, w)
    batch_mean = torch.zeros_like(prototypes)  # absent classes: zero batch mean (zero fill)
    for cls in torch.unique(labels).tolist():
        if cls == IGNORE:
            continue
        mask = (labels == cls).unsqueeze(0).repeat(feat.shape[0], 1, 1, 1)
        batch_mean[cls] = feat.masked_select(mask).view(feat.shape[0], -1).mean(dim=1)
    return momentum * prototypes + (1.0 - momentum) * batch_mean


def bench_prototype_update(repeats: int) -> dict[str, float]:
    features, labels = _random_inputs(BATCH_PER_DOMAIN, PROTO_FEATURE_SIZE, seed=0)
    start = F.normalize(torch.randn(NUM_CLASSES, CHANNELS), dim=1)
    bank = PrototypeBank(NUM_CLASSES, CHANNELS)

    def vectorised() -> None:
        bank.initialize(start)
        bank.update(features, labels)

    vec_time = _timeit(vectorised, repeats)
    with torch.no_grad():  # the loop is ~20-40x slower: one timed run, which is also checked
        start_time = time.perf_counter()
        expected = reference_loop_update(start, features, labels, REFERENCE_MOMENTUM)
        loop_time = time.perf_counter() - start_time
    vectorised()
    diff = (bank.prototypes - expected).abs().max().item()
    return {"loop": loop_time, "vectorised": vec_time, "diff": diff}


def spcl_ops_time(size: tuple[int, int], repeats: int) -> float:
    """Prototype update on the source batch + L_cl (source and target) forward and backward."""
    src_feat, src_mask = _random_inputs(BATCH_PER_DOMAIN, size, seed=1)
    tgt_feat, tgt_mask = _random_inputs(BATCH_PER_DOMAIN, size, seed=2)
    src_feat.requires_grad_(True)
    tgt_feat.requires_grad_(True)
    bank = PrototypeBank(NUM_CLASSES, CHANNELS)

    def ops() -> None:
        bank.update(src_feat.detach(), src_mask)
        losses = spcl_contrastive_loss(
            src_feat, src_mask, tgt_feat, tgt_mask, bank.prototypes, REFERENCE_TEMPERATURE
        )
        losses.total.backward()

    return _timeit(ops, repeats)


def contrastive_time(size: tuple[int, int], repeats: int) -> float:
    """One pixel-prototype loss term (2 images) forward + backward."""
    features, labels = _random_inputs(BATCH_PER_DOMAIN, size, seed=3)
    features.requires_grad_(True)
    protos = F.normalize(torch.randn(NUM_CLASSES, CHANNELS), dim=1)

    def step() -> None:
        pixel_prototype_loss(features, labels, protos, REFERENCE_TEMPERATURE).backward()

    return _timeit(step, repeats)


def train_step_time(image_size: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """One DeepLab-v2 R101 step without the SPCL ops: 2+2 images, source CE, backward, SGD."""
    from spcl.models.build import build_model  # heavy; only needed here

    model = build_model(name="deeplabv2_resnet101", num_classes=NUM_CLASSES, freeze_bn=True)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(2 * BATCH_PER_DOMAIN, 3, *image_size, generator=gen)
    src_labels = torch.randint(0, NUM_CLASSES, (BATCH_PER_DOMAIN, *image_size), generator=gen)
    start = time.perf_counter()
    src = model(images[:BATCH_PER_DOMAIN])
    tgt = model(images[BATCH_PER_DOMAIN:])
    src_logits = F.interpolate(src.logits, size=image_size, mode="bilinear", align_corners=True)
    loss = F.cross_entropy(src_logits / SOURCE_TEMPERATURE, src_labels, ignore_index=IGNORE)
    (loss + 0.0 * tgt.logits.sum()).backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start, tuple(src.features.shape[2:])


def _generate_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Confidence uniform in [1/K, 1] (float32) and a random predicted class (int64)."""
    conf = rng.uniform(1.0 / NUM_CLASSES, 1.0, size=MEMORY_IMAGE_SIZE).astype(np.float32)
    pred = rng.integers(0, NUM_CLASSES, size=MEMORY_IMAGE_SIZE, dtype=np.int64)
    return conf, pred


def _reference_thresholds(num_images: int, rng: np.random.Generator) -> list[float]:
    confs = np.array([], dtype=np.float32)
    preds = np.array([], dtype=np.int64)
    for _ in range(num_images):
        conf, pred = _generate_image(rng)
        confs = np.append(confs, conf.ravel())  # what the reference does, image by image
        preds = np.append(preds, pred.ravel())
    out = []
    for cls in range(NUM_CLASSES):
        values = np.sort(confs[preds == cls])
        index = int(np.round(0.5 * len(values)))
        out.append(float(min(values[index], REFERENCE_THRESHOLD_CAP)) if len(values) else 0.0)
    return out


def _streaming_thresholds(num_images: int, rng: np.random.Generator) -> list[float]:
    estimator = ThresholdEstimator(NUM_CLASSES)
    for _ in range(num_images):
        conf, pred = _generate_image(rng)
        estimator.update_from_predictions(torch.from_numpy(conf), torch.from_numpy(pred))
    return estimator.thresholds().tolist()


def _peak_rss_bytes() -> int:
    """This process's peak resident memory since exec (VmHWM; ru_maxrss would include the
    parent's peak from before the fork on Linux)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


def memory_child(mode: str, num_images: int) -> None:
    """Run one threshold computation in this (fresh) process; print its peaks as JSON."""
    baseline = _peak_rss_bytes()
    rng = np.random.default_rng(5)
    compute = _reference_thresholds if mode == "reference" else _streaming_thresholds
    tracemalloc.start()
    start = time.perf_counter()
    thresholds = compute(num_images, rng)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_delta = _peak_rss_bytes() - baseline
    result = {"traced": traced_peak, "rss": rss_delta, "seconds": seconds, "thr": thresholds}
    print(json.dumps(result))


def bench_threshold_memory(counts: tuple[int, ...]) -> list[dict[str, object]]:
    src_dir = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src_dir, os.environ.get("PYTHONPATH", "")])}
    rows = []
    for num_images in counts:
        results = {}
        for mode in ("reference", "streaming"):
            cmd = [sys.executable, __file__, "--memory-child", mode, str(num_images)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        diff = max(
            abs(a - b)
            for a, b in zip(results["reference"]["thr"], results["streaming"]["thr"], strict=True)
        )
        rows.append({"images": num_images, **results, "diff": diff})
    return rows


def _print_tables(args: argparse.Namespace) -> None:
    threads = torch.get_num_threads()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {threads} CPU threads, load average {load} at start; "
        f"median of {args.repeats} runs after a warm-up unless said\n"
    )
    proto = bench_prototype_update(args.repeats)
    size = f"features (2, {CHANNELS}, {PROTO_FEATURE_SIZE[0]}, {PROTO_FEATURE_SIZE[1]})"
    print(f"### (a) prototype update, {size}, {NUM_CLASSES} classes ({PRESENT_CLASSES} present)\n")
    print("| implementation | time (ms) | speed-up | max abs diff |")
    print("|---|---|---|---|")
    loop_name = "reference-style loop (mask repeated over C), 1 run"
    print(f"| {loop_name} | {proto['loop'] * 1e3:.1f} | 1.0x | |")
    speedup = proto["loop"] / proto["vectorised"]
    print(
        f"| PrototypeBank.update (one-hot matmul) | {proto['vectorised'] * 1e3:.1f} | "
        f"{speedup:.1f}x | {proto['diff']:.2e} |\n"
    )
    if proto["diff"] > MAX_ALLOWED_DIFF:
        print(f"**WARNING: difference {proto['diff']:.2e} exceeds {MAX_ALLOWED_DIFF}**\n")
    cl = contrastive_time(PROTO_FEATURE_SIZE, args.repeats)
    print(f"### (b) contrastive loss, one term, {size}, forward + backward\n")
    print(f"| op | time (ms) |\n|---|---|\n| pixel_prototype_loss fwd+bwd | {cl * 1e3:.1f} |\n")

    image_size = QUICK_STEP_IMAGE_SIZE if args.quick else STEP_IMAGE_SIZE
    step, feat_size = train_step_time(image_size)
    ops = spcl_ops_time(feat_size, args.repeats)
    with torch.no_grad():
        src_feat, src_mask = _random_inputs(BATCH_PER_DOMAIN, feat_size, seed=1)
        start = torch.zeros(NUM_CLASSES, CHANNELS)
        loop = _timeit(
            lambda: reference_loop_update(start, src_feat, src_mask, REFERENCE_MOMENTUM),
            repeats=1,
            warmup=False,
        )
    print(
        f"### (c) share of one DeepLab-v2 R101 train step: 2 source + 2 target images "
        f"{image_size[0]}x{image_size[1]}, features {feat_size[0]}x{feat_size[1]}, frozen BN\n"
    )
    print("| part | time (s) | share of step |\n|---|---|---|")
    print(f"| model step (fwd 4 images, source CE, bwd, SGD), 1 run | {step:.2f} | |")
    print(
        f"| SPCL ops (bank update + L_cl src+tgt fwd+bwd) | {ops:.4f} | {ops / (step + ops):.2%} |"
    )
    print(
        f"| reference-style loop update alone, 1 run | {loop:.4f} | {loop / (step + loop):.2%} |\n"
    )

    counts = QUICK_MEMORY_IMAGE_COUNTS if args.quick else MEMORY_IMAGE_COUNTS
    print(
        f"### (d) threshold statistics, {MEMORY_IMAGE_SIZE[0]}x{MEMORY_IMAGE_SIZE[1]} images, "
        f"{NUM_CLASSES} classes (conf ~ U[1/{NUM_CLASSES}, 1] and pred drawn directly, "
        "not softmax maps); each run in a fresh process\n"
    )
    print(
        "tracemalloc sees numpy allocations only (not torch's); the peak RSS increase "
        "(VmHWM after - before) sees both.\n"
    )
    print("| images | method | tracemalloc peak (MiB) | peak RSS increase (MiB) | time (s) |")
    print("|---|---|---|---|---|")
    for row in bench_threshold_memory(counts):
        for mode, name in (("reference", "np.append every pixel"), ("streaming", "histograms")):
            res = row[mode]
            print(
                f"| {row['images']} | {name} | {res['traced'] / MIB:.1f} | "
                f"{res['rss'] / MIB:.1f} | {res['seconds']:.1f} |"
            )
        print(f"| {row['images']} | max abs threshold diff | {row['diff']:.2e} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per op (median)")
    parser.add_argument("--quick", action="store_true", help="smaller step, 50 images only")
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("MODE", "IMAGES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    _print_tables(args)


if __name__ == "__main__":
    main()
