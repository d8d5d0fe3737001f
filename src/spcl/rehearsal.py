"""``spcl run CONFIG --fast-dev-run``: every stage of a config, briefly, before booking a GPU.

The name and the idea are Lightning's ``fast_dev_run``: run every stage of the config in order
for a couple of iterations on a few images, with the config's own model, weight file, crops,
batch sizes and switches, into a temporary run directory, and say per stage whether it ran, how
long it took and its peak memory. What changes against the real run (:func:`fast_dev_config`):

- every training stage stops after ``iterations`` steps (``*.optim.stop_iter``; ``max_iter`` and
  so the learning-rate schedule stay the config's), and writes one checkpoint at the end;
- every split keeps its first few files (``data.*.max_items``: the largest batch size × ranks,
  at least 4), and class indices for rare-class or class-balanced sampling are built from them
  inside the temporary directory (never beside the data, where the real index is cached);
- terms that start late (``online.contrast.start_iter``) start at once, so that they run;
  validation during training (``run.val_every``) runs once, at the last step;
- progress bars are off and scalars are logged every step (in the directory's ``log.txt``).

The temporary directory is made under ``$TMPDIR`` (the system's temporary folder) and removed at
the end, passed or failed, unless ``--keep`` is given. Under torchrun every rank uses the same
directory, named after torchrun's run id; for several nodes, ``TMPDIR`` must be a folder every
node sees (as ``run.out`` must be for a real multi-node run).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spcl.config_schema import Config

__all__ = ["FAST_DEV_ITERATIONS", "StageReport", "fast_dev_config", "run_fast_dev"]

FAST_DEV_ITERATIONS = 2  # training steps per stage of a fast dev run (--fast-dev-run N)
MIN_ITEMS = 4  # files per split at least (pseudo-label thresholds and metrics need a few)
PREFIX = "spcl-fast-dev-run-"  # name of the temporary run directory
GIB = 2**30
_STATUS = Path("/proc/self/status")  # Linux: VmHWM, the peak resident memory of this process
_CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets VmHWM (Linux ≥ 4.0)


def _training_sections(config: Config) -> list:
    return [config.warmup, config.adapt, config.self_train, config.online]


def fast_dev_config(config: Config, iterations: int, out: str | Path, world: int = 1) -> Config:
    """The config of a fast dev run of ``config`` into ``out`` (see the module docstring)."""
    fast = copy.deepcopy(config)
    for section in _training_sections(fast):
        section.optim.stop_iter = min(section.optim.stop_iter, iterations)
    largest_batch = max(s.optim.batch_size for s in _training_sections(fast))
    items = max(MIN_ITEMS, largest_batch) * world
    for name in ("source", "target", "target_val"):
        domain = getattr(fast.data, name)
        domain.max_items = items if domain.max_items == 0 else min(domain.max_items, items)
        domain.class_index = str(Path(out) / f"class_index_{name}.npz")
    fast.online.contrast.start_iter = 0
    run = fast.run
    run.out = str(out)
    run.progress = False
    run.log_every = 1
    run.ckpt_every = min(run.ckpt_every, iterations)
    run.val_every = min(run.val_every, iterations) if run.val_every > 0 else 0
    return fast


@dataclass
class StageReport:
    """What one stage of a fast dev run did."""

    name: str
    seconds: float
    ok: bool
    peak_ram: float | None  # bytes, the process's peak resident memory during the stage
    peak_device: float | None  # bytes, peak CUDA memory allocated during the stage

    def line(self) -> str:
        status = "OK" if self.ok else "FAILED"
        memory = []
        if self.peak_ram is not None:
            memory.append(f"{self.peak_ram / GIB:.2f} GiB RAM")
        if self.peak_device is not None:
            memory.append(f"{self.peak_device / GIB:.2f} GiB GPU")
        peak = f"   peak {', '.join(memory)}" if memory else ""
        return f"  {self.name:<16} {status:<6} {self.seconds:7.1f} s{peak}"


def _reset_peak_ram() -> bool:
    """Reset the process's peak resident memory (Linux); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _peak_ram() -> float | None:
    """The process's peak resident memory since the last reset, in bytes (Linux), else None."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class StageMeter:
    """Times each stage and measures its peak memory; prints one line per stage on rank 0."""

    def __init__(self, device_type: str, show: bool) -> None:
        self.device_type = device_type
        self.show = show
        self.reports: list[StageReport] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        import torch

        ram = _reset_peak_ram()
        cuda = self.device_type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        begin, ok = time.perf_counter(), False
        try:
            yield
            ok = True
        finally:
            report = StageReport(
                name,
                time.perf_counter() - begin,
                ok,
                _peak_ram() if ram else None,
                float(torch.cuda.max_memory_allocated()) if cuda else None,
            )
            self.reports.append(report)
            if self.show:
                print(report.line(), flush=True)


def _temporary_dir() -> Path:
    """A new temporary run directory; under torchrun the same one on every rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Path(tempfile.mkdtemp(prefix=PREFIX))
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    port = os.environ.get("MASTER_PORT", "0")
    path = Path(tempfile.gettempdir()) / f"{PREFIX}{run_id}-{port}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_fast_dev(
    config: Config, *, name: str, iterations: int = FAST_DEV_ITERATIONS, keep: bool = False
) -> list[StageReport]:
    """Run every stage of ``config`` briefly into a temporary directory; returns the reports.

    Prints a header, one line per stage (OK or FAILED, seconds, peak memory) and a summary on
    rank 0. A failing stage raises as in a real run (the CLI prints its one-line error), after
    its FAILED line. The directory is removed at the end unless ``keep``.
    """
    from spcl.context import open_run
    from spcl.engine.distributed import world_size
    from spcl.pipeline import run_lock, run_pipeline

    out = _temporary_dir()
    main = int(os.environ.get("RANK", "0")) == 0
    fast = fast_dev_config(config, iterations, out, world=int(os.environ.get("WORLD_SIZE", "1")))
    items = fast.data.source.max_items
    if main:
        print(
            f"fast dev run of {name}: {iterations} iteration(s) per training stage, at most "
            f"{items} images per split, in {out}",
            flush=True,
        )
    begin = time.perf_counter()
    meter: StageMeter | None = None
    try:
        with open_run(fast) as ctx:
            meter = StageMeter(ctx.device.type, show=ctx.is_main)
            ctx.tracker.mute_console()
            lock = run_lock(ctx.run_dir) if ctx.is_main else contextlib.nullcontext()
            with lock:
                run_pipeline(ctx, observe=meter)
            ranks = world_size()
    except BaseException:
        if main and not keep:
            print(f"fast dev run failed; removed {out} (--keep keeps it, with its log.txt)")
        raise
    finally:
        if main and not keep:
            shutil.rmtree(out, ignore_errors=True)
    if main:
        where = f"kept {out}" if keep else f"removed {out} (--keep keeps it)"
        ranks_text = f" on {ranks} ranks" if ranks > 1 else ""
        print(
            f"fast dev run passed{ranks_text}: {len(meter.reports)} stage(s) in "
            f"{time.perf_counter() - begin:.1f} s; {where}",
            flush=True,
        )
    return meter.reports
