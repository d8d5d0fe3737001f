"""Tests of the shared inference function (flip, scales) and of sliding-window inference,
against naive re-implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spcl.evaluation.inference import min_input_side, predict_probs
from spcl.evaluation.sliding import parse_slide, predict_probs_sliding, window_starts
from spcl.models.build import build_model
from spcl.models.segmenter import SegOutput

K = 5


class Wrapped(nn.Module):
    """A plain conv stack returning SegOutput(logits, features), like the segmenters."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, images: torch.Tensor) -> SegOutput:
        logits = self.layer(images)
        return SegOutput(logits, logits)


def pointwise_model(seed: int = 0) -> Wrapped:
    """1×1 convolution: every pixel's logits depend on that pixel only (flip-equivariant)."""
    torch.manual_seed(seed)
    return Wrapped(nn.Conv2d(3, K, 1)).eval()


def context_model(seed: int = 0) -> Wrapped:
    """Asymmetric 3×3 convolutions at stride 2: not flip-equivariant, output at half size."""
    torch.manual_seed(seed)
    return Wrapped(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(8, K, 3, padding=1)
        )
    ).eval()


def images(seed: int, shape: tuple[int, ...] = (2, 3, 20, 28)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def assert_close(
    got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6
) -> None:
    """torch.allclose with the largest difference in the message (torch.testing's first call
    costs over a second of imports)."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert torch.allclose(got, expected, rtol=rtol, atol=atol), (got - expected).abs().max()


def naive_probs(model: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Softmax of the logits upsampled (bilinear, align_corners=True) to ``size``."""
    logits = model(x).logits
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return torch.softmax(logits, dim=1)


# ---- predict_probs ------------------------------------------------------------------------------


def test_flip_changes_nothing_for_a_flip_equivariant_model() -> None:
    model, x = pointwise_model(), images(0)
    plain = predict_probs(model, x)
    flipped = predict_probs(model, x, flip=True)
    assert_close(flipped, plain, rtol=1e-5, atol=1e-6)
    assert_close(plain, naive_probs(model, x, (20, 28)))
    assert_close(plain.sum(dim=1), torch.ones(2, 20, 28))


def test_flip_averages_with_the_flipped_back_prediction() -> None:
    model, x = context_model(), images(1)
    size = (40, 56)
    expected = 0.5 * (naive_probs(model, x, size) + naive_probs(model, x.flip(-1), size).flip(-1))
    got = predict_probs(model, x, size, flip=True)
    assert_close(got, expected)
    assert not torch.allclose(got, predict_probs(model, x, size), atol=1e-4)  # flip matters


def test_scale_one_list_equals_the_plain_call() -> None:
    model, x = context_model(), images(2)
    plain = predict_probs(model, x, (24, 30))
    assert torch.equal(predict_probs(model, x, (24, 30), scales=(1.0,)), plain)
    assert_close(predict_probs(model, x, (24, 30), scales=(1.0, 1.0)), plain)


def test_multi_scale_is_the_mean_of_single_scales() -> None:
    model, x = context_model(), images(3)
    size = (20, 28)
    singles = []
    for scale in (0.5, 1.0, 1.5):
        scaled = F.interpolate(
            x, size=(round(20 * scale), round(28 * scale)), mode="bilinear", align_corners=True
        )
        singles.append(naive_probs(model, scaled, size))
    expected = sum(singles) / 3
    assert_close(predict_probs(model, x, size, scales=(0.5, 1.0, 1.5)), expected)


# ---- inputs smaller than an encoder accepts ----------------------------------------------------


def mit_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("segformer_mit_b0", K, width=16).eval()


def test_min_input_side_is_where_a_mit_starts_to_run() -> None:
    model = mit_model()
    assert min_input_side(model) == 29
    model(torch.zeros(1, 3, 29, 29))
    with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        model(torch.zeros(1, 3, 28, 29))  # main 3f6f3d3 raised this from predict_probs
    assert min_input_side(context_model()) == 1
    assert min_input_side(build_model("deeplabv2_resnet18", K, width=8)) == 1


def test_small_views_are_padded_with_zeros_and_cut_back() -> None:
    model, x = mit_model(), images(5, (2, 3, 20, 30))
    size = (40, 60)

    def naive(view: torch.Tensor) -> torch.Tensor:
        padded = F.pad(view, (0, 0, 0, 9))  # 20 rows → 29, the minimum; 30 columns suffice
        logits = model(padded).logits
        logits = F.interpolate(logits, size=(29, 30), mode="bilinear", align_corners=True)
        logits = logits[..., :20, :30]
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True).softmax(1)

    assert_close(predict_probs(model, x, size), naive(x))
    expected = 0.5 * (naive(x) + naive(x.flip(-1)).flip(-1))
    assert_close(predict_probs(model, x, size, flip=True), expected)
    windows = predict_probs_sliding(model, x, size, crop=(16, 16), stride=(8, 8))
    assert windows.shape == (2, K, *size)
    assert_close(windows.sum(dim=1), torch.ones(2, *size))


def test_views_at_or_above_the_minimum_take_the_unpadded_path() -> None:
    model, x = mit_model(), images(6, (1, 3, 29, 47))
    assert torch.equal(predict_probs(model, x, (58, 94)), naive_probs(model, x, (58, 94)))


# ---- sliding windows ----------------------------------------------------------------------------


def naive_starts(size: int, crop: int, stride: int) -> list[int]:
    if crop >= size:
        return [0]
    starts, position = [], 0
    while position + crop < size:
        starts.append(position)
        position += stride
    return [*starts, size - crop]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 60), st.integers(1, 70), st.integers(1, 40))
def test_window_starts_cover_the_image(size: int, crop: int, stride: int) -> None:
    if stride > crop < size:
        with pytest.raises(ValueError, match="exceeds the crop"):
            window_starts(size, crop, stride)
        return
    starts = window_starts(size, crop, stride)
    assert starts == naive_starts(size, crop, stride)
    window = min(crop, size)
    covered = set()
    for start in starts:
        covered |= set(range(start, start + window))
    assert covered == set(range(size)) and starts[-1] + window == size


@pytest.mark.parametrize(
    ("crop", "stride"),
    [((8, 8), (4, 4)), ((7, 10), (5, 3)), ((20, 28), (20, 28)), ((64, 64), (8, 8))],
)
def test_sliding_equals_full_image_for_a_pointwise_model(
    crop: tuple[int, int], stride: tuple[int, int]
) -> None:
    model, x = pointwise_model(), images(4)
    full = predict_probs(model, x, flip=True)
    slid = predict_probs_sliding(model, x, crop=crop, stride=stride, flip=True)
    assert_close(slid, full, rtol=1e-5, atol=1e-6)


def test_sliding_averages_overlapping_windows_like_a_naive_loop() -> None:
    model, x = context_model(), images(5, (1, 3, 19, 26))
    crop, stride = (10, 12), (6, 7)
    total = torch.zeros(1, K, 19, 26)
    hits = torch.zeros(19, 26)
    for top in naive_starts(19, crop[0], stride[0]):
        for left in naive_starts(26, crop[1], stride[1]):
            window = x[..., top : top + crop[0], left : left + crop[1]]
            total[..., top : top + crop[0], left : left + crop[1]] += naive_probs(
                model, window, crop
            )
            hits[top : top + crop[0], left : left + crop[1]] += 1
    expected = total / hits
    got = predict_probs_sliding(model, x, crop=crop, stride=stride)
    assert_close(got, expected)
    assert hits.max() > 1  # the windows overlap
    big = predict_probs_sliding(model, x, (38, 52), crop=crop, stride=stride)
    up = F.interpolate(expected, size=(38, 52), mode="bilinear", align_corners=True)
    assert_close(big, up)
    assert_close(big.sum(dim=1), torch.ones(1, 38, 52))


def test_sliding_scales_average_the_single_scale_results() -> None:
    model, x = context_model(), images(6, (1, 3, 16, 24))
    kwargs = {"crop": (8, 8), "stride": (6, 6)}
    singles = [predict_probs_sliding(model, x, scales=(s,), **kwargs) for s in (0.75, 1.25)]
    both = predict_probs_sliding(model, x, scales=(0.75, 1.25), **kwargs)
    assert_close(both, (singles[0] + singles[1]) / 2)
    assert both.shape == (1, K, 16, 24)
    with pytest.raises(ValueError, match="exceeds crop"):
        predict_probs_sliding(model, x, crop=(8, 8), stride=(9, 4))


def test_parse_slide() -> None:
    assert parse_slide((512, 341)) == ((512, 512), (341, 341))
    assert parse_slide([512, 1024, 256, 512]) == ((512, 1024), (256, 512))
    for bad in ((512,), (512, 0), (1, 2, 3), (8, 9), (8, 8, 4, 9)):
        with pytest.raises(ValueError, match="slide must be"):
            parse_slide(bad)
