"""Parameters, train-step time and peak memory of the registered backbone families; prints Markdown.

Rows: DeepLab-v2 ResNet-101, every DINOv2 segmenter (``dinov2_*``) and every MiT segmenter
(names containing ``mit``) found in :data:`spcl.models.build.MODEL_REGISTRY` when the script runs,
at the published width. Each row runs in a fresh subprocess: build the model, one warm-up
forward + backward (cross-entropy on logits upsampled to the input, as training does), then the
median of ``--repeats`` timed ones, at 512 × 512, batch 2.

* CPU, float32: peak memory is the process's peak resident set (``ru_maxrss``) minus the peak
  just before the model was built (imports, input tensors), so it counts weights, gradients,
  activations and allocator slack of this one model. A fresh process per row keeps one model's
  freed memory from hiding the next one's. The worker's address space is capped (``--mem-cap``,
  default 60 % of the memory available at start) so that a model too large for the machine fails
  with a MemoryError in its own row instead of waking the OOM killer.
* CUDA, when available: the same step under bf16 autocast with channels_last inputs and model;
  peak memory is ``torch.cuda.max_memory_allocated``. Without CUDA the script says so.

Run: ``PYTHONPATH=src python benchmarks/backbones.py [--models NAME ...] [--repeats N]``.
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
from pathlib import Path

IMAGE_SIZE = 512  # DAFormer / VFM-UDA-scale crops are 512-1024; 512 keeps CPU rows feasible
BATCH = 2  # DAFormer: 2 source images per step
NUM_CLASSES = 19  # Cityscapes train ids
CPU_REPEATS = 1  # timed steps after the warm-up (a ViT-L step takes minutes on 2 cores)
GPU_REPEATS = 5
MEM_CAP_SHARE = 0.6  # worker address-space cap: this share of MemAvailable at start (the
# machine is shared: the rest stays for other processes)
KIB, GIB = 2**10, 2**30
RESNET_ROW = "deeplabv2_resnet101"
OOM_MESSAGES = ("can't allocate memory", "out of memory")  # CPU allocator, CUDA


def _rows(registry: dict) -> list[str]:
    """ResNet-101 DeepLab-v2, then every DINOv2 and MiT entry of the registry."""
    from spcl.models.vit import DINOV2_VARIANTS

    names = sorted(registry)
    # S, B, L, g (the variants' order), each without and with registers
    variants = [f"dinov2_{v}{r}" for v in DINOV2_VARIANTS for r in ("", "_reg")]
    order = {name: i for i, name in enumerate(variants)}
    dinov2 = sorted((n for n in names if n.startswith("dinov2_")), key=lambda n: order.get(n, 99))
    return [*(n for n in names if n == RESNET_ROW), *dinov2, *(n for n in names if "mit" in n)]


def _mem_available() -> int:
    """MemAvailable from /proc/meminfo, bytes (0 where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KIB
    except OSError:
        pass
    return 0


def _step_fn(model, x, labels):  # type: ignore[no-untyped-def]
    import torch.nn.functional as F

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(x).logits
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear")
        F.cross_entropy(logits, labels).backward()

    return step


def _worker(name: str, device: str, repeats: int) -> dict:
    """One row, in this (fresh) process."""
    import torch

    from spcl.models.build import build_model

    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.randint(NUM_CLASSES, (BATCH, IMAGE_SIZE, IMAGE_SIZE))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB
    model = build_model(name, NUM_CLASSES).train()
    params = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.backbone.parameters())
    if device == "cuda":
        model = model.cuda().to(memory_format=torch.channels_last)
        x = x.cuda().to(memory_format=torch.channels_last)
        labels = labels.cuda()
        torch.cuda.reset_peak_memory_stats()
    step = _step_fn(model, x, labels)
    times = []
    try:
        for i in range(repeats + 1):  # the first is the warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    except (MemoryError, RuntimeError) as err:  # CPU allocator failures are RuntimeErrors
        if not isinstance(err, MemoryError) and not any(m in str(err) for m in OOM_MESSAGES):
            raise
        return {"params": params, "encoder": encoder, "error": "out of memory"}
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB - before
    return {"params": params, "encoder": encoder, "seconds": statistics.median(times), "peak": peak}


def _run_row(name: str, device: str, repeats: int, mem_cap: int) -> dict:
    """Run :func:`_worker` for ``name`` in a fresh interpreter (memory capped on the CPU)."""

    def cap() -> None:
        if mem_cap:
            resource.setrlimit(resource.RLIMIT_AS, (mem_cap, mem_cap))

    command = [sys.executable, __file__, "--worker", name, "--device", device]
    command += ["--repeats", str(repeats)]
    done = subprocess.run(
        command, capture_output=True, text=True, preexec_fn=cap if device == "cpu" else None
    )
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(results: dict[str, dict], device: str, cap: int = 0) -> str:
    note = f" under the {cap / GIB:.1f} GiB cap" if cap else ""
    label = "CPU float32" if device == "cpu" else "CUDA bf16 + channels_last"
    mem = "peak RSS increase" if device == "cpu" else "peak allocated"
    lines = [
        f"| model | params (M) | encoder (M) | fwd+bwd s ({label}) | {mem} (GiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        if "error" in r:
            counts = (f"{r[k] / 1e6:.1f}" if k in r else "" for k in ("params", "encoder"))
            why = r["error"] + (note if r["error"] == "out of memory" else "")
            lines.append(f"| `{name}` | {' | '.join(counts)} | not run: {why} | |")
            continue
        lines.append(
            f"| `{name}` | {r['params'] / 1e6:.1f} | {r['encoder'] / 1e6:.1f} | "
            f"{r['seconds']:.2f} | {r['peak'] / GIB:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="registry names (default: every family row)")
    parser.add_argument("--repeats", type=int, help="timed steps after the warm-up")
    parser.add_argument("--mem-cap", type=float, help="worker address-space cap, GiB (CPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.device, args.repeats or CPU_REPEATS)))
        return

    import torch

    from spcl.models.build import MODEL_REGISTRY

    names = args.models or _rows(MODEL_REGISTRY)
    cap = int(args.mem_cap * GIB) if args.mem_cap else int(_mem_available() * MEM_CAP_SHARE)
    print(
        f"# backbones: {BATCH}×3×{IMAGE_SIZE}×{IMAGE_SIZE}, {NUM_CLASSES} classes, torch "
        f"{torch.__version__}, {os.cpu_count()} CPU threads, worker memory cap "
        f"{cap / GIB:.1f} GiB\n"
    )
    cpu = {}
    for name in names:
        cpu[name] = _run_row(name, "cpu", args.repeats or CPU_REPEATS, cap)
        print(f"  {name}: {cpu[name]}", file=sys.stderr, flush=True)
    print(_table(cpu, "cpu", cap))
    if not torch.cuda.is_available():
        print("\nCUDA not available: GPU rows not run")
        return
    gpu = {name: _run_row(name, "cuda", args.repeats or GPU_REPEATS, 0) for name in names}
    print()
    print(_table(gpu, "cuda"))


if __name__ == "__main__":
    main()
