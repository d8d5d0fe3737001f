"""Folder evaluation time: ``spcl evaluate`` against cityscapesscripts' ``evaluateImgLists``.

For each folder size of ``--images`` (default 12 and 500: the issue's 12 files and Cityscapes'
val set), writes that many Cityscapes-like pairs at 1024×2048 in a temporary folder (``--distinct``
different scenes, default 24, copied under new names up to the size: every file is still read and
decoded, only the drawing is saved): ground truth as
``gtFine/val/<city>/<key>_gtFine_labelIds.png`` (label ids, with ego-vehicle and out-of-ROI
borders), and the same prediction twice, as train ids (``pred_trainIds/<key>_leftImg8bit.png``,
what ``spcl predict`` writes and ``spcl evaluate`` reads by default) and as label ids
(``pred_labelIds/``, the only format cityscapesscripts scores). Then it times, side by side, each
as a fresh Python process (start-up and imports included, wall clock; best of ``--repeats`` after
one untimed warm-up run, so the files are in the page cache for every tool):

* ``spcl CLI``: ``python -m spcl evaluate --pred-dir pred_trainIds --gt-dir gtFine/val``;
* ``evaluate_folders``: a process that imports :mod:`spcl.evaluation.pred_folders` and calls
  ``evaluate_folders`` (the CLI minus the CLI's own imports);
* ``cityscapesscripts``: a process that imports ``evalPixelLevelSemanticLabeling`` and calls
  ``evaluateImgLists`` on the label-id predictions (its own import cost counted), with
  ``evalInstLevelScore=False`` (no instance files; spcl has no instance score),
  ``evalPixelAccuracy=False``, ``JSONOutput=False``, ``quiet=True``; its Cython helper is used if
  it is built (``CSUPPORT`` is printed).

The two in-process processes also report the time of the call alone, after imports ("eval"
column), and the CPU seconds of each process are shown beside the wall clock (on a shared machine
the CPU ratio is the steadier figure). Both tools must agree on the mIoU (checked, printed).

``--decoders`` first prints the CPU milliseconds per file of each PNG decoder on these files
(PIL as cityscapesscripts uses it, OpenCV, and spcl's :func:`~spcl.data.png_decode.decode_id_png`).

Run: ``PYTHONPATH=src python benchmarks/eval_speed.py [--images 12,500] [--repeats 3]``
(``--workers N`` threads for evaluate_folders, ``--decoders``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from spcl.data.labels import CITYSCAPES
from spcl.data.png_decode import decode_id_png

HEIGHT, WIDTH = 1024, 2048  # Cityscapes frames
CITY = "frankfurt"
SKY, BUILDING, ROAD, SIDEWALK = 23, 11, 7, 8  # Cityscapes label ids
OBJECT_IDS = (26, 24, 20, 17, 21, 13, 12, 19, 25, 33, 28, 22, 32)  # car, person, sign, pole, ...
EGO_VEHICLE, OUT_OF_ROI = 1, 3  # ignored label ids along the borders
OBJECTS = 60  # rectangles and ellipses per scene
PRED_ERRORS = 40  # wrong blobs per prediction
PRED_SHIFT = 6  # prediction boundaries shifted by up to this many pixels
EGO_ROWS, ROI_COLS = 120, 8  # ignored border sizes
DECODE_ROUNDS = 3  # decoder timing: best of this many passes over the files
SRC = Path(__file__).resolve().parents[1] / "src"

SPCL_IN_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
from spcl.evaluation.pred_folders import evaluate_folders
t1 = time.perf_counter()
workers = int(sys.argv[3]) or None
scores, report = evaluate_folders(sys.argv[1], sys.argv[2], workers=workers, progress=False)
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "eval": t2 - t1, "miou": scores.miou,
                  "images": report["num_images"]}))
"""
CS_IN_PROCESS = """
import copy, glob, json, os, sys, time
t0 = time.perf_counter()
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs
t1 = time.perf_counter()
args = copy.copy(cs.args)
args.evalInstLevelScore, args.evalPixelAccuracy = False, False
args.JSONOutput, args.quiet = False, True
preds = sorted(glob.glob(os.path.join(sys.argv[1], "*.png")))
gts = sorted(glob.glob(os.path.join(sys.argv[2], "*", "*_gtFine_labelIds.png")))
result = cs.evaluateImgLists(preds, gts, args)
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "eval": t2 - t1, "csupport": cs.CSUPPORT,
                  "miou": 100.0 * result["averageScoreClasses"], "images": len(preds)}))
"""


def scene(rng: np.random.Generator) -> np.ndarray:
    """Label ids of a street-like frame: sky, skyline, road, sidewalks, objects, ignored borders."""
    cols, rows = np.arange(WIDTH)[None], np.arange(HEIGHT)[:, None]
    skyline = HEIGHT * 0.3 + 60 * np.sin(cols / 300 + rng.uniform(0, 6))
    horizon = HEIGHT * 0.55 + 20 * np.sin(cols / 500 + rng.uniform(0, 6))
    ids = np.full((HEIGHT, WIDTH), BUILDING, dtype=np.uint8)
    ids[rows < skyline] = SKY
    ids[rows >= horizon] = ROAD
    ids[(rows >= horizon) & ((cols < WIDTH // 7) | (cols > WIDTH - WIDTH // 7))] = SIDEWALK
    for _ in range(OBJECTS):
        label = int(rng.choice(OBJECT_IDS))
        y, x = int(rng.integers(0, HEIGHT)), int(rng.integers(0, WIDTH))
        h, w = int(rng.integers(10, 200)), int(rng.integers(5, 300))
        if rng.random() < 0.5:
            cv2.rectangle(ids, (x, y), (x + w, y + h), label, -1)
        else:
            cv2.ellipse(
                ids, (x, y), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, label, -1
            )
    ids[-EGO_ROWS:] = EGO_VEHICLE
    ids[:, :ROI_COLS] = OUT_OF_ROI
    return ids


def prediction(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Train ids a segmenter might write: shifted boundaries, wrong blobs, a class everywhere."""
    ids = np.roll(gt, int(rng.integers(-PRED_SHIFT, PRED_SHIFT + 1)), axis=1)
    for _ in range(PRED_ERRORS):
        label = int(rng.choice((ROAD, SIDEWALK, BUILDING, *OBJECT_IDS)))
        centre = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
        cv2.circle(ids, centre, int(rng.integers(5, 60)), label, -1)
    train = CITYSCAPES.id_lut()[ids]
    train[train == CITYSCAPES.ignore_index] = CITYSCAPES.names.index("car")  # argmax: some class
    return train


def write_pairs(
    root: Path, count: int, seed: int = 0, distinct: int | None = None
) -> dict[str, Path]:
    """The three folders (ground truth, train-id and label-id predictions) of ``count`` pairs.

    Only ``distinct`` scenes are drawn (all of them if None); the others are byte copies under the
    next keys, which cost every tool the same reading and decoding.
    """
    rng = np.random.default_rng(seed)
    folders = {
        "gt": root / "gtFine" / "val",
        "trainIds": root / "pred_trainIds",
        "labelIds": root / "pred_labelIds",
    }
    (folders["gt"] / CITY).mkdir(parents=True)
    folders["trainIds"].mkdir()
    folders["labelIds"].mkdir()
    to_label_id = CITYSCAPES.train_to_id()
    drawn = count if distinct is None else min(distinct, count)
    for i in range(count):
        key = f"{CITY}_{i:06d}_000019"
        files = (
            folders["gt"] / CITY / f"{key}_gtFine_labelIds.png",
            folders["trainIds"] / f"{key}_leftImg8bit.png",
            folders["labelIds"] / f"{key}_leftImg8bit.png",
        )
        if i >= drawn:
            source = f"{CITY}_{i % drawn:06d}_000019"
            for file in files:
                shutil.copyfile(file.with_name(file.name.replace(key, source)), file)
            continue
        gt = scene(rng)
        train = prediction(gt, rng)
        Image.fromarray(gt).save(files[0])
        Image.fromarray(train).save(files[1])
        Image.fromarray(to_label_id[train].astype(np.uint8)).save(files[2])
    return folders


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one process (start-up included), its stdout; raises if it fails."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def best_of(command: list[str], repeats: int) -> tuple[float, float, dict]:
    """Best wall time of ``repeats`` runs after a warm-up, its CPU time and the JSON it printed."""
    timed(command)  # warm-up: page cache, .pyc files
    runs = [timed(command) for _ in range(repeats)]
    wall, cpu, out = min(runs, key=lambda run: run[0])
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return wall, cpu, json.loads(last) if last.startswith("{") else {}


def time_decoders(files: list[Path]) -> None:
    """CPU ms per file of each decoder on ``files`` (best of a few passes), one line each."""

    def pil_array(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.array(image)  # as cityscapesscripts reads its files

    decoders = {
        "PIL Image.open + np.array": pil_array,
        "cv2.imread IMREAD_UNCHANGED": lambda path: cv2.imread(str(path), cv2.IMREAD_UNCHANGED),
        "spcl decode_id_png": lambda path: decode_id_png(path.read_bytes()),
    }
    reference = [pil_array(path) for path in files]
    for name, decode in decoders.items():
        best = math.inf
        for _ in range(DECODE_ROUNDS):
            start = time.process_time()
            decoded = [decode(path) for path in files]
            best = min(best, time.process_time() - start)
        same = all(np.array_equal(a, b) for a, b in zip(decoded, reference, strict=True))
        print(f"{name:<30}{1000 * best / len(files):>7.2f} ms/file  same values as PIL: {same}")


def print_table(rows: dict[str, tuple[float, float, dict]], images: int) -> None:
    """One line per tool: wall (start-up included), CPU, imports, evaluation call, speed-up."""
    official_wall, official_cpu, _ = rows["cityscapesscripts"]
    header = (
        f"{'tool':<27}{'total s':>9}{'CPU s':>8}{'imports s':>11}{'eval s':>9}{'ms/img':>8}"
        f"{'speed-up':>10}{'CPU ratio':>11}"
    )
    print(header + "\n" + "-" * len(header))
    for name, (wall, cpu, info) in rows.items():
        imports = f"{info['imports']:.3f}" if info else "-"
        evaluation = f"{info['eval']:.3f}" if info else "-"
        per_image = f"{1000 * info['eval'] / images:.1f}" if info else "-"
        print(
            f"{name:<27}{wall:>9.3f}{cpu:>8.3f}{imports:>11}{evaluation:>9}{per_image:>8}"
            f"{official_wall / wall:>9.2f}x{official_cpu / cpu:>10.2f}x"
        )


def measure(images: int, args: argparse.Namespace) -> dict[str, tuple[float, float, dict]]:
    """Write ``images`` pairs, time the three tools on them, print the table; the rows."""
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as tmp:
        folders = write_pairs(Path(tmp), images, distinct=args.distinct)
        gt, train_ids, label_ids = (str(folders[k]) for k in ("gt", "trainIds", "labelIds"))
        if args.decoders:
            files = sorted(Path(gt).rglob("*.png"))[: args.distinct]
            time_decoders(files + sorted(Path(train_ids).glob("*.png"))[: args.distinct])
        load = os.getloadavg()[0]
        cli = [py, "-m", "spcl", "evaluate", "--pred-dir", train_ids, "--gt-dir", gt]
        rows = {
            "cityscapesscripts": best_of([py, "-c", CS_IN_PROCESS, label_ids, gt], args.repeats),
            "spcl evaluate_folders": best_of(
                [py, "-c", SPCL_IN_PROCESS, train_ids, gt, str(args.workers)], args.repeats
            ),
            "spcl CLI (python -m spcl)": best_of(cli, args.repeats),
        }
        load_after = os.getloadavg()[0]
    print(
        f"\n{images} pairs at {HEIGHT}x{WIDTH}, best of {args.repeats}; CPUs "
        f"{len(os.sched_getaffinity(0))}, load average {load:.2f} -> {load_after:.2f}; "
        f"cityscapesscripts CSUPPORT={rows['cityscapesscripts'][2]['csupport']}"
    )
    print_table(rows, images)
    spcl, official = rows["spcl evaluate_folders"][2], rows["cityscapesscripts"][2]
    print(f"mIoU: spcl {spcl['miou']:.10f}, cityscapesscripts {official['miou']:.10f}")
    if abs(spcl["miou"] - official["miou"]) > 1e-9:
        raise SystemExit("the two tools disagree on the mIoU")
    ratio = official["eval"] / spcl["eval"]
    print(f"evaluation call alone (after imports): spcl {ratio:.2f}x faster")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", default="12,500", help="comma list of folder sizes (pairs at 1024x2048)"
    )
    parser.add_argument("--distinct", type=int, default=24, help="scenes drawn per folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool, best kept")
    parser.add_argument("--workers", type=int, default=0, help="evaluate_folders threads (0: auto)")
    parser.add_argument("--decoders", action="store_true", help="also time the PNG decoders")
    args = parser.parse_args()
    sizes = [int(n) for n in args.images.split(",")]
    results = {n: measure(n, args) for n in sizes}
    print("\nstart-up included (wall clock, the CLI against cityscapesscripts):")
    for n, rows in results.items():
        official, cli = rows["cityscapesscripts"][0], rows["spcl CLI (python -m spcl)"][0]
        print(f"  {n:>5} images: {official:7.3f} s vs {cli:7.3f} s = {official / cli:.2f}x")


if __name__ == "__main__":
    main()
