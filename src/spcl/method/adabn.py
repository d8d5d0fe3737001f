"""Target BatchNorm re-estimation (AdaBN; Li et al. 2016): a control, not part of SPCL.

Every BatchNorm layer's running mean and variance are recomputed as the plain average over a pass
of target images (no gradient step, no other parameter changes). On a model whose BatchNorm was
trained from scratch on source data this alone closes much of a domain gap, which is why spcl
reports it beside SPCL (see the benchmark).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of every ``nn.BatchNorm*`` layer by their target averages.

    Args:
        model: the segmenter (restored to its previous train/eval mode afterwards).
        images: batches of normalised images, already on the model's device.

    Returns:
        The number of BatchNorm layers recalibrated (0 if the model has none, e.g. frozen BN).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    saved = [(m, m.momentum) for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: the plain mean over batches
    was_training = model.training
    model.train()
    for batch in images:
        model(batch)
    model.train(was_training)
    for layer, momentum in saved:
        layer.momentum = momentum
    return len(layers)
