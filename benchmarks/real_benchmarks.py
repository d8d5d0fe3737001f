"""The bench's rows on the real pairs (GPU): GTA5 → Cityscapes and SYNTHIA → Cityscapes.

Runs :func:`spcl.experiments.bench.run_bench` with the reference recipe (the shipped configs
``gta5_to_cityscapes`` and ``synthia_to_cityscapes``) for each pair asked for, into
``OUT/<pair>/``, and writes the same report as ``spcl bench`` with published numbers beside ours
(Cityscapes val mIoU, DeepLab-v2 ResNet-101 unless said): 19 classes for GTA5, 16 and 13 classes
for SYNTHIA. Every run is resumable: run the same command again after an interruption.

Run (one GPU; each pair is several GPU-days at the reference schedule, see docs/benchmark.md)::

    PYTHONPATH=src python benchmarks/real_benchmarks.py --out runs/real_bench \\
        --gta5 /data/gta5 --synthia /data/synthia --cityscapes /data/cityscapes \\
        [--pairs gta5_to_cityscapes,synthia_to_cityscapes] [--seeds 0,1,2] [--ablate tau,cap] \\
        [key=value ...]

``key=value`` overrides apply to every row (e.g. ``warmup.optim.batch_size=1
warmup.optim.grad_accum=4`` on a small GPU).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from spcl.cli import parse_ablations, parse_seeds
from spcl.config import resolve_config_path
from spcl.experiments.bench import run_bench
from spcl.experiments.payload import Published

SEEDS = "0,1,2"
# pair (shipped config) → the dataset root flag of its source
SOURCES = {"gta5_to_cityscapes": "gta5", "synthia_to_cityscapes": "synthia"}
SPCL_PAPER = "Xie, Li, Li, SPCL, arXiv 2111.12358 (2021), as listed by Papers with Code"
PRODA = "Zhang et al., ProDA, CVPR 2021"
SEPICO = "Xie et al., SePiCo, IEEE TPAMI 2023 (DeepLab-v2 R101)"
ADAPTSEGNET = "Tsai et al., AdaptSegNet, CVPR 2018 (multi-level, DeepLab-v2 R101)"
# metric: our results' key (miou = over the config's classes; miou_13 = SYNTHIA's 13)
PUBLISHED: dict[str, tuple[Published, ...]] = {
    "gta5_to_cityscapes": (
        Published("SPCL (paper)", "miou", 52.1, SPCL_PAPER),
        Published("ProDA", "miou", 57.5, PRODA),
        Published("SePiCo", "miou", 61.0, SEPICO),
        Published("AdaptSegNet", "miou", 42.4, ADAPTSEGNET),
    ),
    "synthia_to_cityscapes": (
        Published("ProDA", "miou", 55.5, f"{PRODA}, 16 classes"),
        Published("SePiCo", "miou", 58.1, f"{SEPICO}, 16 classes"),
        Published("AdaptSegNet", "miou_13", 46.7, f"{ADAPTSEGNET}, 13 classes"),
    ),
}


def parse_pairs(text: str) -> list[str]:
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in pairs if p not in SOURCES]
    if not pairs or unknown:
        raise argparse.ArgumentTypeError(f"--pairs: choose from {', '.join(SOURCES)}, got '{text}'")
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per pair)")
    parser.add_argument("--pairs", type=parse_pairs, default=list(SOURCES), help="comma list")
    parser.add_argument("--gta5", help="GTA5 root (images/, labels/)")
    parser.add_argument("--synthia", help="SYNTHIA RAND_CITYSCAPES root")
    parser.add_argument(
        "--cityscapes", required=True, help="Cityscapes root (leftImg8bit/, gtFine/)"
    )
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds(SEEDS), help="e.g. 0,1,2")
    parser.add_argument("--ablate", type=parse_ablations, default=(), help="e.g. tau,cap or all")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every row")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [SOURCES[p] for p in args.pairs if getattr(args, SOURCES[p]) is None]
    if missing:
        raise SystemExit(f"real_benchmarks: give --{' --'.join(missing)} for {args.pairs}")
    if not torch.cuda.is_available():
        print("real_benchmarks: no CUDA device; the reference schedule is far too long for a CPU")
    invoked = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    for pair in args.pairs:
        resolve_config_path(pair)  # fails naming the shipped configs if this one is missing
        roots = [
            f"data.source.root={getattr(args, SOURCES[pair])}",
            f"data.target.root={args.cityscapes}",
            f"data.target_val.root={args.cityscapes}",
        ]
        run_bench(
            Path(args.out) / pair,
            args.seeds,
            quick=False,
            config=pair,
            overrides=(*roots, *args.overrides),
            ablate=args.ablate,
            published=PUBLISHED[pair],
            command=invoked,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
