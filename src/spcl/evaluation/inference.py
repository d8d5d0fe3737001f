"""One inference function for evaluation, pseudo-labelling and prediction.

``predict_probs`` runs the segmenter on a batch, optionally at several scales and with a horizontal
flip, and returns softmax probabilities at the requested output size (bilinear, align_corners=True,
as the reference upsamples).

Small inputs. Some encoders cannot run below a minimum side: MiT's first stage reduces its keys and
values with an 8×8 convolution of stride 8 on the stride-4 map, so it needs at least 29 pixels a
side (a 20×30 image raised "Kernel size can't be greater than actual input size"). A view smaller
than :func:`min_input_side` is padded at the bottom and right with zeros of the normalised image
(the image mean, as mmseg pads normalised images to a size divisor), run, and its logits cut back
to the view's own pixels before they are resized to the output size. Views at or above the
minimum, and every view of a DeepLab or DINOv2 model (DINOv2 resizes to whole patches itself),
take the unpadded path unchanged. Sliding-window inference runs each window through here, so it
pads a small window alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spcl.method.losses import upsample_logits
from spcl.models.hrda import HRDASegmenter
from spcl.models.mit import MixVisionTransformer

__all__ = ["min_input_side", "predict_probs"]

NO_MINIMUM = 1  # any side of at least one pixel runs (convolutions with enough zero padding)
LARGEST_CHECKED_SIDE = 4096  # min_input_side looks no further (a MiT needs 29)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    out_size: Sequence[int] | None = None,
    *,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Softmax probabilities averaged over scales (and flips).

    Args:
        model: returns an object with ``.logits`` (e.g. SegOutput) for an image batch.
        images: normalised images (B, 3, H, W).
        out_size: (H_out, W_out) of the result; default the input size.
        flip: also run on the horizontally flipped image and average.
        scales: input scale factors (1.0 = as given).

    Shape:
        returns (B, K, H_out, W_out).
    """
    out_size = tuple(out_size) if out_size is not None else tuple(images.shape[-2:])
    minimum = min_input_side(model)
    total = None
    count = 0
    for scale in scales:
        scaled = images
        if scale != 1.0:
            size = [max(1, round(s * scale)) for s in images.shape[-2:]]
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        for index, view in enumerate(views):
            probs = _view_logits(model, view, out_size, minimum).softmax(dim=1)
            probs = probs.flip(-1) if index == 1 else probs
            total = probs if total is None else total + probs
            count += 1
    assert total is not None
    return total / count


def _view_logits(
    model: nn.Module, view: torch.Tensor, out_size: tuple[int, ...], minimum: int
) -> torch.Tensor:
    """Float logits of one view at ``out_size``, padding a view below ``minimum`` pixels a side.

    Shape:
        - view: (B, 3, h, w) → (B, K, H_out, W_out).
    """
    height, width = view.shape[-2:]
    if height >= minimum and width >= minimum:
        return upsample_logits(model(view).logits.float(), out_size)
    padded = F.pad(view, (0, max(0, minimum - width), 0, max(0, minimum - height)))  # zeros
    logits = upsample_logits(model(padded).logits.float(), padded.shape[-2:])
    return upsample_logits(logits[..., :height, :width].contiguous(), out_size)


def min_input_side(model: nn.Module) -> int:
    """The smallest height and width every encoder inside ``model`` accepts (1 when any is fine).

    A MiT encoder (SegFormer, DAFormer) is simulated stage by stage from its own modules: each
    patch embedding's convolution gives the map size, and each stage's spatial-reduction
    convolution (kernel = stride = its ``sr_ratio``) needs a map at least that large.
    HRDA's context view is the input downscaled, so an HRDA model needs its encoder's minimum
    divided by the context scale.
    """
    sides = [NO_MINIMUM]
    scale = 1.0
    for module in model.modules():
        if isinstance(module, MixVisionTransformer):
            sides.append(_mit_min_side(module))
        if isinstance(module, HRDASegmenter):
            scale = min(scale, module.settings.context_scale)
    return math.ceil(max(sides) / scale)


def _mit_min_side(encoder: MixVisionTransformer) -> int:
    """The smallest input side at which every stage of ``encoder`` can run."""
    stages = []
    index = 1
    while hasattr(encoder, f"patch_embed{index}"):
        conv = getattr(encoder, f"patch_embed{index}").proj
        ratios = [block.attn.sr_ratio for block in getattr(encoder, f"block{index}")]
        stages.append(
            (conv.kernel_size[0], conv.stride[0], conv.padding[0], max(ratios, default=1))
        )
        index += 1
    for side in range(NO_MINIMUM, LARGEST_CHECKED_SIDE + 1):
        size, fits = side, True
        for kernel, stride, padding, reduction in stages:
            if size + 2 * padding < kernel:
                fits = False
                break
            size = (size + 2 * padding - kernel) // stride + 1
            if size < reduction:
                fits = False
                break
        if fits:
            return side
    return LARGEST_CHECKED_SIDE
