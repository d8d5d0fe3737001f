"""Tests of folder evaluation's handling of files: unmatched files both ways, the report of skipped
files, ``--strict``, threads, 16-bit and palette files, id checks, and no torch on this path."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pred_folders import IGNORE, UNLABELLED_ID, naive_scores, save

from spcl.data.labels import CITYSCAPES
from spcl.evaluation.pred_folders import evaluate_folders
from spcl.evaluation.reports import write_json

# ---- unmatched files, the report of skipped files, --strict ------------------------------------


def test_predictions_without_ground_truth_are_named_in_a_warning_or_refused_under_strict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save(tmp_path / "g" / "a.png", np.zeros((2, 3)))
    for name in ["a", *(f"x{i:02d}" for i in range(53))]:
        save(tmp_path / "p" / f"{name}.png", np.zeros((2, 3)))
    with caplog.at_level(logging.WARNING, logger="spcl.evaluation.pred_folders"):
        _, report = evaluate_folders(
            tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False
        )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "53 prediction file(s)" in warning and "not scored" in warning
    assert all(f"x{i:02d}.png" in warning for i in range(50)) and "and 3 more" in warning
    assert "x50.png" not in warning and "x52.png" not in warning
    assert report["num_images"] == 1 and report["num_skipped"] == 53
    assert {s["reason"] for s in report["skipped"]} == {"no_ground_truth"}
    assert {Path(s["prediction"]).name for s in report["skipped"]} == {
        f"x{i:02d}.png" for i in range(53)
    }
    assert all(s["ground_truth"] is None for s in report["skipped"])
    with pytest.raises(ValueError, match=r"53 prediction file\(s\) .*x00\.png.*strict"):
        evaluate_folders(
            tmp_path / "p", tmp_path / "g", gt_format="trainIds", strict=True, progress=False
        )


def test_the_report_lists_every_skipped_file_with_its_reason(tmp_path: Path) -> None:
    for name in ("good", "small", "nogt"):
        save(tmp_path / "p" / f"{name}.png", np.zeros((4, 6 if name != "small" else 5)))
    for name in ("good", "small", "nopred"):
        save(tmp_path / "g" / f"{name}.png", np.zeros((4, 6)))
    with pytest.raises(ValueError, match=r"1 ground-truth file.*nopred\.png"):  # unchanged
        evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False)
    scores, report = evaluate_folders(
        tmp_path / "p", tmp_path / "g", gt_format="trainIds", on_error="skip", progress=False
    )
    assert report["num_images"] == 1 and scores.confusion.sum() == 24
    reasons = {
        (
            s["reason"],
            s["prediction"] and Path(s["prediction"]).name,
            s["ground_truth"] and Path(s["ground_truth"]).name,
        )
        for s in report["skipped"]
    }
    assert reasons == {
        ("no_prediction", None, "nopred.png"),
        ("no_ground_truth", "nogt.png", None),
        ("bad_pair", "small.png", "small.png"),
    }
    assert report["num_skipped"] == 3
    assert all(s["error"] for s in report["skipped"])
    data = json.loads(write_json(scores, tmp_path / "m.json", extra=report).read_text())
    assert data["num_images"] == 1 and len(data["skipped"]) == 3


def test_cli_strict_flag_and_json_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from spcl.cli import main

    save(tmp_path / "g" / "a.png", np.zeros((2, 3)))
    save(tmp_path / "p" / "a.png", np.zeros((2, 3)))
    save(tmp_path / "p" / "stray.png", np.zeros((2, 3)))
    argv = ["evaluate", "--pred-dir", str(tmp_path / "p"), "--gt-dir", str(tmp_path / "g")]
    argv += ["--gt-format", "trainIds", "--json", str(tmp_path / "s.json")]
    assert main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "spcl: error:" in err and "stray.png" in err and "1 prediction file(s)" in err
    assert not (tmp_path / "s.json").exists()
    assert main(argv) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["num_images"] == 1 and data["num_skipped"] == 1
    assert data["skipped"][0]["reason"] == "no_ground_truth"
    assert Path(data["skipped"][0]["prediction"]).name == "stray.png"


def test_cli_workers_flag_reaches_the_counting_threads(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spcl.cli import main
    from spcl.evaluation import pred_folders

    save(tmp_path / "g" / "a.png", np.zeros((2, 3)))
    save(tmp_path / "p" / "a.png", np.zeros((2, 3)))
    argv = ["evaluate", "--pred-dir", str(tmp_path / "p"), "--gt-dir", str(tmp_path / "g")]
    argv += ["--gt-format", "trainIds"]
    seen: list[int | None] = []
    real = pred_folders.evaluate_folders

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["workers"])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pred_folders, "evaluate_folders", spy)
    assert main([*argv, "--workers", "3"]) == 0 and main(argv) == 0
    assert seen == [3, None]
    capsys.readouterr()
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as stop:
            main([*argv, "--workers", bad])
        assert stop.value.code == 2
        assert f"--workers: expected a whole number of 1 or more, got '{bad}'" in (
            capsys.readouterr().err
        )


# ---- threads, file kinds, id checks ------------------------------------------------------------


def test_threads_count_the_same_and_fail_on_the_first_bad_pair_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    k = CITYSCAPES.num_classes
    pairs = []
    for i in range(6):
        gt = rng.integers(0, k, (20, 30))
        gt[rng.random(gt.shape) < 0.2] = IGNORE
        pred = np.where(rng.random(gt.shape) < 0.5, gt, rng.integers(0, k, gt.shape))
        pred[rng.random(gt.shape) < 0.1] = IGNORE
        save(tmp_path / "p" / f"i{i}.png", pred)
        save(tmp_path / "g" / f"i{i}.png", gt)
        pairs.append((np.where(pred == IGNORE, k, pred), gt))
    iou, _, missed, _ = naive_scores(pairs, k)
    results = [
        evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", workers=w)
        for w in (1, 2, 5)
    ]
    for scores, report in results:
        np.testing.assert_array_equal(scores.confusion, results[0][0].confusion)
        np.testing.assert_allclose(scores.iou, iou, rtol=1e-12, equal_nan=True)
        assert list(report["unlabelled_predictions"].values()) == missed.tolist()
    save(tmp_path / "p" / "i2.png", np.full((20, 30), 40))  # 40: no train id
    save(tmp_path / "p" / "i4.png", np.zeros((20, 29)))
    for workers in (1, 3):
        with pytest.raises(ValueError, match=r"prediction .*i2\.png .*holds id 40"):
            evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", workers=workers)


def test_sixteen_bit_and_palette_files_count_like_grey_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    valid_ids = CITYSCAPES.train_to_id()[: CITYSCAPES.num_classes]
    gt = rng.choice([*valid_ids.tolist(), UNLABELLED_ID, 1, 3], (24, 40))
    pred = rng.integers(0, CITYSCAPES.num_classes, gt.shape)
    pred[rng.random(gt.shape) < 0.1] = IGNORE
    save(tmp_path / "grey_p" / "a.png", pred)
    save(tmp_path / "grey_g" / "a.png", gt)
    palette = Image.fromarray(pred.astype(np.uint8), "P")
    palette.putpalette([v for i in range(256) for v in (i, 3 * i % 256, 255 - i)])
    (tmp_path / "pal_p").mkdir()
    palette.save(tmp_path / "pal_p" / "a.png")
    (tmp_path / "deep_g").mkdir()
    Image.fromarray(gt.astype(np.uint16)).save(tmp_path / "deep_g" / "a.png")
    k = CITYSCAPES.num_classes
    mapped_gt = CITYSCAPES.id_lut()[gt]
    iou, _, missed, _ = naive_scores([(np.where(pred == IGNORE, k, pred), mapped_gt)], k)
    for p, g in (
        ("grey_p", "grey_g"),
        ("pal_p", "grey_g"),
        ("grey_p", "deep_g"),
        ("pal_p", "deep_g"),
    ):
        scores, report = evaluate_folders(tmp_path / p, tmp_path / g, progress=False)
        np.testing.assert_allclose(scores.iou, iou, rtol=1e-12, equal_nan=True)
        assert list(report["unlabelled_predictions"].values()) == missed.tolist()


def test_invalid_ids_name_ground_truth_first_then_the_first_bad_pixel(tmp_path: Path) -> None:
    gt = np.zeros((3, 8), dtype=np.uint8)
    pred = np.zeros((3, 8), dtype=np.uint8)
    pred[0, 2], pred[1, 5] = 40, 30  # raster order: 40 first, though 30 is smaller
    save(tmp_path / "p" / "a.png", pred)
    save(tmp_path / "g" / "a.png", gt)
    with pytest.raises(ValueError, match=r"prediction .*a\.png \(paired with .*\) holds id 40"):
        evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False)
    gt[2, 7] = 77  # not a Cityscapes train id
    save(tmp_path / "g" / "a.png", gt)
    with pytest.raises(ValueError, match=r"ground truth .*a\.png .* holds id 77"):
        evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False)
    (tmp_path / "g16").mkdir()
    deep = gt.astype(np.uint16)
    deep[0, 1] = 300  # a 16-bit map: checked value by value, 300 before 77
    Image.fromarray(deep).save(tmp_path / "g16" / "a.png")
    with pytest.raises(ValueError, match=r"ground truth .*g16/a\.png .* holds id 300"):
        evaluate_folders(tmp_path / "p", tmp_path / "g16", gt_format="trainIds", progress=False)


def test_folder_evaluation_imports_no_torch_and_warns_on_stderr(tmp_path: Path) -> None:
    save(tmp_path / "g" / "a.png", np.zeros((2, 3)))
    save(tmp_path / "p" / "a.png", np.zeros((2, 3)))
    save(tmp_path / "p" / "stray.png", np.zeros((2, 3)))
    code = (
        "import sys\n"
        "from spcl.evaluation.pred_folders import evaluate_folders\n"
        f"scores, _ = evaluate_folders({str(tmp_path / 'p')!r}, {str(tmp_path / 'g')!r}, "
        "gt_format='trainIds')\n"
        "heavy = [m for m in ('torch', 'albumentations', 'matplotlib') if m in sys.modules]\n"
        "print('heavy', heavy, 'miou', scores.miou)\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "heavy [] miou 100.0" in done.stdout
    assert "1 prediction file(s)" in done.stderr and "stray.png" in done.stderr


def run_python(code: str) -> str:
    """stdout of ``python -c code`` with spcl importable (a fresh process)."""
    src = Path(__file__).resolve().parents[2] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_folder_evaluation_imports_only_what_it_uses(tmp_path: Path) -> None:
    save(tmp_path / "g" / "a.png", np.zeros((2, 3)))
    save(tmp_path / "p" / "a.png", np.zeros((2, 3)))
    args = ["evaluate", "--pred-dir", str(tmp_path / "p"), "--gt-dir", str(tmp_path / "g")]
    code = (
        "import sys\n"
        "from spcl.cli import main\n"
        f"status = main({[*args, '--gt-format', 'trainIds']!r})\n"
        "unused = ('torch', 'yaml', 'PIL', 'tqdm', 'matplotlib', 'spcl.pipeline',\n"
        "          'spcl.config_schema', 'spcl.experiments.rows')\n"
        "print('status', status, 'loaded', [m for m in unused if m in sys.modules])\n"
    )
    out = run_python(code)
    assert "mIoU" in out and "status 0 loaded []" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_memory_is_reused_without_page_faults() -> None:
    # The page faults of the work alone (RUSAGE_THREAD), in one thread of a fresh process, before
    # and after retain_freed_memory, each after a warm-up round. Not in new threads per round: a
    # joined thread's malloc arena goes back to glibc's free list only once the OS thread has
    # exited, so on a loaded machine the next round's thread could get a fresh arena and fault
    # every buffer once (3 of 12 runs failed that way, 1,500-2,000 faults against ~3,000).
    code = (
        "import resource\n"
        "import numpy as np\n"
        "from spcl.evaluation.pred_folders import retain_freed_memory\n"
        "def faults():\n"
        "    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt\n"
        "def pairs():  # what counting a pair allocates: image-sized maps, freed at once\n"
        "    before = faults()\n"
        "    for _ in range(20):\n"
        "        ids = np.ones((1024, 2048), np.uint8)\n"
        "        change = ids[1:] != ids[:-1]\n"
        "        ends = np.flatnonzero(change)\n"
        "    return faults() - before\n"
        "pairs(); plain = pairs()\n"
        "took = retain_freed_memory(); pairs(); kept = pairs()\n"
        "print(took, plain, kept)\n"
    )
    took, plain, kept = run_python(code).split()
    if took != "True":
        pytest.skip("not glibc: mallopt had no effect")
    if int(plain) < 1000:
        pytest.skip(f"this malloc reuses freed blocks already ({plain} page faults)")
    assert int(kept) * 10 < int(plain)  # measured: 0 against ~9,400, in 20 of 20 loaded runs
