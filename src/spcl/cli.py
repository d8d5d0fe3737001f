"""The ``spcl`` command: parse arguments, dispatch to a subcommand, map user errors to exit codes.

Subcommands:
    demo     the pipeline and its baselines on the built-in synthetic pair (the main job)
    bench    SPCL against its controls and ablations over several seeds, with a report
    run      run the SPCL pipeline (warm-up → … → evaluation), resumable
    evaluate score a model file on a dataset split, or a folder of predictions
    predict  segment your own images with a model file
    export   a model file as ONNX (dynamic height/width) or safetensors (weights + metadata)
    data     check a dataset on disk (pairs, sizes, label values), class statistics
    config   print the resolved configuration (YAML + overrides), or save it
    synth    generate the built-in synthetic source/target pair

A user error (:class:`spcl.base.UserError`: a bad config key, a dataset or checkpoint that does not
fit, a missing file, a folder that would be overwritten, arguments that do not go together) prints
one line ``spcl: error: ...`` naming the culprit and exits with status 2; nothing is half-written.
Set ``SPCL_DEBUG=1`` to get its traceback too. A training run whose loss became NaN or infinite
(:class:`spcl.base.NonFiniteLossError`) prints one line naming the stage, iteration and loss terms
and exits with 1. Any other exception is a bug: its traceback is shown and the exit status is 1.

Ctrl-C and SIGTERM stop a command the same way: the exception unwinds through every open file
(written by temporary file + rename, so nothing is half-written) and the run directory's lock, and
the command says so in one line; ``run``, ``demo`` and ``bench`` add that the same command resumes
(finished stages are skipped, a training stage continues from its last checkpoint). Exit status
130 after Ctrl-C, 143 after SIGTERM (128 + the signal's number).

Start-up is kept short: this module imports no torch, NumPy or plotting library; each command
(:mod:`spcl.commands`) imports what it needs when it runs (``benchmarks/cli_startup.py``
measures it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from spcl import __version__
from spcl.base import NonFiniteLossError, UserError, describe_os_error
from spcl.commands import (
    _cmd_bench,
    _cmd_config,
    _cmd_data,
    _cmd_demo,
    _cmd_evaluate,
    _cmd_export,
    _cmd_predict,
    _cmd_run,
    _cmd_synth,
)
from spcl.recipe import STAGE_NAMES

__all__ = ["build_parser", "main", "parse_ablations", "parse_seeds"]

EXIT_USER_ERROR = 2  # bad input: config, paths, arguments
EXIT_DIVERGED = 1  # a training loss became NaN or infinite
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: kill, a scheduler's time limit, docker stop
RESUMABLE = ("run", "demo", "bench")  # commands whose run directories resume where they stopped
DEBUG_ENV = "SPCL_DEBUG"  # set to 1 to see the traceback of a user error
ALL_ABLATIONS = "all"  # --ablate all


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it stops exactly as after Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    if hasattr(signal, "SIGCHLD"):  # POSIX: a signal sent to the process group (`timeout`,
        # SLURM, `docker stop`) also ends the data-loader workers; PyTorch's SIGCHLD handler
        # would report each as a RuntimeError over the clean stop. A Python handler, not
        # SIG_DFL: a SIGCHLD already pending would then print "ignored due to race condition"
        signal.signal(signal.SIGCHLD, _workers_stop_too)
    raise Terminated


def _workers_stop_too(signum: int, frame: object) -> None:
    """SIGCHLD once stopping: the data-loader workers ended with the run, as they should."""


def _stopped_message(exc: KeyboardInterrupt, command: str, argv: Sequence[str]) -> str:
    """One line: what stopped the command, and for a run how to resume it."""
    what = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
    if command not in RESUMABLE:
        return f"spcl: {what}; nothing half-written was left behind"
    again = shlex.join(["spcl", *argv])
    return (
        f"spcl: {what}; finished stages and the last checkpoint are kept: run the same command "
        f"to resume: {again}"
    )


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` → [0, 1, 2]; ArgumentTypeError unless distinct integers."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--seeds expects integers like 0,1,2, got '{text}'")
    if len({int(p) for p in parts}) != len(parts):
        raise argparse.ArgumentTypeError(f"--seeds repeats a seed: '{text}'")
    return [int(p) for p in parts]


def parse_ablations(text: str) -> tuple[str, ...]:
    """``--ablate tau,cap`` (or ``all``) → names; ArgumentTypeError listing the valid ones."""
    from spcl.experiments.rows import ABLATIONS  # the row table: only when the flag is given

    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == [ALL_ABLATIONS]:
        return tuple(ABLATIONS)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--ablate: unknown ablation(s) {unknown}; valid: {', '.join(ABLATIONS)} or all"
        )
    return tuple(dict.fromkeys(names))


def parse_rows(text: str) -> tuple[str, ...]:
    """``--rows source_only,online`` → row names; ArgumentTypeError listing the valid ones."""
    from spcl.experiments.rows import ROWS

    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--rows: unknown or no row(s) {unknown}; valid: {', '.join(ROWS)}"
        )
    return tuple(dict.fromkeys(names))


def _size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``128x256``)."""
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit():
        raise argparse.ArgumentTypeError(f"size must look like 128x256 (HxW), got '{text}'")
    return int(height), int(width)


def _positive_int(text: str) -> int:
    """A count of 1 or more (``--workers``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got '{text}'")
    return value


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers like 0.75,1,1.25, got '{text}'"
        ) from None


def _ints(count: int) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        parts = text.replace("x", ",").split(",")
        if len(parts) != count or not all(p.strip().isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"expected {count} integers, got '{text}'")
        return [int(p) for p in parts]

    return parse


def _add_test_time_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flip", action="store_true", help="average with the flipped image")
    parser.add_argument("--scales", type=_floats, help="multi-scale, e.g. 0.75,1,1.25")
    parser.add_argument(
        "--slide", type=_ints(4), metavar="CH,CW,SH,SW", help="sliding window crop and stride"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="spcl",
        description="Domain-adaptive semantic segmentation with SPCL "
        "(semantic prototype-based contrastive learning).",
    )
    parser.add_argument("--version", action="version", version=f"spcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cfg = sub.add_parser("config", help="print the resolved configuration")
    cfg.add_argument("config", nargs="?", help="YAML config file (default: schema defaults)")
    cfg.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. run.seed=1")
    cfg.add_argument("--save", metavar="FILE", help="write the resolved YAML to FILE instead")
    cfg.set_defaults(handler=_cmd_config)

    demo = sub.add_parser("demo", help="the whole pipeline and its baselines on the synthetic pair")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="generator and training seed (0)")
    demo.add_argument("--quick", action="store_true", help="tiny sizes: a minute, for tests")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides")
    demo.set_defaults(handler=_cmd_demo)

    bench = sub.add_parser("bench", help="SPCL vs its controls and ablations over seeds, a report")
    bench.add_argument("--out", default="runs/bench", help="output folder (default runs/bench)")
    bench.add_argument(
        "--seeds", type=parse_seeds, help="comma list (default 0,1,2; 0 with --quick)"
    )
    bench.add_argument(
        "--quick", action="store_true", help="tiny sizes, for CI: numbers mean nothing"
    )
    bench.add_argument("--config", default="demo", help="config file or shipped name (demo)")
    bench.add_argument(
        "--ablate",
        type=parse_ablations,
        default=(),
        metavar="NAMES",
        help="extra rows: tau,alpha,absent,cap,lambda,bn,adabn_labels or all",
    )
    bench.add_argument(
        "--rows",
        type=parse_rows,
        metavar="NAMES",
        help="comma list of rows to run and report (default: all; e.g. the demo's rows first)",
    )
    bench.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every row")
    bench.set_defaults(handler=_cmd_bench)

    run = sub.add_parser("run", help="run the SPCL pipeline (resumable) into run.out")
    run.add_argument("config", help="YAML config file, e.g. configs/demo.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. run.seed=1")
    stage_help = "one of: " + ", ".join(STAGE_NAMES)
    run.add_argument(
        "--from", dest="start_from", metavar="STAGE", help=f"re-run from ({stage_help})"
    )
    run.add_argument("--only", metavar="STAGE", help="run only this stage (inputs must be done)")
    run.add_argument(
        "--fast-dev-run",
        nargs="?",
        const=2,
        type=_positive_int,
        metavar="N",
        help="every stage for N (default 2) iterations on a few images, into a temporary "
        "directory: what to run before booking a GPU",
    )
    run.add_argument("--keep", action="store_true", help="--fast-dev-run: keep its directory")
    run.set_defaults(handler=_cmd_run)

    ev = sub.add_parser(
        "evaluate",
        help="score a model file on a dataset split, or a folder of predictions",
        description="Either MODEL --config CONFIG [key=value ...] (the config's data.target_val "
        "split), or --pred-dir P --gt-dir G (PNG folders matched by name).",
    )
    ev.add_argument(
        "model",
        nargs="?",
        help="model file: a stage's model.pth, an exported .safetensors, a reference SPCL/FADA "
        "or an mmseg checkpoint",
    )
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    ev.add_argument("--config", help="YAML config naming the dataset (data.target_val)")
    ev.add_argument("--pred-dir", help="folder of prediction PNGs")
    ev.add_argument("--gt-dir", help="folder of ground-truth PNGs")
    ev.add_argument("--pred-format", choices=("trainIds", "labelIds"), default="trainIds")
    ev.add_argument("--gt-format", choices=("trainIds", "labelIds"), default="labelIds")
    ev.add_argument(
        "--classes",
        default="19",
        metavar="19|16|13|FILE|DIR",
        help="evaluated classes: 19, 16 or 13 (Cityscapes ids), or a classes.yaml or a folder "
        "dataset's root (its own ids); default 19",
    )
    ev.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        help="an unreadable file or a bad pair: fail, or skip it and list it after the scores "
        "(default: fail; with a model file, the config's data.on_error)",
    )
    ev.add_argument("--strict", action="store_true", help="predictions without GT are an error")
    ev.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="threads scoring PNG folders (default: the CPUs this process may use)",
    )
    ev.add_argument("--json", metavar="FILE", help="write every score as JSON")
    ev.add_argument("--csv", metavar="FILE", help="write every number as CSV")
    ev.add_argument("--confusion", metavar="PNG", help="write the confusion matrix picture")
    _add_test_time_flags(ev)
    ev.set_defaults(handler=_cmd_evaluate)

    pr = sub.add_parser(
        "predict",
        help="segment your own images with a model file",
        description="Writes OUT/color, overlay, trainIds (and labelIds for Cityscapes classes, "
        "--uncertainty maps) per image; a re-run skips the images already done. See "
        "docs/predict.md.",
    )
    pr.add_argument("model", help="model file: a stage's model.pth, an exported .safetensors")
    pr.add_argument("inputs", nargs="+", help="images, folders or glob patterns")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument(
        "--size",
        type=_ints(2),
        metavar="H,W",
        help="resize each image to H,W for the network (the outputs keep the image's size)",
    )
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    pr.add_argument("--uncertainty", choices=("confidence", "entropy"), help="also write this map")
    pr.add_argument("--on-error", choices=("fail", "skip"), default="fail")
    pr.add_argument(
        "--overwrite",
        action="store_true",
        help="predict every image again, replacing outputs (default: skip the images already "
        "predicted by this model with these settings; refuse other outputs)",
    )
    _add_test_time_flags(pr)
    pr.set_defaults(handler=_cmd_predict)

    ex = sub.add_parser(
        "export",
        help="a model file as ONNX (dynamic H/W) or safetensors (weights + class table + input)",
    )
    ex.add_argument("model", help="model file (model.pth, .safetensors, reference checkpoint…)")
    ex.add_argument("--format", required=True, choices=("onnx", "safetensors"), dest="fmt")
    ex.add_argument("--out", help="output file (default: MODEL with the format's suffix)")
    ex.add_argument(
        "--size", type=_ints(2), default=[512, 1024], metavar="H,W", help="ONNX example size"
    )
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ex.set_defaults(handler=_cmd_export)

    data = sub.add_parser("data", help="check a dataset on disk, or print its class statistics")
    data.add_argument("action", choices=("check", "stats"), help="check: read every file")
    data.add_argument("kind", help="gta5, synthia, synscapes, cityscapes or folder")
    data.add_argument("root", help="dataset root folder")
    data.add_argument("--split", help="split to read (default: train)")
    data.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="reader option"
    )
    data.add_argument("--class-index", metavar="FILE", help="where check writes the class index")
    data.add_argument("--workers", type=int, help="reader processes")
    data.add_argument("--no-labels", action="store_true", help="images only")
    data.add_argument("--json", action="store_true", help="machine-readable report")
    data.set_defaults(handler=_cmd_data)

    syn = sub.add_parser("synth", help="generate the built-in synthetic source/target pair")
    syn.add_argument("--out", required=True, help="output folder (must be absent or empty)")
    syn.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    syn.add_argument("--preset", default="strong", help="domain shift: mild or strong (default)")
    syn.add_argument("--train", type=int, default=300, help="train images per domain (300)")
    syn.add_argument("--val", type=int, default=100, help="val images per domain (100)")
    syn.add_argument("--size", type=_size, default=(128, 256), help="HxW (default 128x256)")
    syn.add_argument("--workers", type=int, default=1, help="worker processes (same bytes)")
    syn.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    syn.add_argument("--no-preview", action="store_true", help="skip preview.png")
    syn.set_defaults(handler=_cmd_synth)
    return parser


def _is_override(text: str) -> bool:
    """``key=value`` or ``~key`` (a removal), as opposed to a misspelt option."""
    return not text.startswith("-") and ("=" in text or text.startswith("~"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (a bug's exception propagates: exit 1)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # key=value overrides may also follow the options
        if not hasattr(args, "overrides") or any(not _is_override(e) for e in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = [*args.overrides, *extras]
    handler: Callable[[argparse.Namespace], int] = args.handler
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return handler(args)
    except UserError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"spcl: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except NonFiniteLossError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"spcl: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt as exc:
        from spcl.progress import end_bar_lines  # torch-free, imports no tqdm

        end_bar_lines()  # the stopped loop's bar is left half drawn: the line goes below it
        shown = sys.argv[1:] if argv is None else list(argv)
        print(_stopped_message(exc, args.command, shown), file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except OSError as exc:  # a full disk, a read-only folder: the machine's, not a bug
        message = describe_os_error(exc)
        if message is None or os.environ.get(DEBUG_ENV):
            raise
        print(f"spcl: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
