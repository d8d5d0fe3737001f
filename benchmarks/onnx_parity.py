"""ONNX export parity: max |onnxruntime − PyTorch| of the logits per model and input size.

Each model is built at random init (the figures concern the export, not the weights); BatchNorm
statistics are then estimated on a few random batches so that activations have ordinary
magnitudes (random-init eval-mode BN lets a ResNet-101's logits grow to ~1e5). It is saved as a
model file, exported with ``spcl.models.export.export_model`` at the export size, and compared on
random images at the export size and at other sizes (dynamic H/W). For scale, the same image is
also run through PyTorch in float64: that difference is float32's own rounding in this network.
Prints a Markdown table of max abs differences of the logits.

    PYTHONPATH=src python benchmarks/onnx_parity.py [--size 256,512] [--models a,b]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from spcl.data.labels import CITYSCAPES
from spcl.models.build import build_model
from spcl.models.export import LogitsAtInputSize, export_model, onnx_parity
from spcl.models.files import load_model_file, save_model_file

# name, build options, width: the published architectures (width 64) unless noted
MODELS: dict[str, tuple[str, dict, int]] = {
    "deeplabv2_resnet101": ("deeplabv2_resnet101", {}, 64),
    "deeplabv2_resnet101 (DeepLab COCO: caffe style + BGR input)": (
        "deeplabv2_resnet101",
        {"style": "caffe", "input_convention": "caffe_bgr"},
        64,
    ),
    "deeplabv2_resnet50": ("deeplabv2_resnet50", {}, 64),
    "daformer_mit_b0": ("daformer_mit_b0", {}, 64),
    "segformer_mit_b0": ("segformer_mit_b0", {}, 64),
    "dinov2_vits14": ("dinov2_vits14", {}, 64),
}
EXTRA_SIZES = ((200, 360), (328, 248))  # (H, W) unlike the export size; not multiples of 8/14
CALIBRATION = (3, 2, 128, 256)  # batches, batch size, H, W of the BN-statistics pass


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module) -> None:
    """Replace BN running statistics by the cumulative average over random batches."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average
    model.train()
    batches, batch, height, width = CALIBRATION
    gen = torch.Generator().manual_seed(1)
    for _ in range(batches):
        model(torch.randn(batch, 3, height, width, generator=gen))
    model.eval()


def _measure(key: str, size: tuple[int, int], folder: Path) -> list[dict]:
    name, options, width = MODELS[key]
    torch.manual_seed(0)
    model = build_model(name, 19, width=width, options=options)
    calibrate_batchnorm(model)
    path = folder / f"{name}.pth"
    save_model_file(model, path, name=name, num_classes=19, width=width,
                    class_names=CITYSCAPES.names, options=options)  # fmt: skip
    report = export_model(path, "onnx", size=size, check=False, overwrite=True)
    loaded, _ = load_model_file(path)
    rows = onnx_parity(loaded, report.path.read_bytes(), [size, *EXTRA_SIZES])
    for row in rows:  # the float32 rounding floor: the same image through PyTorch in float64
        row["fp64_diff"] = _fp64_diff(loaded, row["size"])
    return rows


@torch.no_grad()
def _fp64_diff(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """Max |PyTorch float32 − PyTorch float64| of the logits (same image as onnx_parity)."""
    wrapper = LogitsAtInputSize(model).eval()
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    single = wrapper(image)
    double = copy.deepcopy(wrapper).double()(image.double())
    return (single.double() - double).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256,512", help="export size H,W")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keys")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split(","))
    keys = [k for k in MODELS if k in args.models.split(",")] or list(MODELS)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"torch {torch.__version__}, export size {size[0]}x{size[1]}, opset 17, CPU, float32\n")
    print("| model | input H×W | ORT vs PyTorch | PyTorch fp32 vs fp64 | max abs logit |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            start = time.perf_counter()
            try:
                rows = _measure(key, size, Path(tmp))
            except Exception as exc:  # report and go on: the table says which model failed
                print(f"| {key} | — | failed: {type(exc).__name__}: {str(exc)[:80]} | | |")
                continue
            for row in rows:
                h, w = row["size"]
                print(
                    f"| {key} | {h}×{w} | {row['max_abs_diff']:.2e} | {row['fp64_diff']:.2e} | "
                    f"{row['max_abs_logit']:.3g} |"
                )
            print(f"<!-- {key}: {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
