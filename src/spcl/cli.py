"""The ``spcl`` command: parse arguments, dispatch to a subcommand, map user errors to exit codes.

Subcommands:
    run      run the SPCL pipeline (warm-up → … → evaluation), resumable
    config   print the resolved configuration (YAML + overrides), or save it
    synth    generate the built-in synthetic source/target pair

A user error (bad config key, missing file, folder that would be overwritten, bad argument) prints
one line ``spcl: error: ...`` naming the culprit and exits with status 2; nothing is half-written.
Set ``SPCL_DEBUG=1`` to get the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spcl import __version__
from spcl.config import ConfigError, dump_config, load_config, save_config
from spcl.engine.checkpoint import CheckpointError
from spcl.pipeline import STAGE_NAMES as STAGE_CHOICES
from spcl.pipeline import RunLockedError

__all__ = ["build_parser", "main"]

EXIT_USER_ERROR = 2  # bad input: config, paths, arguments
DEBUG_ENV = "SPCL_DEBUG"  # set to 1 to see the traceback of a user error
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    RunLockedError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    ValueError,
    KeyError,
)


def _size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``128x256``)."""
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit():
        raise argparse.ArgumentTypeError(f"size must look like 128x256 (HxW), got '{text}'")
    return int(height), int(width)


def _cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides, require_all=bool(args.save))
    if args.save:
        save_config(config, args.save)
        print(f"saved resolved config to {args.save}")
    else:
        print(dump_config(config), end="")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from spcl.data.synthetic import generate_pair

    out = generate_pair(
        args.out,
        seed=args.seed,
        preset=args.preset,
        n_train=args.train,
        n_val=args.val,
        size=args.size,
        overwrite=args.overwrite,
        preview=not args.no_preview,
        progress=True,
        workers=args.workers,
    )
    print(f"wrote the synthetic pair to {out}")
    if not args.no_preview:
        print(f"preview: {Path(out) / 'preview.png'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from spcl.context import open_run
    from spcl.pipeline import run_lock, run_pipeline

    config = load_config(args.config, args.overrides)
    with open_run(config) as ctx:
        lock = run_lock(ctx.run_dir) if ctx.is_main else contextlib.nullcontext()
        with lock:
            outputs = run_pipeline(ctx, start_from=args.start_from, only=args.only)
        if ctx.is_main:
            for name, path in outputs.items():
                print(f"{name:>16}: {path}")
    return 0


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

    run = sub.add_parser("run", help="run the SPCL pipeline (resumable) into run.out")
    run.add_argument("config", help="YAML config file, e.g. configs/demo.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. run.seed=1")
    stage_help = "one of: " + ", ".join(STAGE_CHOICES)
    run.add_argument(
        "--from", dest="start_from", metavar="STAGE", help=f"re-run from ({stage_help})"
    )
    run.add_argument("--only", metavar="STAGE", help="run only this stage (inputs must be done)")
    run.set_defaults(handler=_cmd_run)

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except USER_ERRORS as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"spcl: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("spcl: interrupted", file=sys.stderr)
        return 130
