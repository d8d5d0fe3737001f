"""``spcl bench``: what each part of SPCL buys, over seeds, with controls and ablations.

Every row (:data:`spcl.experiments.rows.BENCH_ROWS`) is the target-val mIoU of one model on the
same budget: source-only, with AdaBN (``evaluate.adabn``: target BatchNorm statistics, no gradient
step), the adversarial warm-up, the self-training control (same pseudo-labels and steps, source
CE + target CE, no contrast), SPCL with contrast on source only / target only / both, SPCL +
self-training, and the oracle (warm-up on target labels); ablations
(:data:`~spcl.experiments.rows.ABLATIONS`) add variants of ``spcl``. Each seed sets the training
seed and, for the synthetic pair, the generator seed. Runs live in ``OUT/runs/seed<S>/<run>`` and
resume; stages that runs truly share are computed once (:mod:`spcl.experiments.runner`).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spcl.base import UsageError
from spcl.config import load_config
from spcl.experiments.payload import Published, build_payload
from spcl.experiments.report import format_summary, write_outputs
from spcl.experiments.rows import ABLATIONS, BENCH_ROWS, QUICK_OVERRIDES, ROWS
from spcl.experiments.runner import Layout, run_seed
from spcl.experiments.sharing import total_stage_seconds

__all__ = ["BENCH_CONFIG", "DEFAULT_SEEDS", "QUICK_SEEDS", "run_bench"]

BENCH_CONFIG = "demo"  # shipped config the bench runs by default
DEFAULT_SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)  # seeds of `spcl bench` and of `spcl bench --quick`
TITLE = "spcl bench: what each part of SPCL buys"


def _bench_command(
    out: Path, seeds: Sequence[int], quick: bool, config: str, overrides: Sequence[str],
    ablate: Sequence[str], rows: Sequence[str] = BENCH_ROWS,
) -> str:  # fmt: skip
    words = ["spcl", "bench", "--out", str(out), "--seeds", ",".join(map(str, seeds))]
    words += ["--rows", ",".join(rows)] if tuple(rows) != BENCH_ROWS else []
    words += ["--quick"] if quick else []
    words += ["--config", config] if config != BENCH_CONFIG else []
    words += ["--ablate", ",".join(ablate)] if ablate else []
    return shlex.join([*words, *overrides])


def machine_info(config: str, common: Sequence[str]) -> dict[str, Any]:
    """Versions, device and CPU count of this machine (for the report's setup line)."""
    from spcl.context import environment
    from spcl.engine.distributed import resolve_device

    device = resolve_device(load_config(config, list(common), require_all=False).run.device)
    return {**environment(device), "cpu_count": os.cpu_count()}


def run_bench(
    out: str | Path,
    seeds: Sequence[int],
    *,
    quick: bool,
    config: str = BENCH_CONFIG,
    overrides: Sequence[str] = (),
    ablate: Sequence[str] = (),
    rows: Sequence[str] = BENCH_ROWS,
    published: Sequence[Published] = (),
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every row for every seed into ``out``; write and return the results.

    Args:
        out: bench folder (``data/``, ``runs/seed<S>/<run>/``, ``results.json``, ``report.md``,
            ``miou.png``, ``per_class_iou.png``).
        seeds: bench seeds; each sets ``run.seed`` and, for the synthetic pair, its generator seed.
        quick: tiny sizes and schedules (:data:`~spcl.experiments.rows.QUICK_OVERRIDES`), for
            CI; numbers mean nothing.
        config: YAML file or shipped config name (``demo``, ``gta5_to_cityscapes``, ...).
        overrides: ``key=value`` applied to every row before the row's own switches.
        ablate: names from :data:`~spcl.experiments.rows.ABLATIONS` (variants of ``spcl``).
        rows: names of :data:`~spcl.experiments.rows.ROWS` to run and report, in report order
            (default all); e.g. the demo's rows first, the rest in a later call.
        published: other papers' numbers to print beside ours (benchmarks/real_benchmarks.py).
        command: the command line to record; None records the equivalent ``spcl bench`` one.

    Returns:
        The content of ``results.json`` (:func:`spcl.experiments.payload.build_payload`).

    Raises:
        UsageError: no seed, a repeated seed, an unknown ablation or row, or no row.
    """
    out, seeds, ablate, rows = Path(out), list(seeds), tuple(ablate), tuple(rows)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds must be distinct and at least one, got {seeds}")
    unknown = [a for a in ablate if a not in ABLATIONS]
    if unknown:
        raise UsageError(f"--ablate: unknown ablation(s) {unknown}; valid: {', '.join(ABLATIONS)}")
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise UsageError(f"--rows: unknown or no row(s) {unknown}; valid: {', '.join(ROWS)}")
    common = [*(QUICK_OVERRIDES if quick else ()), *overrides]
    layout = Layout(out, per_seed=True)
    begin = time.perf_counter()
    per_seed, commands, specs = {}, {}, []
    for seed in seeds:
        result = run_seed(layout, seed, config, common, rows, ablate)
        per_seed[seed], commands[seed], specs = result.rows, result.commands, result.specs
    meta = {
        "seeds": seeds,
        "quick": quick,
        "config": config,
        "overrides": list(overrides),
        "ablate": list(ablate),
        "rows": list(rows),
        "command": command or _bench_command(out, seeds, quick, config, overrides, ablate, rows),
        "run_commands": commands[seeds[0]],
        "seconds": round(time.perf_counter() - begin, 1),
        "stage_seconds": total_stage_seconds(out / "runs"),
        "machine": machine_info(config, common),
    }
    payload = build_payload(specs, per_seed, meta, published=published)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 writes the report
        write_outputs(out, payload, title=TITLE)
        print(format_summary(payload))
        print(f"\nreport: {out / 'report.md'}   results: {out / 'results.json'}")
    return payload
