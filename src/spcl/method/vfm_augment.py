"""VFM-UDA's and VFM-UDA++'s photometric augmentation of the source batch, in plain torch.

VFM-UDA++ (tue-mps/vfm-uda-plusplus:training/uda/uda.py, ``random_aug_strong`` and
``random_aug_weak``; docs/recipes.md, section "VFM-UDA++: the training step") augments each image
of the student's source batch on its own with torchvision operators:

* strong (``use_strong_aug_source: true`` in every shipped VFM-UDA++ config): ``ColorJitter``
  (brightness 0.8, contrast 0.8, saturation 0.8, hue 0.4) with probability 0.8, ``RandomGrayscale``
  p 0.1, ``GaussianBlur`` (σ ~ U(0.15, 3.0), kernel ≈ 10 % of the image side, odd) with p 0.5;
* weak (VFM-UDA's source augmentation, and the student's input of VFM-UDA++'s feature
  distillation): ``ColorJitter`` (brightness 32/255, contrast 0.5, saturation 0.5, hue 18/360)
  with p 0.9, no grayscale, no blur; both recipes also jitter the target before it is mixed;
* ``random_aug_uda`` (:func:`uda_augment_recipe`, ``online.mix.augment: torchvision``) of the
  mixed and masked images: ``ColorJitter`` with all four strengths 0.2 at p 0.8, then
  ``GaussianBlur`` σ ~ U(0.15, 1.15) at p 0.5.

torchvision's jitter semantics, unlike kornia's of DACS (:mod:`spcl.method.photometric`): the
four operations in a random order per image, brightness ``x·b`` and contrast ``c·x + (1 − c)·m``
(m the mean of the image's grayscale), saturation a blend with the grayscale image, all clamped to
[0, 1]; factors b, c, s ~ U(max(0, 1 − v), 1 + v), hue shift ~ U(−v, v) turns. Grayscale uses
ITU-R 601 weights (0.299, 0.587, 0.114). HSV conversions and the blur are those of
:mod:`spcl.method.photometric` (float rounding apart from torchvision's). Every draw comes from the
passed generator, a fixed number per image whatever is applied, so a resumed run reproduces them.
Only the image changes: labels never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from spcl.method.photometric import gaussian_blur, hsv_to_rgb, rgb_to_hsv

__all__ = [
    "STRONG_SOURCE",
    "WEAK_SOURCE",
    "TorchvisionAugment",
    "torchvision_augment",
    "uda_augment_recipe",
]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # torchvision rgb_to_grayscale (ITU-R 601-2 luma)


@dataclass(frozen=True)
class TorchvisionAugment:
    """One augmentation recipe: jitter strengths, their probability, grayscale and blur."""

    brightness: float
    contrast: float
    saturation: float
    hue: float  # in turns, at most 0.5
    jitter_p: float  # RandomApply([ColorJitter]) probability
    grayscale_p: float = 0.0  # RandomGrayscale probability
    blur_p: float = 0.0  # RandomApply([GaussianBlur]) probability
    blur_sigma: tuple[float, float] = (0.15, 3.0)  # σ ~ U(low, high)


STRONG_SOURCE = TorchvisionAugment(0.8, 0.8, 0.8, 0.4, 0.8, grayscale_p=0.1, blur_p=0.5)
# VFM-UDA++ random_aug_strong (training/uda/uda.py)
WEAK_SOURCE = TorchvisionAugment(32 / 255, 0.5, 0.5, 18 / 360, 0.9)  # VFM-UDA and VFM-UDA++
# random_aug_weak: brightness_delta 32/255, contrast/saturation 0.5, hue_delta 18/360, p 0.9


def uda_augment_recipe(strength: float, jitter_p: float, blur: bool) -> TorchvisionAugment:
    """VFM-UDA(++)'s ``random_aug_uda`` of the mixed and masked images: ``ColorJitter`` with
    brightness, contrast, saturation and hue all ``strength`` (0.2) with probability ``jitter_p``
    (0.8), then ``GaussianBlur`` with σ ~ U(0.15, 1.15) with probability 0.5 when ``blur``."""
    if strength > 0.5:
        raise ValueError(f"the hue jitter is the strength, at most 0.5 (turns), got {strength}")
    return TorchvisionAugment(
        strength,
        strength,
        strength,
        strength,
        jitter_p,
        blur_p=0.5 if blur else 0.0,
        blur_sigma=(0.15, 1.15),
    )


def _gray(image: Tensor) -> Tensor:
    """(3, H, W) in [0, 1] → (1, H, W) luma."""
    weights = torch.tensor(GRAY_WEIGHTS, dtype=image.dtype, device=image.device)
    return (image * weights.view(3, 1, 1)).sum(dim=0, keepdim=True)


def _jitter(image: Tensor, order: list[int], factors: Tensor) -> Tensor:
    """torchvision's four jitter operations on one image in [0, 1], in ``order``."""
    for op in order:
        factor = factors[op]
        if op == 0:  # brightness: blend with black
            image = (image * factor).clamp(0.0, 1.0)
        elif op == 1:  # contrast: blend with the grayscale mean
            mean = _gray(image).mean()
            image = (factor * image + (1.0 - factor) * mean).clamp(0.0, 1.0)
        elif op == 2:  # saturation: blend with the grayscale image
            image = (factor * image + (1.0 - factor) * _gray(image)).clamp(0.0, 1.0)
        else:  # hue: shift H (turns)
            hue, sat, val = rgb_to_hsv(image).unbind(dim=0)
            image = hsv_to_rgb(torch.stack([(hue + factor) % 1.0, sat, val]))
    return image


def _draws(recipe: TorchvisionAugment, generator: torch.Generator) -> tuple[Tensor, list[int]]:
    """One image's draws: (u_jitter, 4 factors, u_gray, u_blur, σ) and the jitter order."""
    u = torch.rand(8, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    order = torch.randperm(4, generator=generator, device=generator.device).tolist()
    low = torch.tensor(
        [max(0.0, 1.0 - v) for v in (recipe.brightness, recipe.contrast, recipe.saturation)]
        + [-recipe.hue],
        dtype=torch.float64,
    )
    high = torch.tensor(
        [1.0 + v for v in (recipe.brightness, recipe.contrast, recipe.saturation)] + [recipe.hue],
        dtype=torch.float64,
    )
    factors = low + (high - low) * u[1:5]
    sigma_low, sigma_high = recipe.blur_sigma
    sigma = sigma_low + (sigma_high - sigma_low) * u[7]
    return torch.cat([u[:1], factors, u[5:7], sigma.view(1)]), order


def torchvision_augment(
    images: Tensor,
    generator: torch.Generator,
    recipe: TorchvisionAugment,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """Each normalised image of the batch augmented by ``recipe`` with its own draws.

    Args:
        images: normalised ``(x − mean) / std`` images, [0, 1] units for mean/std.
        generator: the step's CPU generator (its draws are checkpointed).
        recipe: :data:`STRONG_SOURCE`, :data:`WEAK_SOURCE` or another.
        mean, std: the normalisation, undone for the jitter and redone after.

    Shape:
        images: (B, 3, H, W) → (B, 3, H, W), a new tensor.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
    mean_v = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std_v = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    out = []
    for image in images:
        draws, order = _draws(recipe, generator)
        pixels = image * std_v + mean_v
        if draws[0] < recipe.jitter_p:  # RandomApply: applied when u < p
            factors = draws[1:5].to(images.device, images.dtype)
            pixels = _jitter(pixels, order, factors)
        if draws[5] < recipe.grayscale_p:
            pixels = _gray(pixels).expand(3, -1, -1)
        if draws[6] < recipe.blur_p:
            sigma = draws[7:8].to(images.device, images.dtype)
            pixels = gaussian_blur(pixels[None], sigma)[0]
        out.append((pixels - mean_v) / std_v)
    return torch.stack(out)
