"""Cross-domain ClassMix (DACS) masks and mixing of images, labels and weights.

DACS pastes half of the source classes onto the target image (lhoyer/DAFormer:
mmseg/models/utils/dacs_transforms.py ``get_class_masks``, ``generate_class_mask``, ``one_mix``;
from vikolss/DACS):

* ``classes = unique(all source labels of the batch)``: batch-wide, so a class chosen for image i
  may be absent from it, and the ignore label 255 counts as a class and may be pasted (a quirk kept
  by MIC and VFM-UDA). Switches: ``exclude_ignore=True`` drops the ignore label from the
  candidates; ``per_sample_classes=True`` takes each image's own classes (the ClassMix paper).
* per image i, ``⌈n/2⌉`` (``int((n + n % 2) / 2)``) of the n candidates are chosen uniformly
  without replacement; ``M_i = [y_s,i ∈ chosen_i]``.
* ``x = M·x_s + (1 − M)·x_t``, ``y = M·y_s + (1 − M)·ŷ_t``, ``w = M·1 + (1 − M)·w_t``.

The draw is vectorised and free of device syncs: every candidate gets a uniform score from the
passed ``torch.Generator`` and the ``⌈n/2⌉`` lowest-scored ones are chosen, which is a uniform
subset without replacement (the same distribution as ``np.random.choice(n, k, replace=False)``,
not the same stream). Label values outside ``[0, num_classes)`` all share the ignore slot.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ClassMixMasks", "MixedBatch", "class_mix_masks", "mix", "mix_batch"]


class ClassMixMasks(NamedTuple):
    """ClassMix masks and the classes behind them.

    ``chosen[i, k]`` says whether class k was chosen for image i; slot ``num_classes`` stands for
    the ignore label (and any other value outside ``[0, num_classes)``).
    """

    mask: Tensor  # (B, H, W) bool: pixels pasted from the source
    chosen: Tensor  # (B, K + 1) bool
    candidates: Tensor  # (B, K + 1) bool: the classes the choice was made from


def _label_slots(labels: Tensor, num_classes: int) -> Tensor:
    """Labels as slot indices: classes 0..K-1 keep theirs, everything else goes to slot K."""
    labels = labels.long()
    return labels.masked_fill((labels < 0) | (labels >= num_classes), num_classes)


@torch.no_grad()
def class_mix_masks(
    src_labels: Tensor,
    num_classes: int,
    generator: torch.Generator,
    *,
    exclude_ignore: bool = False,
    per_sample_classes: bool = False,
) -> ClassMixMasks:
    """DACS ClassMix masks: per image, ⌈n/2⌉ of the n candidate source classes.

    Args:
        src_labels: source ground truth (ignore label included).
        num_classes: K.
        generator: the random stream (its device is where the scores are drawn; a CPU
            generator gives the same masks on every device).
        exclude_ignore: leave the ignore label out of the candidates (reference: False, 255 is
            a candidate like any class).
        per_sample_classes: candidates from each image's own labels (reference: False, from the
            whole batch).

    Returns:
        :class:`ClassMixMasks` ``(mask, chosen, candidates)``.

    Shape:
        src_labels: (B, H, W) → mask (B, H, W); chosen, candidates (B, K + 1).
    """
    if src_labels.dim() != 3:
        raise ValueError(f"src_labels must be (B, H, W), got shape {tuple(src_labels.shape)}")
    batch = src_labels.shape[0]
    slots = _label_slots(src_labels, num_classes).reshape(batch, -1)  # (B, n)
    present = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=slots.device)
    present.scatter_(1, slots, True)  # (B, K + 1)
    if not per_sample_classes:
        present = present.any(dim=0, keepdim=True).expand(batch, -1)
    if exclude_ignore:
        present = present.clone()
        present[:, num_classes] = False
    scores = torch.rand(batch, num_classes + 1, generator=generator, device=generator.device)
    scores = scores.to(slots.device).masked_fill(~present, 2.0)  # absent: after every candidate
    ranks = scores.argsort(dim=1).argsort(dim=1)  # rank of each slot among the B scores
    num_chosen = (present.sum(dim=1, keepdim=True) + 1) // 2  # ⌈n/2⌉
    chosen = (ranks < num_chosen) & present
    mask = chosen.gather(1, slots).reshape(src_labels.shape)
    return ClassMixMasks(mask, chosen, present)


def mix(mask: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """``M·source + (1 − M)·target`` for a binary mask (computed as a select: the same values).

    Args:
        mask: pixels taken from ``source`` (bool, or 0/1).
        source: images (B, C, H, W) or maps (B, H, W).
        target: same shape as ``source``.

    Shape:
        mask: (B, H, W) → output like ``source``.
    """
    if source.shape != target.shape:
        raise ValueError(f"source {tuple(source.shape)} and target {tuple(target.shape)} differ")
    if mask.dim() != 3 or (source.shape[0], *source.shape[-2:]) != tuple(mask.shape):
        raise ValueError(
            f"mask must be (B, H, W) = {(source.shape[0], *source.shape[-2:])}, "
            f"got {tuple(mask.shape)}"
        )
    select = mask.bool()
    if source.dim() == 4:
        select = select[:, None]  # (B, 1, H, W) over channels
    return torch.where(select, source, target)


class MixedBatch(NamedTuple):
    """A ClassMix batch: image (B, C, H, W), labels (B, H, W) int64, weight (B, H, W) float."""

    image: Tensor
    labels: Tensor
    weight: Tensor


def mix_batch(
    mask: Tensor,
    src_image: Tensor,
    tgt_image: Tensor,
    src_labels: Tensor,
    tgt_pseudo: Tensor,
    tgt_weight: Tensor,
) -> MixedBatch:
    """Mix source into target: images, labels (GT over pseudo-labels) and weights (1 over w_t).

    Pasted source pixels keep their label, ignore included (the loss skips those), and get
    weight 1; the others keep the target's pseudo-label and weight (DAFormer ``one_mix`` on
    ``(gt, ŷ)`` and on ``(1, w_t)``). The strong augmentation is applied to the image afterwards
    (``spcl.method.photometric``).

    Shape:
        mask, src_labels, tgt_pseudo, tgt_weight: (B, H, W); images: (B, C, H, W).
    """
    labels = mix(mask, src_labels.long(), tgt_pseudo.long())
    weight = mix(mask, torch.ones_like(tgt_weight), tgt_weight)
    return MixedBatch(mix(mask, src_image, tgt_image), labels, weight)
