"""DACS strong augmentation: HSV conversion, jitter ops, blur kernel and σ, reproducibility.

The last test compares with kornia 0.5.8 (DAFormer's pinned version) when it is importable; it
is skipped otherwise (kornia is not a dependency).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spcl.method.photometric import (
    BLUR_SIGMA_RANGE,
    StrongAugParams,
    apply_strong_augment,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_strong_augment,
    strong_augment,
)


def _params(batch: int, order: list[int], **factors: float) -> StrongAugParams:
    ones = torch.ones(batch, dtype=torch.float64)
    return StrongAugParams(
        jitter=True,
        blur=False,
        brightness=ones * factors.get("brightness", 1.0),
        contrast=ones * factors.get("contrast", 1.0),
        saturation=ones * factors.get("saturation", 1.0),
        hue=ones * factors.get("hue", 0.0),
        order=torch.tensor([order] * batch),
        sigma=ones,
    )


def _colours() -> torch.Tensor:
    """Pure red, green, blue, yellow, grey, white, black as a (1, 3, 1, 7) image."""
    rgb = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0.5, 0.5, 0.5), (1, 1, 1), (0, 0, 0)]
    return torch.tensor(rgb, dtype=torch.float32).T.reshape(1, 3, 1, 7)


def test_hsv_of_known_colours() -> None:
    hue, sat, val = rgb_to_hsv(_colours())[0, :, 0]
    torch.testing.assert_close(hue, torch.tensor([0, 1 / 3, 2 / 3, 1 / 6, 0, 0, 0]))
    torch.testing.assert_close(sat, torch.tensor([1, 1, 1, 1, 0, 0, 0.0]), atol=2e-6, rtol=0)
    torch.testing.assert_close(val, torch.tensor([1, 1, 1, 1, 0.5, 1, 0]))


def test_hsv_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 16, 16, generator=gen)
    rgb[0, :, 0, :4] = rgb[0, 0, 0, :4]  # grey pixels (ties of all channels)
    rgb[1, 1, 0, :4] = rgb[1, 0, 0, :4]  # R = G ties
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(_colours())), _colours(), atol=1e-5, rtol=0)


def test_hue_wraps_for_negative_and_large_values() -> None:
    hsv = rgb_to_hsv(torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1)))
    for shift in (-1.0, 1.0, 2.0, -1e-9):
        moved = hsv.clone()
        moved[:, 0] += shift
        torch.testing.assert_close(hsv_to_rgb(moved), hsv_to_rgb(hsv), atol=1e-5, rtol=0)


def test_hue_shift_by_a_third_turns_red_into_green() -> None:
    out = color_jitter(_colours()[..., :3], _params(1, [3, 0, 1, 2], hue=1 / 3))
    expected = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0.0]])  # columns: R→G, G→B, B→R
    torch.testing.assert_close(out[0, :, 0], expected, atol=1e-5, rtol=0)


def test_brightness_is_additive_and_contrast_multiplicative() -> None:
    image = torch.tensor([0.1, 0.5, 0.95]).view(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    bright = color_jitter(image, _params(1, [0, 1, 2, 3], brightness=1.2))
    torch.testing.assert_close(bright[0, 0, 0], torch.tensor([0.3, 0.7, 1.0]))  # +0.2, clamped
    contrast = color_jitter(image, _params(1, [1, 0, 2, 3], contrast=1.2))
    torch.testing.assert_close(contrast[0, 0, 0], torch.tensor([0.12, 0.6, 1.0]))  # ×1.2
    # order matters: brightness 0.8 then contrast 1.2 differs from the reverse
    ab = color_jitter(image, _params(1, [0, 1, 2, 3], brightness=0.8, contrast=1.2))
    ba = color_jitter(image, _params(1, [1, 0, 2, 3], brightness=0.8, contrast=1.2))
    torch.testing.assert_close(ab[0, 0, 0], torch.tensor([0.0, 0.36, 0.9]))
    torch.testing.assert_close(ba[0, 0, 0], torch.tensor([0.0, 0.4, 0.8]))


def test_saturation_scales_s_and_zero_gives_grey() -> None:
    image = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)
    grey = color_jitter(image, _params(1, [2, 0, 1, 3], saturation=0.0))
    torch.testing.assert_close(grey.flatten(), torch.full((3,), 0.8))  # V kept, S = 0
    half = rgb_to_hsv(color_jitter(image, _params(1, [2, 0, 1, 3], saturation=0.5)))
    torch.testing.assert_close(half.flatten()[1], torch.tensor(0.375), atol=1e-5, rtol=0)


def test_zero_strength_jitter_is_identity_on_normalised_images() -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 8, 8, generator=gen).clamp(-2, 2)  # ≈ normalised range, in [0,1]
    params = sample_strong_augment(2, gen, jitter_strength=0.0, jitter_skip_probability=-1.0)
    assert params.jitter
    params = params._replace(blur=False)
    out = apply_strong_augment(images, params, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.testing.assert_close(out, images, atol=1e-4, rtol=0)  # 1e-5 in [0,1] / std 0.25
    assert out is not images


def test_blur_kernel_size_rule() -> None:
    def reference(length: int) -> int:  # dacs_transforms.gaussian_blur, in numpy
        return int(np.floor(np.ceil(0.1 * length) - 0.5 + np.ceil(0.1 * length) % 2))

    hand = {512: 51, 1024: 103, 640: 63, 64: 7, 33: 3, 41: 5, 10: 1, 1: 1}
    for length, size in hand.items():
        assert blur_kernel_size(length) == size == reference(length)
    for length in range(1, 1200):
        size = blur_kernel_size(length)
        assert size == reference(length) and size % 2 == 1


def test_sigma_range_and_decisions() -> None:
    gen = torch.Generator().manual_seed(4)
    draws = [sample_strong_augment(2, gen) for _ in range(2000)]
    sigma = torch.cat([d.sigma for d in draws])
    low, high = BLUR_SIGMA_RANGE
    assert sigma.min() >= low and sigma.max() <= high
    assert sigma.min() < low + 0.01 and sigma.max() > high - 0.01
    jitter_rate = sum(d.jitter for d in draws) / len(draws)
    blur_rate = sum(d.blur for d in draws) / len(draws)
    # binomial(2000, p): 5 std ≈ 0.045 (p = 0.8), 0.056 (p = 0.5)
    assert abs(jitter_rate - 0.8) < 5 * math.sqrt(0.8 * 0.2 / 2000)
    assert abs(blur_rate - 0.5) < 5 * math.sqrt(0.25 / 2000)
    hue = torch.cat([d.hue for d in draws])
    factors = torch.cat([d.brightness for d in draws] + [d.saturation for d in draws])
    assert hue.abs().max() <= 0.2 and (factors - 1).abs().max() <= 0.2
    assert all(sorted(row) == [0, 1, 2, 3] for d in draws[:50] for row in d.order.tolist())
    assert not any(sample_strong_augment(2, gen, blur=False).blur for _ in range(50))


def test_gaussian_blur_against_naive_2d_convolution() -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 23, 31, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.1], dtype=torch.float64)
    out = gaussian_blur(images, sigma).numpy()
    k_y, k_x = blur_kernel_size(23), blur_kernel_size(31)  # 3, 5
    for b in range(2):
        ys, xs = np.arange(k_y) - k_y // 2, np.arange(k_x) - k_x // 2
        kernel = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * float(sigma[b]) ** 2))
        kernel /= kernel.sum()
        for c in range(3):
            padded = np.pad(images[b, c].numpy(), ((k_y // 2,) * 2, (k_x // 2,) * 2), "reflect")
            naive = np.zeros((23, 31))
            for y in range(23):
                for x in range(31):
                    naive[y, x] = (padded[y : y + k_y, x : x + k_x] * kernel).sum()
            np.testing.assert_allclose(out[b, c], naive, atol=1e-12)


def test_blur_keeps_constant_images() -> None:
    images = torch.full((1, 3, 40, 40), 0.7)
    torch.testing.assert_close(gaussian_blur(images, torch.tensor([1.15])), images)


def test_strong_augment_reproducible_from_generator_state() -> None:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    outs = [strong_augment(images, torch.Generator().manual_seed(s)) for s in (11, 11, 12, 13)]
    assert torch.equal(outs[0], outs[1])
    assert not all(torch.equal(outs[0], o) for o in outs[2:])


def test_matches_kornia_058_when_available() -> None:
    kornia = pytest.importorskip("kornia")
    if kornia.__version__ != "0.5.8":
        pytest.skip(f"parity is with kornia 0.5.8, found {kornia.__version__}")
    from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation

    gen = torch.Generator().manual_seed(8)
    images = torch.rand(2, 3, 64, 48, generator=gen)
    params = sample_strong_augment(2, gen)._replace(jitter=True, blur=True)
    ours = color_jitter(images, params)
    ops = [
        lambda x, f: adjust_brightness(x, f - 1),
        lambda x, f: adjust_contrast(x, f),
        lambda x, f: adjust_saturation(x, f),
        lambda x, f: adjust_hue(x, f * 2 * math.pi),
    ]
    factors = torch.stack([params.brightness, params.contrast, params.saturation, params.hue], 1)
    for i in range(2):
        theirs = images[i : i + 1]
        for op in params.order[i].tolist():
            theirs = ops[op](theirs, factors[i, op].float().view(1))
        torch.testing.assert_close(ours[i : i + 1], theirs, atol=1e-5, rtol=0)
    blur = kornia.filters.GaussianBlur2d((51, 103), (0.9, 0.9))
    big = torch.rand(1, 3, 512, 1024, generator=gen)
    expected = blur(big)
    torch.testing.assert_close(gaussian_blur(big, torch.tensor([0.9])), expected, atol=1e-6, rtol=0)


def test_jitter_strength_beyond_kornias_hue_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter_strength"):
        sample_strong_augment(1, torch.Generator(), jitter_strength=0.6)
