"""Multi-scale deformable attention (spcl.models.deform_attn) against a per-point bilinear loop.

The loop is the compiled operator's definition written out: a location (x, y) ∈ [0, 1]² on a map
of H × W pixels is the pixel coordinate (x·W − 0.5, y·H − 0.5); its value is the bilinear mix of
the four neighbouring pixels, neighbours outside the map counting as zero.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from spcl.models.deform_attn import MSDeformAttn, level_starts, ms_deform_attn_sample

SHAPES = [(4, 5), (2, 3), (3, 1)]  # three levels, one of them a single column
BATCH, QUERIES, HEADS, CHANNELS, POINTS = 2, 3, 2, 3, 2


def naive_sample(value: Tensor, shapes: list[tuple[int, int]], loc: Tensor, w: Tensor) -> Tensor:
    """The sum over levels and points of weight × bilinear sample, one point at a time."""
    batch, _, heads, channels = value.shape
    queries = loc.shape[1]
    starts = level_starts(shapes)
    rows = []
    for b in range(batch):
        per_query = []
        for q in range(queries):
            per_head = []
            for h in range(heads):
                acc = value.new_zeros(channels)
                for level, (height, width) in enumerate(shapes):
                    for p in range(loc.shape[4]):
                        x = loc[b, q, h, level, p, 0] * width - 0.5
                        y = loc[b, q, h, level, p, 1] * height - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        for xi in (x0, x0 + 1):
                            for yi in (y0, y0 + 1):
                                if not (0 <= xi < width and 0 <= yi < height):
                                    continue  # outside the map: zero
                                share = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
                                pixel = value[b, starts[level] + yi * width + xi, h]
                                acc = acc + w[b, q, h, level, p] * share * pixel
                per_head.append(acc)
            per_query.append(torch.cat(per_head))
        rows.append(torch.stack(per_query))
    return torch.stack(rows)


def _inputs() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    length = sum(h * w for h, w in SHAPES)
    value = torch.randn(BATCH, length, HEADS, CHANNELS, generator=gen, dtype=torch.float64)
    # locations in [-0.3, 1.3]: some points fully outside, some straddling the border
    shape = (BATCH, QUERIES, HEADS, len(SHAPES), POINTS, 2)
    loc = torch.rand(*shape, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(*shape[:-1], generator=gen, dtype=torch.float64)
    return value, loc, weights


def test_sampling_matches_a_per_point_loop_in_values_and_gradients() -> None:
    value, loc, weights = _inputs()
    outside = ((loc < 0) | (loc > 1)).any(-1)
    assert outside.any() and (~outside).any()  # both kinds of points are exercised
    fast_in = [t.clone().requires_grad_() for t in (value, loc, weights)]
    slow_in = [t.clone().requires_grad_() for t in (value, loc, weights)]
    fast = ms_deform_attn_sample(fast_in[0], SHAPES, fast_in[1], fast_in[2])
    slow = naive_sample(slow_in[0], SHAPES, slow_in[1], slow_in[2])
    assert fast.shape == (BATCH, QUERIES, HEADS * CHANNELS)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    upstream = torch.randn(fast.shape, generator=torch.Generator().manual_seed(1), dtype=fast.dtype)
    (fast * upstream).sum().backward()
    (slow * upstream).sum().backward()
    for name, a, b in zip(("value", "locations", "weights"), fast_in, slow_in, strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_points_far_outside_sample_zero() -> None:
    value, loc, weights = _inputs()
    out = ms_deform_attn_sample(value, SHAPES, torch.full_like(loc, 2.0), weights)
    assert torch.count_nonzero(out) == 0


def test_level_shapes_that_do_not_fit_the_values_are_refused() -> None:
    value, loc, weights = _inputs()
    with pytest.raises(ValueError, match="level shapes"):
        ms_deform_attn_sample(value, [(4, 5), (2, 3), (3, 2)], loc, weights)


def test_module_initialisation_and_forward() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=4, ratio=0.5)
    # reference init: no offset weights, uniform attention, head h along angle 2πh/heads,
    # point k at k + 1 pixels
    bias = attn.sampling_offsets.bias.detach().reshape(2, 3, 4, 2)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    torch.testing.assert_close(bias[0, :, :, 0], torch.tensor([1.0, 2, 3, 4]).expand(3, 4))
    torch.testing.assert_close(bias[1, :, :, 0], -torch.tensor([1.0, 2, 3, 4]).expand(3, 4))
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert attn.value_proj.out_features == 4
    length = sum(h * w for h, w in SHAPES)
    query, feat = torch.randn(2, 5, 8), torch.randn(2, length, 8)
    reference = torch.rand(1, 5, 2)
    out = attn(query, reference, feat, SHAPES)
    assert out.shape == (2, 5, 8)
    out.sum().backward()
    assert attn.sampling_offsets.weight.grad is not None
    with pytest.raises(ValueError, match="do not split"):
        MSDeformAttn(d_model=6, n_levels=1, n_heads=4, n_points=4, ratio=0.5)


def test_low_precision_inputs_are_sampled_in_float32() -> None:
    """Under bfloat16 the locations keep float32 precision (as the reference casts them)."""
    value, loc, weights = (t.float() for t in _inputs())
    low_value, low_weights = value.bfloat16(), weights.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn_sample(low_value, SHAPES, loc, low_weights)
    assert out.dtype == torch.bfloat16
    exact = ms_deform_attn_sample(low_value.float(), SHAPES, loc, low_weights.float())
    torch.testing.assert_close(out.float(), exact.bfloat16().float(), rtol=0, atol=0)
    rounded = ms_deform_attn_sample(
        low_value.float(), SHAPES, loc.bfloat16().float(), low_weights.float()
    )
    assert not torch.equal(rounded.bfloat16(), out)  # bfloat16 locations would differ
