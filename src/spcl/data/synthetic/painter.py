"""Camera and painter of the synthetic street scenes.

A pinhole :class:`Camera` looks along +z over a flat road: a point ``x`` metres to the side, ``z``
metres ahead and ``y`` metres above the road lands at column ``vanish_x + focal * x / z`` and row
``horizon + focal * (height - y) / z``, so nearer things are bigger and lower in the image. A
:class:`Painter` draws every PIL shape into three images at once: the label map, the flat colour
image and a cast-shadow mask. The objects drawn with it are in :mod:`spcl.data.synthetic.shapes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from spcl.base import IGNORE_INDEX
from spcl.data.labels import CITYSCAPES

__all__ = [
    "CLS",
    "MAX_VALUE",
    "Camera",
    "Painter",
    "Point",
    "Rgb",
    "front_rect",
    "ground_quad",
    "side_quad",
]

CLS: dict[str, int] = {name: i for i, name in enumerate(CITYSCAPES.names)}
Point = tuple[float, float]
Rgb = tuple[int, int, int]
MAX_VALUE = 255  # largest 8-bit channel value


@dataclass(frozen=True)
class Camera:
    """Pinhole camera over a flat road, looking along +z."""

    horizon: float  # row of the horizon (pixels)
    vanish_x: float  # column of the vanishing point (pixels)
    focal: float  # pixels
    height: float  # metres above the road
    size: tuple[int, int]  # (H, W) of the image

    def point(self, x: float, z: float, y: float = 0.0) -> Point:
        """Pixel (column, row) of the world point (x, y, z)."""
        return (
            self.vanish_x + self.focal * x / z,
            self.horizon + self.focal * (self.height - y) / z,
        )

    def ppm(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.focal / z

    def nearest_ground(self) -> float:
        """Depth of the road point on the image's bottom row."""
        return self.focal * self.height / max(self.size[0] - self.horizon, 1.0)

    def sees(self, x0: float, x1: float, z: float) -> bool:
        """Whether the lateral span x0..x1 at depth ``z`` overlaps the image's columns."""
        return self.point(x1, z)[0] >= 0.0 and self.point(x0, z)[0] < self.size[1]


def ground_quad(cam: Camera, x0: float, x1: float, z0: float, z1: float, y: float = 0.0) -> list:
    """Corners of the horizontal rectangle x0..x1 × z0..z1 at height ``y``."""
    return [cam.point(x0, z0, y), cam.point(x1, z0, y), cam.point(x1, z1, y), cam.point(x0, z1, y)]


def side_quad(cam: Camera, x: float, z0: float, z1: float, y0: float, y1: float) -> list:
    """Corners of the vertical rectangle z0..z1 × y0..y1 in the plane at lateral offset ``x``."""
    return [cam.point(x, z0, y0), cam.point(x, z0, y1), cam.point(x, z1, y1), cam.point(x, z1, y0)]


def front_rect(cam: Camera, x0: float, x1: float, y0: float, y1: float, z: float) -> list:
    """Corners of the vertical rectangle x0..x1 × y0..y1 facing the camera at depth ``z``."""
    return [cam.point(x0, z, y0), cam.point(x1, z, y0), cam.point(x1, z, y1), cam.point(x0, z, y1)]


def _box(a: Point, b: Point) -> list[float]:
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])]


class Painter:
    """Draws every shape into the label map, the flat colour image and the shadow mask.

    It also carries what every ``draw_*`` function needs: the camera and the random generator.

    Args:
        cam: the camera; its ``size`` (H, W) is the size of the images.
        colours: material name → base RGB (see ``synthetic_style.material_colours``).
        jitter: std of the per-instance colour offset (0..255 scale).
        rng: random generator of the scene (shapes and colour offsets).
    """

    def __init__(
        self, cam: Camera, colours: dict[str, np.ndarray], jitter: float, rng: np.random.Generator
    ) -> None:
        height, width = cam.size
        self.cam = cam
        self.label = Image.new("L", (width, height), IGNORE_INDEX)
        self.image = Image.new("RGB", (width, height))
        self.shadow = Image.new("L", (width, height), 0)
        self._label_draw = ImageDraw.Draw(self.label)
        self._image_draw = ImageDraw.Draw(self.image)
        self._shadow_draw = ImageDraw.Draw(self.shadow)
        self.colours, self.jitter, self.rng = colours, jitter, rng

    def tint(self, material: str, spread: float = 1.0) -> Rgb:
        """An instance colour: the material's base colour plus a random offset."""
        offset = self.rng.normal(0.0, self.jitter * spread, 3).tolist()
        r, g, b = (
            min(MAX_VALUE, max(0, round(c + o)))
            for c, o in zip(self.colours[material].tolist(), offset, strict=True)
        )
        return (r, g, b)

    def polygon(self, points: Sequence[Point], cls: int, rgb: Rgb) -> None:
        """Filled polygon; it also clears any shadow under it."""
        self._label_draw.polygon(points, fill=cls)
        self._image_draw.polygon(points, fill=rgb)
        self._shadow_draw.polygon(points, fill=0)

    def ellipse(self, a: Point, b: Point, cls: int, rgb: Rgb, ring: int = 0) -> None:
        """Ellipse in the box with corners ``a`` and ``b``; a ring of width ``ring`` px if > 0."""
        box = _box(a, b)
        if ring > 0:
            for draw, value in ((self._label_draw, cls), (self._image_draw, rgb)):
                draw.ellipse(box, outline=value, width=ring)
            self._shadow_draw.ellipse(box, outline=0, width=ring)
            return
        self._label_draw.ellipse(box, fill=cls)
        self._image_draw.ellipse(box, fill=rgb)
        self._shadow_draw.ellipse(box, fill=0)

    def line(self, points: Sequence[Point], width_px: float, cls: int, rgb: Rgb) -> None:
        """Poly-line at least one pixel wide."""
        width = max(1, round(width_px))
        self._label_draw.line(points, fill=cls, width=width)
        self._image_draw.line(points, fill=rgb, width=width)
        self._shadow_draw.line(points, fill=0, width=width)

    def front(
        self, x0: float, x1: float, y0: float, y1: float, z: float, cls: int, rgb: Rgb
    ) -> None:
        """Rectangle x0..x1 × y0..y1 (metres) facing the camera at depth ``z``."""
        self.polygon(front_rect(self.cam, x0, x1, y0, y1, z), cls, rgb)

    def side(
        self, x: float, z0: float, z1: float, y0: float, y1: float, cls: int, rgb: Rgb
    ) -> None:
        """Rectangle z0..z1 × y0..y1 (metres) in the vertical plane at lateral offset ``x``."""
        self.polygon(side_quad(self.cam, x, z0, z1, y0, y1), cls, rgb)

    def ground(self, x0: float, x1: float, z0: float, z1: float, cls: int, rgb: Rgb) -> None:
        """Rectangle x0..x1 × z0..z1 (metres) on the road plane."""
        self.polygon(ground_quad(self.cam, x0, x1, z0, z1), cls, rgb)

    def disc(self, x: float, y: float, z: float, radius: float, cls: int, rgb: Rgb) -> None:
        """Disc of ``radius`` metres centred at (x, y, z), facing the camera."""
        a, b = self.cam.point(x - radius, z, y + radius), self.cam.point(x + radius, z, y - radius)
        self.ellipse(a, b, cls, rgb)

    def cast_shadow(self, points: Sequence[Point]) -> None:
        """Mark a polygon as shadowed (on whatever is drawn there so far)."""
        self._shadow_draw.polygon(points, fill=MAX_VALUE)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (H, W, 3), label (H, W), shadow (H, W)) as uint8 arrays."""
        return (
            np.asarray(self.image, dtype=np.uint8),
            np.asarray(self.label, dtype=np.uint8),
            np.asarray(self.shadow, dtype=np.uint8),
        )
