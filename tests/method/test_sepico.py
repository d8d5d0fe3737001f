"""SePiCo's class statistics and losses against naive computations (per pixel, all at once)."""

from __future__ import annotations

import math

import pytest
import torch

from spcl.method.sepico import (
    ClassStatistics,
    bank_contrastive_loss,
    contrast_labels,
    dist_contrastive_loss,
    proto_contrastive_loss,
    prototype_regularizer,
)

IGNORE = 255
K, C = 4, 6


def _batch(seed: int, b: int = 2, h: int = 3, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(b, C, h, w, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, K, (b, h, w), generator=gen)
    labels[torch.rand(b, h, w, generator=gen) < 0.2] = IGNORE
    return features, labels


def _pixels(features: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Every labelled pixel's normalised feature and label, one by one."""
    out = []
    b, _, h, w = features.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                label = int(labels[i, y, x])
                if label != IGNORE:
                    vec = features[i, :, y, x]
                    out.append((vec / vec.norm(), label))
    return out


def _naive_reg(pixels: list, means: torch.Tensor, tau: float) -> torch.Tensor:
    mean_feat = torch.stack([f for f, _ in pixels]).mean(0)
    scores = torch.stack([mean_feat @ means[c] / tau for c in range(K)])
    log_z = torch.logsumexp(scores, 0)
    return sum(scores[c] - log_z for c in range(K)) / (K * math.log(K))


def _naive_dist(features, labels, means, variances, tau: float, reg: float) -> torch.Tensor:
    pixels = _pixels(features, labels)
    losses = []
    for f, y in pixels:
        q = variances / tau
        logits = torch.stack([(f @ means[c] + 0.5 * (f * f) @ q[c]) / tau for c in range(K)])
        ce = torch.logsumexp(logits, 0) - logits[y]
        losses.append(ce + 0.5 * (f * f) @ q[y] / tau)
    return torch.stack(losses).mean() + reg * _naive_reg(pixels, means, tau)


def _naive_bank(features, labels, banks: list[list[torch.Tensor]], means, tau, reg):
    pixels = _pixels(features, labels)
    losses = []
    for f, y in pixels:
        neg = [torch.stack([f @ b / tau for b in banks[k]]).mean() for k in range(K) if k != y]
        rest = sum(torch.exp(n) for n in neg)
        terms = [
            -torch.log(torch.exp(f @ b / tau) / (torch.exp(f @ b / tau) + rest)) for b in banks[y]
        ]
        losses.append(torch.stack(terms).mean())
    return torch.stack(losses).mean() + reg * _naive_reg(pixels, means, tau)


def _stats(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(K, C, generator=gen, dtype=torch.float64))
    return means, torch.rand(K, C, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize(("tau", "reg"), [(100.0, 1.0), (0.3, 0.0), (0.3, 1.0)])
def test_dist_loss_and_gradient_match_a_per_pixel_loop(tau: float, reg: float) -> None:
    features, labels = _batch(0)
    means, variances = _stats(1)
    mine = features.clone().requires_grad_()
    naive = features.clone().requires_grad_()
    loss = dist_contrastive_loss(mine, labels, means, variances * 50, tau, reg)
    expected = _naive_dist(naive, labels, means, variances * 50, tau, reg)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(mine.grad, naive.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(("tau", "reg"), [(100.0, 1.0), (0.3, 0.0), (0.3, 1.0)])
def test_bank_loss_and_gradient_match_a_per_pixel_loop(tau: float, reg: float) -> None:
    features, labels = _batch(2)
    means, _ = _stats(3)
    gen = torch.Generator().manual_seed(4)
    length = 3
    bank = torch.randn(K, length, C, generator=gen, dtype=torch.float64)
    filled = torch.tensor([1, 3, 2, 3])  # unfilled slots hold noise that must not count
    banks = [[bank[k, i] for i in range(int(filled[k]))] for k in range(K)]
    mine = features.clone().requires_grad_()
    naive = features.clone().requires_grad_()
    loss = bank_contrastive_loss(mine, labels, bank, filled, means, tau, reg)
    expected = _naive_bank(naive, labels, banks, means, tau, reg)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(mine.grad, naive.grad, rtol=1e-8, atol=1e-12)


def test_proto_loss_and_regulariser_match_a_per_pixel_loop() -> None:
    features, labels = _batch(5)
    means, _ = _stats(6)
    tau = 0.3
    pixels = _pixels(features, labels)
    ce = [torch.logsumexp(f @ means.T / tau, 0) - f @ means[y] / tau for f, y in pixels]
    expected = torch.stack(ce).mean() + _naive_reg(pixels, means, tau)
    loss = proto_contrastive_loss(features, labels, means, tau, regularizer=1.0)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    # the authors' sign: the sum of log-probabilities, ≤ 0, added as it is
    feat = torch.stack([f for f, _ in pixels])
    assert prototype_regularizer(feat, means, tau) < 0


def test_losses_on_an_all_ignored_map_are_an_attached_zero() -> None:
    features, labels = _batch(7)
    labels.fill_(IGNORE)
    means, variances = _stats(8)
    features.requires_grad_()
    bank, filled = torch.zeros(K, 2, C, dtype=torch.float64), torch.ones(K, dtype=torch.long)
    for loss in (
        proto_contrastive_loss(features, labels, means, 100.0, 1.0),
        dist_contrastive_loss(features, labels, means, variances, 100.0, 1.0),
        bank_contrastive_loss(features, labels, bank, filled, means, 100.0, 1.0),
    ):
        assert loss.item() == 0.0 and loss.requires_grad


def _naive_moments(batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """Mean, biased variance and count of every class over all pixels seen so far, at once."""
    pixels = [p for features, labels in batches for p in _pixels(features, labels)]
    mean, var = torch.zeros(K, C, dtype=torch.float64), torch.zeros(K, C, dtype=torch.float64)
    count = torch.zeros(K, dtype=torch.long)
    for k in range(K):
        feats = [f for f, y in pixels if y == k]
        if feats:
            stacked = torch.stack(feats)
            mean[k], var[k] = stacked.mean(0), stacked.var(0, unbiased=False)
            count[k] = len(feats)
    return mean, var, count


def test_statistics_equal_the_naive_cumulative_moments_after_every_batch() -> None:
    stats = ClassStatistics(K, C, memory_length=0, dtype=torch.float64)
    seen = []
    for seed in range(4):
        features, labels = _batch(10 + seed, h=4)
        if seed == 1:
            labels[labels == 3] = IGNORE  # a class absent from one batch keeps its statistics
        seen.append((features, labels))
        stats.update(features, labels)
        mean, var, count = _naive_moments(seen)
        torch.testing.assert_close(stats.mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(stats.variance, var, rtol=1e-10, atol=1e-12)
        assert torch.equal(stats.count, count)


def test_statistics_from_summed_shards_equal_one_process() -> None:
    """Two 'ranks' with half the batch each, their sums added as an all-reduce would: the
    statistics equal those of one process that saw the whole batch (a sum of means would not)."""
    whole = ClassStatistics(K, C, memory_length=3, dtype=torch.float64)
    ranks = [ClassStatistics(K, C, memory_length=3, dtype=torch.float64) for _ in range(2)]
    for seed in range(3):
        features, labels = _batch(20 + seed, b=4)
        whole.update(features, labels)
        shards = [(features[:1], labels[:1]), (features[1:], labels[1:])]
        _update_as_two_ranks(ranks, shards)
    for rank in ranks:
        for name, value in whole.state_dict().items():
            torch.testing.assert_close(rank.state_dict()[name], value, rtol=1e-10, atol=1e-12)


def _update_as_two_ranks(ranks: list[ClassStatistics], shards: list) -> None:
    """Run both ranks' updates in lock step: each ``reduce`` call sums the two ranks' tensors."""
    import threading

    barrier = threading.Barrier(2)
    slots: list[torch.Tensor | None] = [None, None]

    def worker(i: int) -> None:
        def reduce(t: torch.Tensor) -> torch.Tensor:
            slots[i] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return t.copy_(total)

        ranks[i].update(*shards[i], reduce=reduce)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_bank_keeps_the_last_batch_means_after_the_initial_zero() -> None:
    stats = ClassStatistics(K, C, memory_length=2, dtype=torch.float64)
    assert stats.filled.tolist() == [1] * K and stats.bank.abs().sum() == 0
    means = []
    for seed in range(3):
        features, labels = _batch(30 + seed)
        labels.fill_(0)
        means.append(torch.stack([f for f, _ in _pixels(features, labels)]).mean(0))
        stats.update(features, labels)
    assert stats.filled.tolist() == [2, 1, 1, 1]
    # the ring: zero, then m0 (slot 1), m1 over the zero (slot 0), m2 over m0 (slot 1)
    torch.testing.assert_close(stats.bank[0], torch.stack([means[1], means[2]]))
    assert stats.bank[1:].abs().sum() == 0  # absent classes keep their zero vector


def test_ratio_downscale_matches_a_hand_computation() -> None:
    # 4x4 labels pooled to 2x2 (s = 2): each block keeps its class from 3 of 4 pixels (0.75)
    labels = torch.tensor(
        [
            [
                [1, 1, 2, 2],
                [1, 0, 2, 3],
                [IGNORE, IGNORE, 5, 5],
                [IGNORE, 4, 5, 5],
            ]
        ]
    )
    # block (0,0): 1 ×3 → 1; (0,1): 2 ×3 → 2; (1,0): ignore ×3 → ignore; (1,1): 5 ×4 → 5
    out = contrast_labels(labels, (2, 2), "ratio", num_classes=6)
    assert out.tolist() == [[[1, 2], [IGNORE, 5]]]
    labels[0, 0, 1] = 3  # block (0,0) now 1 ×2 (0.5 < 0.75): ignore
    assert contrast_labels(labels, (2, 2), "ratio", num_classes=6).tolist() == [
        [[IGNORE, 2], [IGNORE, 5]]
    ]
    # nearest takes each block's top-left pixel
    assert contrast_labels(labels, (2, 2), "nearest", num_classes=6).tolist() == [
        [[1, 2], [IGNORE, 5]]
    ]
    with pytest.raises(ValueError, match="one integer factor"):
        contrast_labels(labels, (3, 3), "ratio", num_classes=6)
