"""SePiCo's class statistics and its contrastive losses: DistCL, BankCL, ProtoCL, the regulariser.

SePiCo (BIT-DA/SePiCo, docs/recipes.md "SePiCo contrast") keeps, per class c, statistics of the
teacher's L2-normalised projection features on the weak source image (:class:`ClassStatistics`):

* a *cumulative* mean μ_c and diagonal variance Σ_c over every labelled pixel seen so far: with
  the batch's count m_c, mean μ̂_c and (biased) variance σ̂²_c, the running count M_c and
  ``w_c = m_c / (m_c + M_c)`` (0 when both are 0)::

      Σ_c ← (1 − w_c)·Σ_c + w_c·σ̂²_c + w_c(1 − w_c)·(μ_c − μ̂_c)²
      μ_c ← (1 − w_c)·μ_c + w_c·μ̂_c ;  M_c ← M_c + m_c

  which is the exact pooled mean and variance of all pixels so far (not an EMA);
* for BankCL, the last ``memory_length`` (200) batch means of each class, starting, as the
  authors' deque does, from one zero vector per class.

Against them, with f a pixel's normalised feature, y its label and τ the divisor (100):

* ProtoCL: ``CE(f·μᵀ/τ, y)``;
* DistCL: with ``q_c = Σ_c/τ``, ``logits_c = (f·μ_c + ½ f²·q_c)/τ`` and the loss
  ``CE(logits, y) + ½ f²·q_y/τ``;
* BankCL: positives ``p_l = f·b_{y,l}/τ`` over the banked means of class y, negatives
  ``n_k = mean_l f·b_{k,l}/τ`` for every other class k; the loss is
  ``mean_l −log(e^{p_l} / (e^{p_l} + Σ_{k≠y} e^{n_k}))``;
* each averaged over the labelled pixels, plus the regulariser (weight 1.0) with m the mean of
  those pixels' features: ``Σ_c log softmax(m·μᵀ/τ)_c / (K ln K)``, added with the sign the
  authors' code has (``contrastive_loss.py`` ``proto_reg``).

Labels reach feature size either by nearest neighbour (spcl's SPCL convention) or, as SePiCo
does, by average pooling with its 0.75 ratio rule (:func:`contrast_labels`).

Distributed: :meth:`ClassStatistics.update` takes a ``reduce`` (an in-place all-reduce sum). Sums
of class means would be wrong, so it reduces counts and feature sums first, takes the global
batch mean, then reduces the squared deviations from *that* mean: every rank applies the same
global batch statistics and the estimators stay identical. Nothing here knows about ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.base import IGNORE_INDEX
from spcl.method.feature_distance import downscale_label_ratio
from spcl.method.prototypes import downsample_labels

__all__ = [
    "REFERENCE_LABEL_MIN_RATIO",
    "REFERENCE_MEMORY_LENGTH",
    "REFERENCE_REGULARIZER_WEIGHT",
    "ClassStatistics",
    "ContrastLoss",
    "LabelDownscale",
    "bank_contrastive_loss",
    "contrast_labels",
    "dist_contrastive_loss",
    "proto_contrastive_loss",
    "prototype_regularizer",
]

REFERENCE_MEMORY_LENGTH = 200  # BankCL's per-class memory (experiments.py `memory_length`)
REFERENCE_REGULARIZER_WEIGHT = 1.0  # `reg_relative_weight` 1.0 × `loss_weight` 1.0
REFERENCE_LABEL_MIN_RATIO = 0.75  # `scale_min_ratio`: a block keeps its label from a 75% share
ContrastLoss = Literal["proto", "dist", "bank"]
LabelDownscale = Literal["nearest", "ratio"]
Reduce = Callable[[Tensor], Tensor]  # in-place sum across processes (identity when alone)
_STAT_DTYPES = (torch.float32, torch.float64)  # statistics never run in half precision


def contrast_labels(
    labels: Tensor,
    size: tuple[int, int],
    mode: LabelDownscale,
    num_classes: int,
    min_ratio: float = REFERENCE_LABEL_MIN_RATIO,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Labels at feature size: nearest neighbour, or SePiCo's ratio rule (``mode="ratio"``).

    The ratio rule average-pools the one-hot labels (ignore as an extra class) by
    ``s = W // w`` and keeps a block's majority class where it holds ``min_ratio`` of the block
    and is not the ignore class (:func:`~spcl.method.feature_distance.downscale_label_ratio`).

    Raises:
        ValueError: with ``"ratio"``, when ``(H // s, W // s)`` is not the feature size (the
            rule needs an integer stride).

    Shape:
        labels: (B, H, W) → (B, h, w) int64.
    """
    if mode == "nearest":
        return downsample_labels(labels, size)
    if mode != "ratio":
        raise ValueError(f"label downscale mode {mode!r}; expected 'nearest' or 'ratio'")
    height, width = labels.shape[-2:]
    scale = width // size[1]
    if scale < 1 or (height // scale, width // scale) != tuple(size):
        raise ValueError(
            f"labels {height}x{width} cannot be average-pooled to the features' "
            f"{size[0]}x{size[1]} by one integer factor; use the nearest downscale"
        )
    return downscale_label_ratio(labels, scale, num_classes, min_ratio, ignore_index)


def _flat_normalized(features: Tensor) -> Tensor:
    """(B, C, h, w) → (B, C, n), L2-normalised over channels, float32 at least."""
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    if features.dtype not in _STAT_DTYPES:
        features = features.float()
    return F.normalize(features.flatten(2), dim=1)


def _check_labels(features: Tensor, labels: Tensor) -> Tensor:
    expected = (features.shape[0], *features.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must be (B, h, w) = {expected} to match features {tuple(features.shape)}, "
            f"got {tuple(labels.shape)}; bring them to feature size with contrast_labels()"
        )
    return labels.reshape(labels.shape[0], -1).long()  # (B, n)


def _valid_pixels(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """The labelled pixels' normalised features (N, C) and labels (N,)."""
    flat = _check_labels(features, labels)
    feat = _flat_normalized(features).transpose(1, 2).reshape(-1, features.shape[1])
    flat = flat.reshape(-1)
    keep = (flat != ignore_index) & (flat >= 0) & (flat < num_classes)
    return feat[keep], flat[keep]


def prototype_regularizer(features: Tensor, means: Tensor, temperature: float) -> Tensor:
    """``Σ_c log softmax(m·μᵀ/τ)_c / (K ln K)``, m the mean feature (authors' sign; 0 if K < 2).

    Shape:
        features: (N, C) normalised labelled pixels, N ≥ 1; means: (K, C) → ().
    """
    num_classes = means.shape[0]
    if num_classes < 2:  # K ln K = 0: the term is undefined, the authors never meet it
        return features.sum() * 0.0
    scores = features.mean(dim=0, keepdim=True) @ means.detach().to(features.dtype).T
    log_p = torch.log_softmax(scores / temperature, dim=1)
    return log_p.sum() / (num_classes * math.log(num_classes))


def _finish(loss: Tensor, feat: Tensor, means: Tensor, temperature: float, reg: float) -> Tensor:
    """The mean over pixels plus the regulariser (when its weight is > 0)."""
    if reg > 0:
        loss = loss + reg * prototype_regularizer(feat, means, temperature)
    return loss


def proto_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    means: Tensor,
    temperature: float,
    regularizer: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """ProtoCL: ``CE(f·μᵀ/τ, y)`` over labelled pixels, plus the regulariser.

    An empty label map gives a zero attached to the graph.

    Shape:
        features: (B, C, h, w); labels: (B, h, w); means: (K, C) → ().
    """
    feat, y = _valid_pixels(features, labels, means.shape[0], ignore_index)
    if y.numel() == 0:
        return features.sum() * 0.0
    logits = feat @ means.detach().to(feat.dtype).T / temperature
    loss = F.cross_entropy(logits, y)
    return _finish(loss, feat, means, temperature, regularizer)


def dist_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    means: Tensor,
    variances: Tensor,
    temperature: float,
    regularizer: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """DistCL: ``CE((f·μ_c + ½ f²·q_c)/τ, y) + ½ f²·q_y/τ`` with ``q = Σ/τ``, plus the regulariser.

    The second term is the ``½ f²·q_y`` entry of the logits' variance part, read back by index.

    Shape:
        features: (B, C, h, w); labels: (B, h, w); means, variances: (K, C) → ().
    """
    feat, y = _valid_pixels(features, labels, means.shape[0], ignore_index)
    if y.numel() == 0:
        return features.sum() * 0.0
    spread = 0.5 * variances.detach().to(feat.dtype) / temperature  # ½ q, (K, C)
    spread_part = (feat * feat) @ spread.T  # (N, K): ½ f²·q_c
    logits = (feat @ means.detach().to(feat.dtype).T + spread_part) / temperature
    own = spread_part.gather(1, y[:, None])[:, 0] / temperature  # ½ f²·q_y / τ
    loss = F.cross_entropy(logits, y, reduction="none") + own
    return _finish(loss.mean(), feat, means, temperature, regularizer)


def bank_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    bank: Tensor,
    filled: Tensor,
    means: Tensor,
    temperature: float,
    regularizer: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """BankCL against the banked class means, plus the regulariser (on ``means``).

    ``bank[k, :filled[k]]`` are class k's stored means (order does not matter). The negatives
    are means of similarities, which are linear in the bank: one product with each class's
    mean bank entry gives them; the positives take one product per class present.

    Shape:
        features: (B, C, h, w); labels: (B, h, w); bank: (K, L, C); filled: (K,) ≥ 1;
        means: (K, C) → ().
    """
    num_classes = bank.shape[0]
    feat, y = _valid_pixels(features, labels, num_classes, ignore_index)
    if y.numel() == 0:
        return features.sum() * 0.0
    bank = bank.detach().to(feat.dtype)
    slots = torch.arange(bank.shape[1], device=bank.device)[None, :] < filled[:, None]  # (K, L)
    bank_mean = (bank * slots[..., None]).sum(1) / filled.clamp(min=1)[:, None].to(feat.dtype)
    negatives = feat @ bank_mean.T / temperature  # (N, K)
    own = F.one_hot(y, num_classes).bool()
    log_rest = torch.logsumexp(negatives.masked_fill(own, float("-inf")), dim=1)  # log Σ_{k≠y}
    losses = []
    for cls in torch.unique(y).tolist():
        pick = y == cls
        positives = feat[pick] @ bank[cls, : int(filled[cls])].T / temperature  # (N_c, L_c)
        # −log(e^p / (e^p + e^r)) = logaddexp(p, r) − p, stable for any r (−inf included)
        losses.append((torch.logaddexp(positives, log_rest[pick, None]) - positives).mean(1))
    loss = torch.cat(losses).mean()
    return _finish(loss, feat, means, temperature, regularizer)


class ClassStatistics(nn.Module):
    """SePiCo's per-class cumulative mean, diagonal variance and (BankCL) memory of batch means.

    Buffers (saved by ``state_dict()``, moved by ``.to()``): ``mean`` and ``variance`` (K, C),
    ``count`` (K,) int64 pixels seen, and with ``memory_length > 0`` ``bank`` (K, L, C),
    ``filled`` (K,) entries in use and ``next_slot`` (K,) the ring position of the next entry.
    Each class's bank starts with one zero vector, as the authors' deque starts with the zero
    initial mean; it leaves once ``memory_length`` batch means have followed it.

    Args:
        num_classes: K.
        dim: feature channels C.
        memory_length: L, batch means kept per class (0: no bank).
        dtype: of the statistics (float32 as the authors; float64 for checks).
    """

    mean: Tensor
    variance: Tensor
    count: Tensor
    bank: Tensor
    filled: Tensor
    next_slot: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        memory_length: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if memory_length < 0:
            raise ValueError(f"memory_length must be ≥ 0, got {memory_length}")
        self.num_classes, self.dim, self.memory_length = num_classes, dim, memory_length
        self.register_buffer("mean", torch.zeros(num_classes, dim, dtype=dtype))
        self.register_buffer("variance", torch.zeros(num_classes, dim, dtype=dtype))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.int64))
        self.register_buffer("bank", torch.zeros(num_classes, memory_length, dim, dtype=dtype))
        ones = torch.full((num_classes,), min(memory_length, 1), dtype=torch.int64)
        self.register_buffer("filled", ones)  # the zero vector each deque starts with
        self.register_buffer("next_slot", ones.clone() % max(memory_length, 1))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, memory={self.memory_length}"

    @torch.no_grad()
    def update(
        self,
        features: Tensor,
        labels: Tensor,
        reduce: Reduce | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> Tensor:
        """Fold one batch into the statistics; returns the batch's (reduced) class counts.

        Args:
            features: feature maps (normalised over channels here).
            labels: labels at feature size; ignored and out-of-range pixels skipped.
            reduce: in-place all-reduce sum across processes (None: one process).
            ignore_index: label of pixels to skip.

        Shape:
            features: (B, C, h, w); labels: (B, h, w).
        """
        if self.mean.device != features.device:
            self.to(features.device)  # the statistics follow the features
        reduce = reduce or (lambda t: t)
        flat = _check_labels(features, labels)
        with torch.autocast(device_type=features.device.type, enabled=False):
            feat = _flat_normalized(features).to(self.mean.dtype)  # (B, C, n)
            valid = (flat != ignore_index) & (flat >= 0) & (flat < self.num_classes)
            index = flat.masked_fill(~valid, 0)  # (B, n)
            one_hot = F.one_hot(index, self.num_classes).to(feat.dtype) * valid[..., None]
            counts = reduce(one_hot.sum(dim=(0, 1)).long())  # (K,) m_c
            sums = reduce(torch.bmm(feat, one_hot).sum(0).T.contiguous())  # (K, C)
            batch_mean = sums / counts.clamp(min=1)[:, None].to(feat.dtype)
            centred = feat - batch_mean[index].transpose(1, 2)  # f − μ̂_y, (B, C, n)
            squares = reduce(torch.bmm(centred * centred, one_hot).sum(0).T.contiguous())
            self._apply_batch(counts, batch_mean, squares)
        return counts

    def _apply_batch(self, counts: Tensor, batch_mean: Tensor, squares: Tensor) -> None:
        """The cumulative update from the batch's counts, means and squared deviations."""
        total = (counts + self.count).double()
        w = torch.where(total > 0, counts.double() / total.clamp(min=1), 0.0)
        w = w.to(self.mean.dtype)[:, None]  # (K, 1)
        batch_var = squares / counts.clamp(min=1)[:, None].to(squares.dtype)
        gap = (self.mean - batch_mean) ** 2
        self.variance.copy_((1 - w) * self.variance + w * batch_var + w * (1 - w) * gap)
        self.mean.copy_((1 - w) * self.mean + w * batch_mean)
        self.count += counts
        if self.memory_length > 0:
            self._remember(batch_mean, counts > 0)

    def _remember(self, batch_mean: Tensor, present: Tensor) -> None:
        """Append each present class's batch mean to its ring (the oldest entry leaves)."""
        classes = torch.nonzero(present)[:, 0]
        slots = self.next_slot[classes]
        self.bank[classes, slots] = batch_mean[classes]
        self.next_slot[classes] = (slots + 1) % self.memory_length
        self.filled[classes] = (self.filled[classes] + 1).clamp(max=self.memory_length)
