"""Appearance of the synthetic pair: shift knobs, presets, material colours and target effects.

The source ("game") domain is rendered with flat, saturated colours per material plus a
per-instance colour jitter and sharp edges. The target ("real") domain blends every material's
colour toward a duller, "realistic" one by ``ShiftParams.colour_blend`` and then applies texture,
cast shadows, a lighting gradient, a colour cast, blur, sensor noise and JPEG compression, each
with its own strength. The geometry knobs (horizon, camera height, focal length, object size and
density) turn the source camera and object statistics into the target's (:func:`domain_geometry`),
which :mod:`spcl.data.synthetic.street` and :mod:`spcl.data.synthetic.placement` draw from.
Every knob is documented in ``docs/synthetic.md``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageFilter

from spcl.base import IGNORE_INDEX
from spcl.data.labels import CITYSCAPES

__all__ = [
    "DEFAULT_PRESET",
    "MATERIALS",
    "PRESETS",
    "Geometry",
    "ShiftParams",
    "apply_target_effects",
    "domain_geometry",
    "material_colours",
]


@dataclass(frozen=True)
class ShiftParams:
    """Strength of every component of the source → target shift (one field per knob).

    Appearance knobs act on target images only, except ``source_jitter``. Geometry knobs change
    the target's camera and object statistics relative to the source's fixed ones.
    """

    # Fraction of the way each material colour moves from its game colour to its realistic one.
    colour_blend: float = 0.5
    # Std (0..255 scale) of the per-object colour offset in source images: the game's "small
    # per-instance variation". The smaller, the more a source model relies on exact colours.
    source_jitter: float = 12.0
    # Std (0..255 scale) of the per-object colour offset in target images.
    target_jitter: float = 20.0
    # Amplitude (0..255 scale) of multi-scale luminance texture, scaled per class.
    texture: float = 18.0
    # Fraction of brightness removed inside cast shadows (of buildings on the street, of vehicles).
    shadows: float = 0.45
    # Peak relative brightness change of a linear lighting gradient in a random direction.
    lighting: float = 0.3
    # Strength of the per-image colour cast: channel gains 1 + colour_cast · (tint + u) / 2 with a
    # fixed warm tint (+0.6, +0.15, -0.6) and u ~ uniform(-1, 1) per channel.
    colour_cast: float = 0.12
    # Gaussian blur radius in pixels (0 = sharp).
    blur: float = 0.8
    # Std (0..255 scale) of per-pixel Gaussian sensor noise.
    noise: float = 6.0
    # JPEG quality of a compress/decompress round trip; None = no compression.
    jpeg_quality: int | None = 40
    # Added to the mean horizon row, as a fraction of the image height (positive = lower
    # horizon, negative = higher; the row is clipped to 0.25..0.65 of the height).
    horizon_shift: float = 0.06
    # Multiplier on the standard deviation of the horizon row.
    horizon_spread: float = 1.5
    # Multiplier on the camera height above the road.
    camera_height_scale: float = 0.8
    # Multiplier on the focal length (larger = narrower field of view, bigger objects).
    focal_scale: float = 1.2
    # Multiplier on the metric size of vehicles, people and two-wheelers.
    object_scale: float = 0.9
    # Multiplier on the expected number of vehicles, people, riders and parked two-wheelers.
    density_scale: float = 1.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "jpeg_quality":
                if value is not None and not 1 <= value <= 100:
                    raise ValueError(
                        f"ShiftParams.jpeg_quality must be in 1..100 or None, got {value}"
                    )
            elif value < 0 and f.name != "horizon_shift":
                raise ValueError(f"ShiftParams.{f.name} must be >= 0, got {value}")
        if self.colour_blend > 1:
            raise ValueError(f"ShiftParams.colour_blend must be in [0, 1], got {self.colour_blend}")
        for name in ("camera_height_scale", "focal_scale", "object_scale", "horizon_spread"):
            if getattr(self, name) == 0:
                raise ValueError(f"ShiftParams.{name} must be > 0")


PRESETS: dict[str, ShiftParams] = {
    "strong": ShiftParams(),
    "mild": ShiftParams(
        colour_blend=0.3,
        source_jitter=25.0,
        target_jitter=22.0,
        texture=8.0,
        shadows=0.25,
        lighting=0.15,
        colour_cast=0.06,
        blur=0.4,
        noise=3.0,
        jpeg_quality=75,
        horizon_shift=0.03,
        horizon_spread=1.2,
        camera_height_scale=0.9,
        focal_scale=1.1,
        object_scale=0.95,
        density_scale=1.2,
    ),
    # Control: the target is drawn exactly like the source (no shift at all).
    "none": ShiftParams(
        colour_blend=0.0,
        source_jitter=25.0,
        target_jitter=25.0,
        texture=0.0,
        shadows=0.0,
        lighting=0.0,
        colour_cast=0.0,
        blur=0.0,
        noise=0.0,
        jpeg_quality=None,
        horizon_shift=0.0,
        horizon_spread=1.0,
        camera_height_scale=1.0,
        focal_scale=1.0,
        object_scale=1.0,
        density_scale=1.0,
    ),
}
DEFAULT_PRESET = "strong"

# Source-domain camera means; the target's derive from them through the geometry knobs.
HORIZON_MEAN = 0.42  # mean horizon row as a fraction of the image height
HORIZON_STD = 0.04  # its standard deviation (same unit)
CAMERA_HEIGHT = 1.6  # metres above the road
FOCAL = 0.9  # focal length in units of the image width


@dataclass(frozen=True)
class Geometry:
    """Per-domain camera and object statistics (means; every image draws around them)."""

    horizon_mean: float  # fraction of the image height
    horizon_std: float  # fraction of the image height
    camera_height: float  # metres
    focal: float  # units of the image width
    object_scale: float  # multiplier on metric object sizes
    density: float  # multiplier on expected object counts


def domain_geometry(domain: str, shift: ShiftParams) -> Geometry:
    """The source geometry, or the target's after applying the shift's geometry knobs."""
    if domain == "source":
        return Geometry(HORIZON_MEAN, HORIZON_STD, CAMERA_HEIGHT, FOCAL, 1.0, 1.0)
    return Geometry(
        horizon_mean=HORIZON_MEAN + shift.horizon_shift,
        horizon_std=HORIZON_STD * shift.horizon_spread,
        camera_height=CAMERA_HEIGHT * shift.camera_height_scale,
        focal=FOCAL * shift.focal_scale,
        object_scale=shift.object_scale,
        density=shift.density_scale,
    )


# material → (game colour, realistic colour). The 19 class materials carry the class names;
# the others colour parts that keep their object's label (windows are building, lane marks road).
MATERIALS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "road": ((72, 70, 100), (112, 110, 106)),
    "sidewalk": ((205, 150, 120), (150, 148, 142)),
    "building": ((195, 110, 75), (128, 124, 116)),
    "wall": ((215, 200, 110), (150, 142, 128)),
    "fence": ((170, 100, 40), (95, 100, 96)),
    "pole": ((55, 60, 75), (150, 150, 142)),
    "traffic light": ((245, 205, 0), (45, 45, 40)),
    "traffic sign": ((235, 30, 35), (45, 85, 170)),
    "vegetation": ((45, 185, 40), (72, 92, 48)),
    "terrain": ((165, 225, 85), (125, 118, 80)),
    "sky": ((60, 150, 255), (192, 205, 214)),
    "person": ((225, 45, 125), (62, 58, 64)),
    "rider": ((250, 125, 20), (78, 64, 86)),
    "car": ((30, 85, 230), (140, 140, 146)),
    "truck": ((240, 240, 235), (170, 68, 52)),
    "bus": ((250, 210, 30), (52, 112, 150)),
    "train": ((30, 200, 200), (188, 188, 176)),
    "motorcycle": ((200, 35, 200), (44, 44, 52)),
    "bicycle": ((255, 70, 60), (52, 72, 62)),
    "marking": ((255, 255, 255), (200, 200, 190)),
    "curb": ((225, 225, 225), (165, 165, 160)),
    "glass": ((40, 60, 115), (62, 70, 76)),
    "tyre": ((20, 20, 20), (36, 36, 36)),
    "skin": ((240, 190, 150), (178, 140, 116)),
    "trunk": ((125, 72, 30), (76, 66, 56)),
    "lamp red": ((255, 20, 0), (205, 70, 50)),
    "lamp amber": ((255, 190, 0), (205, 150, 70)),
    "lamp green": ((0, 255, 90), (70, 185, 125)),
    "rear lamp": ((255, 30, 30), (150, 35, 35)),
    "hood": ((28, 28, 30), (42, 42, 46)),
}

# Luminance-texture amplitude per train id (relative to ShiftParams.texture); ignore gets 0.5.
_TEXTURE_GAIN: dict[str, float] = {
    "road": 0.8,
    "sidewalk": 0.9,
    "building": 1.0,
    "wall": 0.9,
    "fence": 0.6,
    "pole": 0.3,
    "traffic light": 0.3,
    "traffic sign": 0.2,
    "vegetation": 1.6,
    "terrain": 1.3,
    "sky": 0.25,
    "person": 0.6,
    "rider": 0.6,
    "car": 0.4,
    "truck": 0.5,
    "bus": 0.4,
    "train": 0.5,
    "motorcycle": 0.4,
    "bicycle": 0.4,
}
_IGNORE_TEXTURE_GAIN = 0.5
# Noise cell sizes in pixels (coarse blotches, grain, per-pixel) and their weights.
_TEXTURE_SCALES: tuple[tuple[int, float], ...] = ((16, 0.5), (4, 0.35), (1, 0.35))
# Warm tint of the target camera (relative per-channel gain direction, RGB).
_TARGET_TINT = np.array([0.6, 0.15, -0.6], dtype=np.float32)
# Shadow masks are softened by this blur radius (pixels) before darkening.
_SHADOW_SOFTNESS = 1.0
_MAX_VALUE = 255.0


def material_colours(domain: str, shift: ShiftParams) -> dict[str, np.ndarray]:
    """Base colour of every material in ``domain`` ('source' or 'target'), float RGB."""
    if domain not in ("source", "target"):
        raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
    blend = shift.colour_blend if domain == "target" else 0.0
    out = {}
    for name, (game, real) in MATERIALS.items():
        game_arr, real_arr = np.asarray(game, np.float32), np.asarray(real, np.float32)
        out[name] = (1.0 - blend) * game_arr + blend * real_arr
    return out


def _texture_lut() -> np.ndarray:
    lut = np.full(256, _IGNORE_TEXTURE_GAIN, dtype=np.float32)
    for name, gain in _TEXTURE_GAIN.items():
        lut[CITYSCAPES.names.index(name)] = gain
    lut[IGNORE_INDEX] = _IGNORE_TEXTURE_GAIN
    return lut


_TEXTURE_LUT = _texture_lut()


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """Unit-variance-ish noise of shape ``size`` with blobs about ``cell`` pixels wide."""
    height, width = size
    if cell <= 1:
        return rng.standard_normal(size).astype(np.float32)
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    field = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def _lighting_gain(rng: np.random.Generator, size: tuple[int, int], amount: float) -> np.ndarray:
    """(H, W) multiplicative gain: a linear ramp from 1 - amount to 1 + amount."""
    height, width = size
    angle = rng.uniform(0.0, 2.0 * np.pi)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.cos(angle) * (cols / max(width - 1, 1) - 0.5) + np.sin(angle) * (
        rows / max(height - 1, 1) - 0.5
    )
    ramp /= max(float(np.abs(ramp).max()), 1e-6)
    return 1.0 + amount * ramp


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def apply_target_effects(
    image: np.ndarray,
    label: np.ndarray,
    shadow: np.ndarray,
    rng: np.random.Generator,
    shift: ShiftParams,
) -> np.ndarray:
    """Texture, shadows, lighting, colour cast, blur, sensor noise and JPEG on a flat render.

    Args:
        image: flat-shaded render, uint8.
        label: train ids of the render (selects each pixel's texture gain).
        shadow: 0..255 cast-shadow mask of the render.
        rng: the image's random generator.
        shift: knob strengths; a zero knob skips its effect.

    Returns:
        The target-domain image, uint8.

    Shape:
        image: (H, W, 3); label, shadow: (H, W); output: (H, W, 3).
    """
    size = label.shape
    out = image.astype(np.float32)
    if shift.texture > 0:
        texture = sum(w * _smooth_noise(rng, size, cell) for cell, w in _TEXTURE_SCALES)
        out += (shift.texture * _TEXTURE_LUT[label] * texture)[..., None]
    if shift.shadows > 0 and shadow.any():
        soft = Image.fromarray(shadow).filter(ImageFilter.GaussianBlur(_SHADOW_SOFTNESS))
        out *= (1.0 - shift.shadows * np.asarray(soft, np.float32) / _MAX_VALUE)[..., None]
    if shift.lighting > 0:
        out *= _lighting_gain(rng, size, shift.lighting)[..., None]
    if shift.colour_cast > 0:
        random_tint = rng.uniform(-1.0, 1.0, 3).astype(np.float32)
        out *= 1.0 + shift.colour_cast * 0.5 * (_TARGET_TINT + random_tint)
    result = np.clip(out, 0.0, _MAX_VALUE).round().astype(np.uint8)
    if shift.blur > 0:
        blurred = Image.fromarray(result).filter(ImageFilter.GaussianBlur(shift.blur))
        result = np.asarray(blurred, dtype=np.uint8)
    if shift.noise > 0:
        noisy = result + shift.noise * rng.standard_normal(result.shape, dtype=np.float32)
        result = np.clip(noisy, 0.0, _MAX_VALUE).round().astype(np.uint8)
    if shift.jpeg_quality is not None:
        result = _jpeg_round_trip(result, shift.jpeg_quality)
    return result
