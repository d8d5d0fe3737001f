"""DACS strong augmentation in plain torch: colour jitter and Gaussian blur of normalised images.

DAFormer (lhoyer/DAFormer:mmseg/models/utils/dacs_transforms.py ``color_jitter``,
``gaussian_blur``; called from mmseg/models/uda/dacs.py) augments the ClassMix image, and MIC its
masked target image, with two operators of kornia 0.5.8 (the version pinned in DAFormer's and
MIC's requirements.txt), each switched on by one uniform ``u`` drawn per call (per iteration):

* colour jitter if ``u_cj > 0.2`` (``color_jitter_probability`` is the probability of *skipping*:
  jitter is applied 80 % of the time): de-normalise to [0, 1], kornia
  ``ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)`` with s = 0.2, re-normalise.
* Gaussian blur if ``u_blur > 0.5``: ``σ ~ U(0.15, 1.15)`` (same σ on both axes), kernel size per
  axis ``k = floor(ceil(0.1·L) − 0.5 + ceil(0.1·L) mod 2)`` (51 for L = 512: ``ceil(0.1·L)``
  rounded down to odd), reflect padding (kornia ``GaussianBlur2d`` default).

kornia 0.5.8 ``ColorJitter`` semantics, reproduced here (kornia/augmentation/augmentation.py,
kornia/enhance/adjust.py, kornia/color/hsv.py at tag 0.5.8), per image, in a random order of the
four operations (a permutation drawn per call):

* brightness ``b ~ U(1 − s, 1 + s)``: ``x + (b − 1)``, clamped to [0, 1] (additive, unlike
  torchvision's multiplicative brightness);
* contrast ``c ~ U(1 − s, 1 + s)``: ``x · c``, clamped (no blend with the mean, unlike
  torchvision);
* saturation ``f ~ U(1 − s, 1 + s)``: in HSV, ``S ← clamp(S · f, 0, 1)``;
* hue ``h ~ U(−s, s)`` (turns): in HSV, ``H ← (H + h) mod 1`` (kornia keeps H in radians and
  shifts by ``2π·h``: the same colours).

HSV follows kornia: ``V = max``, ``S = (max − min) / (V + 1e-6)``, H from the maximal channel
(first of R, G, B on ties), and the back conversion by the sector formula. The formulas and
constants are kornia's, so outputs agree with kornia 0.5.8 up to float rounding for the same
factors; the random numbers come from the passed ``torch.Generator`` (kornia used the global
torch RNG), so a resumed run reproduces its augmentation. DAFormer calls the jitter once per
mixed image, so factors and order are per image; MIC calls it once for the batch (per-image
factors, one order): here the order is always per image.

Labels and weights are never touched: only the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from spcl.base import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BLUR_KERNEL_FRACTION",
    "BLUR_SIGMA_RANGE",
    "BLUR_THRESHOLD",
    "JITTER_SKIP_PROBABILITY",
    "JITTER_STRENGTH",
    "StrongAugParams",
    "apply_strong_augment",
    "blur_kernel_size",
    "color_jitter",
    "gaussian_blur",
    "gaussian_kernel1d",
    "hsv_to_rgb",
    "rgb_to_hsv",
    "sample_strong_augment",
    "strong_augment",
]

JITTER_STRENGTH = 0.2  # color_jitter_strength (configs/_base_/uda/dacs.py)
JITTER_SKIP_PROBABILITY = 0.2  # color_jitter_probability: jitter only when u > 0.2
BLUR_THRESHOLD = 0.5  # blur only when u > 0.5 (dacs_transforms.gaussian_blur)
BLUR_SIGMA_RANGE = (0.15, 1.15)  # σ ~ U(0.15, 1.15)
BLUR_KERNEL_FRACTION = 0.1  # kernel ≈ 10 % of the side, rounded down to odd
HSV_EPS = 1e-6  # kornia rgb_to_hsv eps in S = Δ / (V + eps)
NUM_JITTER_OPS = 4  # brightness, contrast, saturation, hue (kornia's order indices 0..3)
HUE_SECTORS = 6
MAX_JITTER_STRENGTH = 0.5  # kornia bounds the hue factor to [-0.5, 0.5]; one s for all four


def rgb_to_hsv(rgb: Tensor, eps: float = HSV_EPS) -> Tensor:
    """RGB in [0, 1] → HSV with H in turns [0, 1), S and V in [0, 1] (kornia 0.5.8 formulas).

    Shape:
        rgb: (..., 3, H, W) → (..., 3, H, W).
    """
    red, green, blue = rgb.unbind(dim=-3)
    maxc, _ = rgb.max(dim=-3)
    minc, _ = rgb.min(dim=-3)
    delta = maxc - minc
    saturation = delta / (maxc + eps)
    safe_delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = maxc - red, maxc - green, maxc - blue
    # sector offset of the maximal channel, first of R, G, B on ties (kornia's gather index)
    hue = torch.where(
        red == maxc,
        bc - gc,
        torch.where(green == maxc, 2.0 * delta + rc - bc, 4.0 * delta + gc - rc),
    )
    hue = (hue / safe_delta / HUE_SECTORS) % 1.0
    return torch.stack([hue, saturation, maxc], dim=-3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV with H in turns (any real; taken mod 1) → RGB (kornia 0.5.8 sector formula).

    Shape:
        hsv: (..., 3, H, W) → (..., 3, H, W).
    """
    hue, sat, val = hsv.unbind(dim=-3)
    sector6 = (hue * HUE_SECTORS) % HUE_SECTORS
    sector = torch.floor(sector6)
    frac = sector6 - sector
    p = val * (1.0 - sat)
    q = val * (1.0 - frac * sat)
    t = val * (1.0 - (1.0 - frac) * sat)
    # 6.0 (from a tiny negative hue) wraps to sector 0 with frac 0, the same colour as 5 + 1
    sector = (sector.long() % HUE_SECTORS)[..., None, :, :]  # (..., 1, H, W)
    # (R, G, B) per sector 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    red = torch.stack([val, q, p, p, t, val], dim=-3).gather(-3, sector)
    green = torch.stack([t, val, val, q, p, p], dim=-3).gather(-3, sector)
    blue = torch.stack([p, p, t, val, val, q], dim=-3).gather(-3, sector)
    return torch.cat([red, green, blue], dim=-3)


class StrongAugParams(NamedTuple):
    """One call's draws. ``jitter``/``blur``: apply or not (batch-wide, one u each).

    Factors are per image (B,); ``order`` (B, 4) lists kornia's op indices (0 brightness,
    1 contrast, 2 saturation, 3 hue) in application order; ``sigma`` (B,) is the blur σ.
    """

    jitter: bool
    blur: bool
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor
    sigma: Tensor


def sample_strong_augment(
    batch: int,
    generator: torch.Generator,
    *,
    jitter_strength: float = JITTER_STRENGTH,
    jitter_skip_probability: float = JITTER_SKIP_PROBABILITY,
    blur: bool = True,
    blur_sigma_range: tuple[float, float] = BLUR_SIGMA_RANGE,
) -> StrongAugParams:
    """Draw one call's augmentation from ``generator`` (CPU tensors: cheap, reproducible).

    The draw sequence is fixed (u_cj, u_blur, factors, orders, σ), so the same generator state
    gives the same augmentation whatever is applied. ``blur=False`` never blurs (DAFormer
    ``blur=False`` sets u_blur = 0).
    """
    if not 0.0 <= jitter_strength <= MAX_JITTER_STRENGTH:
        raise ValueError(
            f"jitter_strength must lie in [0, {MAX_JITTER_STRENGTH}] (kornia clamps the hue range "
            f"to ±0.5 beyond), got {jitter_strength}"
        )
    low, high = blur_sigma_range
    if not 0 < low <= high:
        raise ValueError(f"blur_sigma_range must be 0 < low ≤ high, got {blur_sigma_range}")
    cpu = torch.device("cpu")

    def uniform(size: tuple[int, ...], lo: float, hi: float) -> Tensor:
        draw = torch.rand(size, generator=generator, device=generator.device, dtype=torch.float64)
        return (lo + (hi - lo) * draw).to(cpu)

    u_jitter, u_blur = uniform((2,), 0.0, 1.0).tolist()
    s = jitter_strength
    factors = uniform((3, batch), 1.0 - s, 1.0 + s)
    hue = uniform((batch,), -s, s)
    scores = torch.rand(batch, NUM_JITTER_OPS, generator=generator, device=generator.device)
    order = scores.argsort(dim=1).to(cpu)  # a uniform permutation per image
    sigma = uniform((batch,), low, high)
    return StrongAugParams(
        jitter=u_jitter > jitter_skip_probability,
        blur=blur and u_blur > BLUR_THRESHOLD,
        brightness=factors[0],
        contrast=factors[1],
        saturation=factors[2],
        hue=hue,
        order=order,
        sigma=sigma,
    )


def _jitter_op(image: Tensor, op: int, factor: Tensor) -> Tensor:
    """One kornia 0.5.8 jitter op on an image in [0, 1]; ``factor`` is a 0-d tensor."""
    if op == 0:  # brightness: additive
        return (image + (factor - 1.0)).clamp(0.0, 1.0)
    if op == 1:  # contrast: multiplicative
        return (image * factor).clamp(0.0, 1.0)
    hsv = rgb_to_hsv(image)
    hue, sat, val = hsv.unbind(dim=-3)
    if op == 2:
        sat = (sat * factor).clamp(0.0, 1.0)
    else:
        hue = (hue + factor) % 1.0
    return hsv_to_rgb(torch.stack([hue, sat, val], dim=-3))


def color_jitter(images: Tensor, params: StrongAugParams) -> Tensor:
    """kornia-0.5.8 colour jitter of images in [0, 1] with the drawn factors and orders.

    Shape:
        images: (B, 3, H, W) → (B, 3, H, W).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
    per_op = torch.stack([params.brightness, params.contrast, params.saturation, params.hue], 1)
    per_op = per_op.to(images.device, images.dtype)  # (B, 4)
    out = []
    for index, ops in enumerate(params.order.tolist()):  # order lives on the CPU: no sync
        image = images[index]
        for op in ops:
            image = _jitter_op(image, op, per_op[index, op])
        out.append(image)
    return torch.stack(out)


def blur_kernel_size(length: int) -> int:
    """DACS kernel size ``floor(ceil(0.1·L) − 0.5 + ceil(0.1·L) mod 2)``: ceil(0.1·L) made odd.

    51 for 512, 103 for 1024, 7 for 64, 1 (no blur) for L ≤ 10.
    """
    if length < 1:
        raise ValueError(f"blur length must be ≥ 1, got {length}")
    tenth = math.ceil(BLUR_KERNEL_FRACTION * length)
    return math.floor(tenth - 0.5 + tenth % 2)


def gaussian_kernel1d(size: int, sigma: Tensor) -> Tensor:
    """Normalised Gaussian taps ``exp(−x²/2σ²)``, x = −size//2 … size//2 (odd size), per σ.

    Shape:
        sigma: (B,) → (B, size).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be odd and ≥ 1, got {size}")
    x = torch.arange(size, device=sigma.device, dtype=sigma.dtype) - size // 2
    taps = torch.exp(-(x[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))
    return taps / taps.sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Per-image Gaussian blur, kernel sizes from :func:`blur_kernel_size`, reflect padding.

    Separable (rows then columns on the once-padded image), which equals kornia's 2-D
    ``GaussianBlur2d`` (an outer product of the same 1-D kernels) up to rounding.

    Shape:
        images: (B, C, H, W); sigma: (B,) → (B, C, H, W).
    """
    batch, channels, height, width = images.shape
    k_y, k_x = blur_kernel_size(height), blur_kernel_size(width)
    sigma = sigma.to(images.device, images.dtype)
    padded = F.pad(images, (k_x // 2, k_x // 2, k_y // 2, k_y // 2), mode="reflect")
    flat = padded.reshape(1, batch * channels, *padded.shape[-2:])
    taps_y = gaussian_kernel1d(k_y, sigma).repeat_interleave(channels, dim=0)  # (B·C, k_y)
    taps_x = gaussian_kernel1d(k_x, sigma).repeat_interleave(channels, dim=0)
    flat = F.conv2d(flat, taps_y[:, None, :, None], groups=batch * channels)
    flat = F.conv2d(flat, taps_x[:, None, None, :], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def _as_channel_vector(values: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    vector = torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(-1)
    if vector.numel() != like.shape[1]:
        raise ValueError(f"mean/std need {like.shape[1]} values, got {vector.numel()}")
    return vector.view(1, -1, 1, 1)


def apply_strong_augment(
    images: Tensor,
    params: StrongAugParams,
    mean: Sequence[float] | Tensor = IMAGENET_MEAN,
    std: Sequence[float] | Tensor = IMAGENET_STD,
) -> Tensor:
    """Jitter (in [0, 1] after de-normalising) then blur, as drawn in ``params``; a new tensor.

    Args:
        images: normalised images ``(x/255 − mean) / std`` (mean/std in [0, 1] units, as
            ``spcl.data.lists.to_tensor``; DAFormer's 0–255 mean/std give the same [0, 1]).
        params: from :func:`sample_strong_augment` with ``batch = images.shape[0]``.
        mean: per-channel normalisation mean, [0, 1] units.
        std: per-channel normalisation std, [0, 1] units.

    Shape:
        images: (B, 3, H, W) → (B, 3, H, W).
    """
    if params.order.shape[0] != images.shape[0]:
        raise ValueError(f"params drawn for {params.order.shape[0]} images, got {images.shape[0]}")
    out = images
    if params.jitter:
        mean_v, std_v = _as_channel_vector(mean, images), _as_channel_vector(std, images)
        out = (color_jitter(out * std_v + mean_v, params) - mean_v) / std_v
    if params.blur:
        out = gaussian_blur(out, params.sigma)
    return out if out is not images else images.clone()


def strong_augment(
    images: Tensor,
    generator: torch.Generator,
    mean: Sequence[float] | Tensor = IMAGENET_MEAN,
    std: Sequence[float] | Tensor = IMAGENET_STD,
    *,
    jitter_strength: float = JITTER_STRENGTH,
    jitter_skip_probability: float = JITTER_SKIP_PROBABILITY,
    blur: bool = True,
    blur_sigma_range: tuple[float, float] = BLUR_SIGMA_RANGE,
) -> Tensor:
    """:func:`sample_strong_augment` then :func:`apply_strong_augment` (image only).

    Shape:
        images: (B, 3, H, W) → (B, 3, H, W).
    """
    params = sample_strong_augment(
        images.shape[0],
        generator,
        jitter_strength=jitter_strength,
        jitter_skip_probability=jitter_skip_probability,
        blur=blur,
        blur_sigma_range=blur_sigma_range,
    )
    return apply_strong_augment(images, params, mean, std)
