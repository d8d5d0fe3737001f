"""Adversarial terms and the tempered source cross-entropy against hand-written formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spcl.method.adversarial import (
    SOURCE_DOMAIN_LABEL,
    TARGET_DOMAIN_LABEL,
    adversarial_generator_loss,
    discriminator_loss,
)
from spcl.method.losses import SOURCE_LOGIT_TEMPERATURE, tempered_cross_entropy, upsample_logits

IGNORE = 255


def _bce(logits: np.ndarray, target: float) -> float:
    """Mean binary cross-entropy with logits, written out per element."""
    values = []
    for z in logits.reshape(-1).astype(np.float64):
        p = 1.0 / (1.0 + math.exp(-z))
        values.append(-(target * math.log(p) + (1 - target) * math.log(1 - p)))
    return float(np.mean(values))


def test_domain_labels_follow_the_reference() -> None:
    assert (SOURCE_DOMAIN_LABEL, TARGET_DOMAIN_LABEL) == (0.0, 1.0)


def test_discriminator_and_generator_losses_match_formulas() -> None:
    gen = torch.Generator().manual_seed(0)
    d_src = torch.randn(2, 1, 3, 4, generator=gen)
    d_tgt = torch.randn(3, 1, 3, 4, generator=gen)  # batch sizes may differ
    expected_d = 0.5 * _bce(d_src.numpy(), 0.0) + 0.5 * _bce(d_tgt.numpy(), 1.0)
    assert discriminator_loss(d_src, d_tgt).item() == pytest.approx(expected_d, rel=1e-6)
    expected_g = _bce(d_tgt.numpy(), 0.0)
    assert adversarial_generator_loss(d_tgt).item() == pytest.approx(expected_g, rel=1e-6)


def test_generator_loss_pushes_target_toward_source_label() -> None:
    d_tgt = torch.zeros(1, 1, 2, 2, requires_grad=True)
    adversarial_generator_loss(d_tgt).backward()
    assert torch.all(d_tgt.grad > 0)  # descending lowers the logit, toward label 0 ("source")


def _naive_ce(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    losses = []
    for i, y, x in np.ndindex(*labels.shape):
        if labels[i, y, x] == IGNORE:
            continue
        scores = logits[i, :, y, x].astype(np.float64) / temperature
        log_z = math.log(sum(math.exp(s) for s in scores))
        losses.append(log_z - scores[labels[i, y, x]])
    return float(np.mean(losses))


def test_tempered_cross_entropy_matches_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 5, generator=gen) * 4
    labels = torch.randint(0, 3, (2, 3, 5), generator=gen)
    labels[0, 0] = IGNORE
    loss = tempered_cross_entropy(logits, labels)
    expected = _naive_ce(logits.numpy(), labels.numpy(), SOURCE_LOGIT_TEMPERATURE)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    plain = tempered_cross_entropy(logits, labels, temperature=1.0)
    assert plain.item() == pytest.approx(_naive_ce(logits.numpy(), labels.numpy(), 1.0), rel=1e-5)


def test_tempered_cross_entropy_all_ignored_and_shape_error() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = tempered_cross_entropy(logits, torch.full((1, 2, 2), IGNORE))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="upsample_logits"):
        tempered_cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long))


def test_upsample_logits_aligns_corners() -> None:
    logits = torch.tensor([[0.0, 1.0]])[None].expand(1, 2, 1, 2).contiguous()
    up = upsample_logits(logits, (1, 5))
    torch.testing.assert_close(up[0, 0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert upsample_logits(logits, (1, 2)) is logits
