"""Evaluation as a library: one inference entry point and one scoring loop, free of any run.

:func:`infer` gives the class probabilities of an image batch with the test-time options:
horizontal flip, several scales, and a sliding window (:mod:`spcl.evaluation.inference`,
:mod:`spcl.evaluation.sliding`). :func:`evaluate` runs it over a loader of labelled batches and
returns the :class:`~spcl.evaluation.scores.SegmentationScores` of one confusion matrix (counts,
per-class IoU, mIoU). Everything comes in as an argument (no config, run context or tracker), so
the evaluation stage, the periodic validation during training, ``spcl evaluate MODEL``,
``spcl predict`` and a user's own script all run this code. ``docs/evaluation.md`` shows it used
from Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any

import torch
from torch import nn

from spcl.evaluation.inference import predict_probs
from spcl.evaluation.metrics import ConfusionMatrix, SegmentationScores
from spcl.evaluation.sliding import parse_slide, predict_probs_sliding
from spcl.progress import progress_bar

__all__ = ["evaluate", "infer"]


@torch.no_grad()
def infer(
    model: nn.Module,
    images: torch.Tensor,
    out_size: Sequence[int] | None = None,
    *,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    slide: Sequence[int] | None = None,
) -> torch.Tensor:
    """Softmax probabilities of ``images``, averaged over scales and flips (and windows).

    Args:
        model: a segmenter in eval mode, returning an object with ``.logits`` (``SegOutput``).
        images: normalised images on the model's device.
        out_size: (H_out, W_out) of the result, e.g. the label's size; None: the input size.
        flip: also run on the horizontally flipped image and average.
        scales: input scale factors, averaged (1.0 = as given).
        slide: sliding window ``(crop, stride)`` or ``(crop_h, crop_w, stride_h, stride_w)`` in
            input pixels, windows averaged where they overlap; None or empty: the whole image.

    Raises:
        ValueError: a ``slide`` of another length, with a value below 1 or a stride over its crop.

    Shape:
        - images: (B, 3, H, W).
        - returns: (B, K, H_out, W_out).
    """
    if not slide:
        return predict_probs(model, images, out_size, flip=flip, scales=scales)
    crop, stride = parse_slide(slide)
    return predict_probs_sliding(
        model, images, out_size, crop=crop, stride=stride, flip=flip, scales=scales
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    device: torch.device | str | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    slide: Sequence[int] | None = None,
    reduce: Callable[[torch.Tensor], Any] | None = None,
    progress: bool = False,
    desc: str = "evaluate",
) -> SegmentationScores:
    """Scores of ``model`` on every labelled batch of ``loader``, from one confusion matrix.

    Each batch's prediction (:func:`infer`, resized to its label) is counted against the label;
    the scores are computed once at the end. The model runs in eval mode and gets its own mode
    back afterwards.

    Args:
        model: the segmenter (not a DDP wrapper: each process scores its own batches).
        loader: batches ``{"image": (B, 3, h, w) normalised, "label": (B, H, W) int64}``, labels
            holding class indices or 255 (ignored), e.g. ``build_eval_loader`` of a dataset.
        class_names: the model's classes, in order (their count K sizes the matrix).
        device: where images and labels go; None: the device of the model's parameters.
        flip, scales, slide: test-time options, as in :func:`infer`.
        reduce: sums the (K, K) counts over processes in place before scoring (e.g.
            ``spcl.engine.distributed.all_reduce_sum_`` under torchrun); None: this process's.
        progress: show a progress bar (tqdm on a terminal, plain lines otherwise).
        desc: the bar's label.

    Returns:
        Per-class IoU and accuracy, mIoU and the confusion counts (``.confusion``).

    Raises:
        ValueError: a bad ``slide`` (before any batch), or labels outside the K classes.
    """
    if slide:
        parse_slide(slide)  # a bad window fails before the first batch
    device = torch.device(device) if device is not None else _device_of(model)
    matrix = ConfusionMatrix(len(class_names), device=device)
    was_training = model.training
    model.eval()
    total = len(loader) if isinstance(loader, Sized) else None
    bar = progress_bar(total=total, desc=desc, disable=not progress)
    try:
        for batch in loader:
            labels = batch["label"].to(device)
            images = batch["image"].to(device)
            probs = infer(model, images, labels.shape[-2:], flip=flip, scales=scales, slide=slide)
            matrix.update(probs.argmax(1), labels)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    if reduce is not None:
        matrix.reduce_(reduce)
    return matrix.compute(class_names)


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
