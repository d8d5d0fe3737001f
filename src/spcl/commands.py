"""What each ``spcl`` subcommand does once its arguments are parsed (:mod:`spcl.cli` parses them).

One ``_cmd_<name>(args) -> exit status`` per subcommand. Nothing heavy is imported at module
level: each command imports torch, NumPy or matplotlib when it runs, so that parsing, ``--help``
and ``--version`` stay fast (``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from spcl.base import UsageError

LISTED_SKIPPED = 50  # files left out by --on-error skip that evaluate prints (all are in --json)


def _cmd_config(args: argparse.Namespace) -> int:
    from spcl.config import dump_config, load_config, save_config

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
    from spcl.config import load_config
    from spcl.context import open_run
    from spcl.pipeline import run_lock, run_pipeline

    config = load_config(args.config, args.overrides)
    if args.fast_dev_run is not None:
        from spcl.rehearsal import run_fast_dev

        if args.start_from or args.only:
            raise UsageError("--fast-dev-run runs every stage: it takes no --from or --only")
        run_fast_dev(config, name=str(args.config), iterations=args.fast_dev_run, keep=args.keep)
        return 0
    if args.keep:
        raise UsageError("--keep goes with --fast-dev-run (a run directory is always kept)")
    with open_run(config) as ctx:
        lock = run_lock(ctx.run_dir) if ctx.is_main else contextlib.nullcontext()
        with lock:
            outputs = run_pipeline(ctx, start_from=args.start_from, only=args.only)
        if ctx.is_main:
            for name, path in outputs.items():
                print(f"{name:>16}: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from spcl.experiments.demo import run_demo

    run_demo(args.out, args.seed, quick=args.quick, extra=tuple(args.overrides))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from spcl.evaluation.reports import default_subsets, titled, write_csv, write_json

    report: dict = {}
    if args.pred_dir or args.gt_dir:
        if not (args.pred_dir and args.gt_dir):
            raise UsageError("--pred-dir and --gt-dir go together")
        from spcl.evaluation.pred_folders import evaluate_folders, retain_freed_memory

        retain_freed_memory()  # a short-lived process: reuse image buffers, do not re-fault them
        scores, report = evaluate_folders(
            args.pred_dir,
            args.gt_dir,
            pred_format=args.pred_format,
            gt_format=args.gt_format,
            classes=_evaluated_classes(args.classes),
            on_error=args.on_error or "fail",
            strict=args.strict,
            workers=args.workers,
        )
        title = f"predictions {report['pred_dir']} against {args.gt_dir}"
    else:
        if not (args.model and args.config):
            raise UsageError("give --pred-dir/--gt-dir, or a model file and a config (--config)")
        scores, title, report = _evaluate_model_file(args)
    print(titled(scores.format_table(default_subsets(scores.class_names)), title))
    _print_skipped(report.get("skipped", []))
    if args.json:
        write_json(scores, args.json, extra={**report, "title": title})
        print(f"wrote {args.json}")
    if args.csv:
        write_csv(scores, args.csv, unlabelled=report.get("unlabelled_predictions"), title=title)
        print(f"wrote {args.csv}")
    if args.confusion:
        from spcl.evaluation.plots import plot_confusion  # matplotlib: only for the picture

        plot_confusion(scores, args.confusion, title=f"{title}\nmIoU {scores.miou:.1f}")
        print(f"wrote {args.confusion}")
    return 0


def _evaluated_classes(text: str):  # -> int | ClassTable
    """``--classes``: 19, 16 or 13 (Cityscapes ids), or a classes.yaml / a folder dataset's root.

    Raises:
        UsageError: neither a known count nor an existing file or folder.
    """
    if text.isdigit():
        from spcl.evaluation.pred_folders import CLASS_LISTS

        if int(text) not in CLASS_LISTS:
            raise UsageError(
                f"--classes {text}: counts are {sorted(CLASS_LISTS)} (Cityscapes ids); for "
                f"other classes give a classes.yaml or the root of a folder dataset"
            )
        return int(text)
    from spcl.data.readers.folder import CLASS_FILE, load_class_table

    path = Path(text)
    if path.is_dir():
        path = path / CLASS_FILE
    if not path.is_file():
        raise UsageError(
            f"--classes {text}: no such file or folder with a {CLASS_FILE}; give 19, 16, 13, a "
            f"classes.yaml or the root of a folder dataset"
        )
    return load_class_table(path)


def _print_skipped(skipped: list[dict]) -> None:
    """List the files ``--on-error skip`` (or a missing ground truth) left out, and why."""
    if not skipped:
        return
    print(f"left out {len(skipped)} file(s):")
    for entry in skipped[:LISTED_SKIPPED]:  # a pair of PNG files, or a dataset's image
        shown = entry.get("prediction") or entry.get("ground_truth")
        print(f"  {shown}: {entry['error']}" if shown else f"  {entry['error']}")
    if len(skipped) > LISTED_SKIPPED:
        print(f"  ... and {len(skipped) - LISTED_SKIPPED} more (every one in --json)")


def _evaluate_model_file(args: argparse.Namespace):  # -> (SegmentationScores, title, report)
    """``spcl evaluate MODEL --config CONFIG``: the model file's scores on the config's
    target_val split with the config's (or the flags') test-time options, their title, and the
    report of the files left out (``--on-error``, else the config's ``data.on_error``)."""
    from spcl.config import load_config
    from spcl.data.loaders import build_eval_loader
    from spcl.engine.distributed import resolve_device
    from spcl.evaluation.api import evaluate
    from spcl.models.files import load_model_file
    from spcl.stages.builders import domain_dataset
    from spcl.stages.class_sets import check_model_classes
    from spcl.stages.evaluate import scored_title

    overrides = list(args.overrides)
    if args.flip:
        overrides.append("evaluate.flip=true")
    if args.scales:
        overrides.append(f"evaluate.scales={args.scales}")
    if args.slide:
        overrides.append(f"evaluate.slide={args.slide}")
    config = load_config(args.config, overrides, require_all=False)
    val, options = config.data.target_val, config.evaluate
    if val.root == "???":
        raise UsageError("the config sets no data.target_val.root: pass data.target_val.root=DIR")
    device = resolve_device(config.run.device)
    model, info = load_model_file(args.model, device)
    table = check_model_classes(args.model, info, config.data)
    dataset = domain_dataset(val, with_labels=True, train=False)
    loader = build_eval_loader(  # files left out are listed after the table, as for PNG folders
        dataset, num_workers=config.data.num_workers, on_error=args.on_error or config.data.on_error
    )
    scores = evaluate(
        model,
        loader,
        tuple(info["class_names"]) or table.names,
        device=device,
        flip=options.flip,
        scales=options.scales,
        slide=options.slide,
        progress=config.run.progress,
    )
    skipped = [{"error": message} for message in loader.unreadable.skipped]
    return scores, scored_title(val, Path(args.model)), {"skipped": skipped} if skipped else {}


def _cmd_predict(args: argparse.Namespace) -> int:
    from spcl.engine.distributed import resolve_device
    from spcl.predict import predict_paths

    written = predict_paths(
        args.model,
        args.inputs,
        args.out,
        flip=args.flip,
        scales=args.scales or (1.0,),
        slide=args.slide,
        size=args.size,
        device=resolve_device(args.device),
        save_confidence=args.uncertainty is not None,
        uncertainty=args.uncertainty or "confidence",
        on_error=args.on_error,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(written)} files under {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from spcl.models.export import export_model

    report = export_model(
        args.model,
        args.fmt,
        args.out,
        size=args.size,
        opset=args.opset,
        check=not args.no_check,
        overwrite=args.overwrite,
    )
    for row in report.parity:
        height, width = row["size"]
        print(
            f"onnxruntime vs PyTorch at {height}x{width}: max |diff| {row['max_abs_diff']:.3g} "
            f"(max |logit| {row['max_abs_logit']:.3g})"
        )
    print(f"wrote {report.path}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    import json

    from spcl.base import load_yaml
    from spcl.data.doctor import check_dataset, dataset_stats

    options = {}
    for text in args.option:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects key=value, got {text!r}")
        options[key] = load_yaml(value)
    common = {
        "with_labels": not args.no_labels,
        "progress": not args.json,
        "num_workers": args.workers,
        **options,
    }
    if args.action == "check":
        report = check_dataset(
            args.kind, args.root, args.split, class_index_out=args.class_index, **common
        )
    else:
        report = dataset_stats(args.kind, args.root, args.split, **common)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from spcl.experiments.bench import DEFAULT_SEEDS, QUICK_SEEDS, run_bench

    seeds = args.seeds or list(QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    run_bench(
        args.out,
        seeds,
        quick=args.quick,
        config=args.config,
        overrides=tuple(args.overrides),
        ablate=args.ablate,
        **({"rows": args.rows} if args.rows else {}),
    )
    return 0
