"""``spcl export``: a model file as ONNX (any height/width) or safetensors (weights + metadata).

ONNX: the graph takes ``image`` (B, 3, H, W) float32 normalised as spcl's pipeline does (RGB,
ImageNet mean/std; a model built for other weights converts inside, see
:mod:`spcl.models.input_conventions`) and returns ``logits`` (B, K, H, W): the class scores
bilinearly upsampled to the input size (``align_corners=True``, as spcl's inference), so that
``argmax`` over K is the prediction. Batch, height and width are dynamic. The class table and the
input normalisation are in the model's ``metadata_props``. It is written by PyTorch's
TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``, which
spcl does not depend on, and the traced graph is checked instead: onnxruntime is run at the
export size and at a second size, and the largest absolute difference to PyTorch is reported.

safetensors: see :mod:`spcl.models.safetensors_file`.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.base import OutputExistsError, UsageError, atomic_write_bytes
from spcl.data.labels import class_table_for
from spcl.models.files import load_model_file
from spcl.models.safetensors_file import input_metadata, write_safetensors_model

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_SIZE",
    "ExportReport",
    "LogitsAtInputSize",
    "export_model",
    "export_onnx",
    "onnx_parity",
]

ExportFormat = Literal["onnx", "safetensors"]
DEFAULT_SIZE = (512, 1024)  # Cityscapes evaluation input (H, W): the traced example
DEFAULT_OPSET = 17  # widely supported by onnxruntime and TensorRT
PARITY_OFFSET = (40, -136)  # the second check size: export size + this (H, W), a multiple of 8
INPUT_NAME, OUTPUT_NAME = "image", "logits"
DYNAMIC_AXES = {
    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
    OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
}
MIN_SIDE = 32  # smallest parity-check side


class LogitsAtInputSize(nn.Module):
    """A segmenter as a deployable graph: images → logits at the input size.

    Shape:
        - image: (B, 3, H, W), pipeline-normalised.
        - output: (B, K, H, W).
    """

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, image: Tensor) -> Tensor:
        logits = self.segmenter(image).logits
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)


@dataclass
class ExportReport:
    """What was written, and for ONNX the parity with PyTorch.

    Attributes:
        path: The file written.
        format: ``"onnx"`` or ``"safetensors"``.
        parity: One ``{"size": (H, W), "max_abs_diff": float, "max_abs_logit": float}`` per
            checked input size (empty when not checked).
    """

    path: Path
    format: str
    parity: list[dict[str, Any]] = field(default_factory=list)


def _metadata(info: dict[str, Any]) -> dict[str, str]:
    arch = info["arch"]
    table = class_table_for(info["class_names"], arch["num_classes"], "the model", info["palette"])
    model_input, weights_input = input_metadata(arch)
    return {
        "spcl_arch": json.dumps(arch),
        "class_names": json.dumps(list(table.names)),
        "palette": json.dumps([list(c) for c in table.palette]),
        "input": json.dumps(model_input),
        "weights_input": json.dumps(weights_input),
        "output": "logits (B, K, H, W) at the input size; argmax over K = class index",
    }


def export_onnx(
    model: nn.Module,
    metadata: dict[str, str],
    *,
    size: Sequence[int] = DEFAULT_SIZE,
    opset: int = DEFAULT_OPSET,
) -> bytes:
    """The ONNX bytes of ``LogitsAtInputSize(model)`` traced at ``size``, dynamic B/H/W."""
    import onnx  # the `export` extra

    wrapper = LogitsAtInputSize(model).eval()
    example = torch.zeros(1, 3, int(size[0]), int(size[1]))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        _trace_to_onnx(wrapper, example, buffer, opset)
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, metadata)
    return graph.SerializeToString()


def _trace_to_onnx(wrapper: nn.Module, example: Tensor, buffer: io.BytesIO, opset: int) -> None:
    """Run the TorchScript exporter; a model it cannot trace is a named UsageError."""
    try:
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=DYNAMIC_AXES,
            opset_version=opset,
        )
    except (TypeError, RuntimeError) as exc:  # an op or shape computation the tracer cannot map
        name = type(wrapper.segmenter).__name__
        raise UsageError(
            f"{name} cannot be exported to ONNX with dynamic height/width by the TorchScript "
            f"exporter ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            f"--format safetensors works for every model"
        ) from exc


def onnx_parity(
    model: nn.Module, onnx_bytes: bytes, sizes: Sequence[Sequence[int]], seed: int = 0
) -> list[dict[str, Any]]:
    """Max |onnxruntime − PyTorch| of the logits on a random image per size (CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    wrapper = LogitsAtInputSize(model).eval()
    rows = []
    for height, width in sizes:
        gen = torch.Generator().manual_seed(seed)  # one image per size, reproducible alone
        image = torch.randn(1, 3, int(height), int(width), generator=gen)
        with torch.no_grad():
            expected = wrapper(image)
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})
        if tuple(actual.shape) != tuple(expected.shape):
            raise RuntimeError(
                f"ONNX output {tuple(actual.shape)} vs PyTorch {tuple(expected.shape)} at "
                f"{height}×{width}: the graph is not size-independent"
            )
        diff = (torch.from_numpy(actual) - expected).abs().max().item()
        rows.append(
            {
                "size": (int(height), int(width)),
                "max_abs_diff": diff,
                "max_abs_logit": expected.abs().max().item(),
            }
        )
    return rows


def _second_size(size: Sequence[int]) -> tuple[int, int]:
    return tuple(max(MIN_SIDE, s + d) for s, d in zip(size, PARITY_OFFSET, strict=True))  # type: ignore[return-value]


def export_model(
    model_file: str | Path,
    fmt: ExportFormat,
    out: str | Path | None = None,
    *,
    size: Sequence[int] = DEFAULT_SIZE,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    overwrite: bool = False,
) -> ExportReport:
    """Export a model file (any format :func:`load_model_file` reads) as ONNX or safetensors.

    Args:
        model_file: The model to export.
        fmt: ``"onnx"`` or ``"safetensors"``.
        out: Output path; default: ``model_file`` with the format's suffix.
        size: ONNX: the traced example's (H, W) and the first parity-check size.
        opset: ONNX opset.
        check: ONNX: run onnxruntime at ``size`` and at a second size, report the difference.
        overwrite: Replace an existing output file.

    Raises:
        FileExistsError: ``out`` exists and not ``overwrite`` (nothing is written).
        ValueError: an unknown format or a bad size.
        CheckpointError: the model file cannot be read (named).
    """
    if fmt not in ("onnx", "safetensors"):
        raise UsageError(f"--format must be onnx or safetensors, got {fmt!r}")
    if len(size) != 2 or min(size) < MIN_SIDE:
        raise UsageError(f"--size must be H,W with both sides >= {MIN_SIDE}, got {list(size)}")
    out = Path(out) if out is not None else Path(model_file).with_suffix(f".{fmt}")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    model, info = load_model_file(model_file)
    if fmt == "safetensors":
        table = class_table_for(
            info["class_names"], info["arch"]["num_classes"], model_file, info["palette"]
        )
        path = write_safetensors_model(
            out, model.state_dict(), arch=info["arch"], class_names=table.names,
            palette=table.palette,
        )  # fmt: skip
        return ExportReport(path, fmt)
    data = export_onnx(model, _metadata(info), size=size, opset=opset)
    parity = onnx_parity(model, data, [tuple(size), _second_size(size)]) if check else []
    atomic_write_bytes(out, data)  # only once the graph has been checked
    return ExportReport(out, fmt, parity)
