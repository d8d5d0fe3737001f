"""The quick demo end to end with a DINOv2 segmenter (width 8: a 48-dim ViT-S/14 layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spcl.cli import main
from spcl.experiments.rows import DEMO_ROWS
from spcl.models.files import load_model_file
from spcl.models.vit_seg import ViTSegmenter

pytestmark = pytest.mark.slow


def test_quick_demo_with_dinov2(tmp_path: Path) -> None:
    # --quick sets model.width=8: for a DINOv2 model the head dimension (D = 6 heads × 8 = 48)
    assert main(["demo", "--quick", "--out", str(tmp_path), "model.name=dinov2_vits14"]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    for row in DEMO_ROWS:
        assert 0.0 <= saved[row]["miou"] <= 100.0, row
        assert len(saved[row]["per_class_iou"]) == 19
    model, info = load_model_file(saved["spcl_self_training"]["model"])
    assert isinstance(model, ViTSegmenter) and info["arch"]["name"] == "dinov2_vits14"
    assert model.backbone.embed_dim == 48 and info["arch"]["width"] == 8
