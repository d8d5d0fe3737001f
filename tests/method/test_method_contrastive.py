"""Pixel-to-prototype contrastive loss against a per-pixel loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spcl.method.contrastive import (
    REFERENCE_TEMPERATURE,
    pixel_prototype_logits,
    pixel_prototype_loss,
    spcl_contrastive_loss,
)

IGNORE = 255


def _naive_loss(
    features: np.ndarray, labels: np.ndarray, protos: np.ndarray, temperature: float
) -> float:
    b, _, h, w = features.shape
    losses = []
    for i in range(b):
        for y in range(h):
            for x in range(w):
                label = labels[i, y, x]
                if label == IGNORE:
                    continue
                vec = features[i, :, y, x].astype(np.float64)
                scores = [vec @ p / np.linalg.norm(vec) / temperature for p in protos]
                log_z = math.log(sum(math.exp(s) for s in scores))
                losses.append(log_z - scores[label])
    return float(np.mean(losses))


def _inputs(seed: int, b: int = 2, k: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(b, 6, 3, 5, generator=gen)
    labels = torch.randint(0, k - 1, (b, 3, 5), generator=gen)  # class k - 1 never a label
    labels[torch.rand(b, 3, 5, generator=gen) < 0.3] = IGNORE
    protos = torch.randn(k, 6, generator=gen)
    return features, labels, protos


def test_logits_are_cosine_times_prototype_over_temperature() -> None:
    features, _, protos = _inputs(0)
    logits = pixel_prototype_logits(features, protos, temperature=0.5)
    assert logits.shape == (2, 4, 3, 5)
    for i, k, y, x in [(0, 0, 0, 0), (1, 3, 2, 4), (1, 1, 1, 2)]:
        vec = features[i, :, y, x]
        expected = vec @ protos[k] / vec.norm() / 0.5
        torch.testing.assert_close(logits[i, k, y, x], expected)


def test_zero_feature_pixel_gives_zero_logits_and_finite_gradient() -> None:
    features, labels, protos = _inputs(9)
    features[0, :, 1, 2] = 0.0
    labels[0, 1, 2] = 0
    features.requires_grad_(True)
    logits = pixel_prototype_logits(features, protos, 0.1)
    assert torch.all(logits[0, :, 1, 2] == 0)
    expected = torch.einsum("bchw,kc->bkhw", torch.nn.functional.normalize(features, dim=1), protos)
    torch.testing.assert_close(logits, expected / 0.1)
    pixel_prototype_loss(features, labels, protos, 0.1).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


@pytest.mark.parametrize(("seed", "temperature"), [(0, REFERENCE_TEMPERATURE), (1, 0.1), (2, 1.0)])
def test_loss_matches_loop(seed: int, temperature: float) -> None:
    features, labels, protos = _inputs(seed)
    loss = pixel_prototype_loss(features, labels, protos, temperature)
    expected = _naive_loss(features.numpy(), labels.numpy(), protos.numpy(), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_reference_temperature_gives_near_uniform_loss() -> None:
    features, labels, protos = _inputs(3)
    protos = torch.nn.functional.normalize(protos, dim=1)
    loss = pixel_prototype_loss(features, labels, protos)
    assert abs(loss.item() - math.log(4)) < 0.02  # |logit| ≤ 0.01: the documented quirk


def test_single_pixel_and_batch_of_one() -> None:
    features = torch.tensor([1.0, 0.0])[None, :, None, None]
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = pixel_prototype_loss(features, torch.zeros(1, 1, 1, dtype=torch.long), protos, 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)))


def test_gradient_reaches_features_not_prototypes() -> None:
    features, labels, protos = _inputs(4)
    features.requires_grad_(True)
    protos.requires_grad_(True)
    pixel_prototype_loss(features, labels, protos, 0.1).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert protos.grad is None
    ignored = (labels == IGNORE)[:, None].expand_as(features)
    assert torch.all(features.grad[ignored] == 0)


def test_all_ignored_gives_zero_with_graph() -> None:
    features, _, protos = _inputs(5)
    features.requires_grad_(True)
    loss = pixel_prototype_loss(features, torch.full((2, 3, 5), IGNORE), protos)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.requires_grad
    loss.backward()
    assert features.grad is not None and torch.all(features.grad == 0)


def test_spcl_loss_sums_source_and_target_terms() -> None:
    src_feat, src_mask, protos = _inputs(6)
    tgt_feat, tgt_mask, _ = _inputs(7, b=1)
    losses = spcl_contrastive_loss(src_feat, src_mask, tgt_feat, tgt_mask, protos, 0.2)
    src = _naive_loss(src_feat.numpy(), src_mask.numpy(), protos.numpy(), 0.2)
    tgt = _naive_loss(tgt_feat.numpy(), tgt_mask.numpy(), protos.numpy(), 0.2)
    assert losses.source.item() == pytest.approx(src, rel=1e-5)
    assert losses.target.item() == pytest.approx(tgt, rel=1e-5)
    assert losses.total.item() == pytest.approx(src + tgt, rel=1e-5)


def test_errors_name_the_shapes() -> None:
    features, labels, protos = _inputs(8)
    with pytest.raises(ValueError, match=r"prototypes must be \(K, C=6\)"):
        pixel_prototype_logits(features, protos[:, :5], 1.0)
    with pytest.raises(ValueError, match="labels must be"):
        pixel_prototype_loss(features, labels[:, :2], protos)
    with pytest.raises(ValueError, match="temperature"):
        pixel_prototype_logits(features, protos, 0.0)
