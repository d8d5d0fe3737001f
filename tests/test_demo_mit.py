"""End to end: the quick demo with a MiT segmenter (DAFormer head on a width-8 MiT-B0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spcl.cli import main
from spcl.experiments.rows import DEMO_ROWS
from spcl.models.files import load_model_file
from spcl.models.segformer import SegFormerSegmenter

pytestmark = pytest.mark.slow


def test_quick_demo_runs_with_daformer_mit_b0(tmp_path: Path) -> None:
    # the quick overrides' model.width=8 scales the MiT's channels (a MiT-B0 at 1/8 width)
    argv = ["demo", "--quick", "--out", str(tmp_path), "model.name=daformer_mit_b0"]
    assert main([*argv, "run.progress=false"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for row in DEMO_ROWS:
        assert 0.0 <= results[row]["miou"] <= 100.0, row
    model, info = load_model_file(results["spcl_self_training"]["model"])
    assert isinstance(model, SegFormerSegmenter)
    assert (info["arch"]["name"], info["arch"]["width"]) == ("daformer_mit_b0", 8)
    assert model.backbone.out_channels == (4, 8, 20, 32)
