"""Object shapes of the synthetic street scenes: trees, poles, people, two-wheelers, vehicles.

The ``draw_*`` functions draw one object each with a :class:`~spcl.data.synthetic.painter.Painter`:
trees, poles with lights and signs, people, riders on two-wheelers and vehicles. Flat objects
facing the camera ("sprites") are given as (dx, dy) points in metres (people: in units of their
height), dx to the right of the object's anchor on the road and dy up. Parts keep their object's
label (wheels are car, lamps are traffic light) but get their own material colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spcl.data.synthetic.painter import CLS, MAX_VALUE, Camera, Painter, Point, Rgb, ground_quad

__all__ = [
    "VEHICLE_DIMS",
    "draw_person",
    "draw_pole",
    "draw_tree",
    "draw_two_wheeler",
    "draw_vehicle",
]

Anchor = tuple[float, float, float, int]  # sprite anchor: x, z, scale, mirror (1 or -1)
POLE_WIDTH = 0.18  # metres
VEHICLE_DIMS: dict[str, tuple[float, float, float]] = {  # width, height, length in metres
    "car": (1.8, 1.5, 4.4),
    "truck": (2.5, 3.6, 8.0),
    "bus": (2.55, 3.2, 12.0),
    "train": (2.65, 3.6, 26.0),
}
WHEEL_RADIUS: dict[str, float] = {"car": 0.33, "truck": 0.5, "bus": 0.5, "train": 0.45}
WINDOW_PILLAR_STEP: dict[str, float] = {"bus": 2.2, "train": 2.6}  # metres between pillars
_PERSON_TORSO = ((-0.13, 0.46), (0.13, 0.46), (0.15, 0.82), (-0.15, 0.82))
_PERSON_ARM = ((-0.21, 0.50), (-0.14, 0.50), (-0.14, 0.80), (-0.19, 0.81))
_PERSON_HEAD = ((0.0, 0.89), (0.065, 0.08))  # centre, radii
_RIDER_PARTS = (  # (part, polygon) of a seated rider about 1.75 m tall, facing +dx
    ("legs", ((-0.28, 0.98), (-0.12, 1.03), (0.16, 0.78), (0.05, 0.70))),
    ("legs", ((0.05, 0.70), (0.16, 0.78), (0.04, 0.30), (-0.06, 0.30))),
    ("torso", ((-0.30, 0.95), (-0.06, 0.98), (0.24, 1.50), (0.02, 1.58))),
    ("torso", ((0.10, 1.50), (0.20, 1.52), (0.46, 1.06), (0.38, 1.02))),
)
_RIDER_HEAD = ((0.18, 1.70), (0.11, 0.13))
_RIDER_DROP = {"bicycle": 0.0, "motorcycle": 0.12}  # seat height below a bicycle's
_BICYCLE_WHEELS = ((-0.52, 0.34), (0.52, 0.34))
_BICYCLE_RADIUS, _BICYCLE_TUBE = 0.34, 0.06
_BICYCLE_FRAME = (
    ((-0.52, 0.34), (-0.05, 0.32), (0.40, 0.90), (-0.22, 0.90), (-0.05, 0.32)),
    ((-0.52, 0.34), (-0.22, 0.90)),
    ((0.40, 0.90), (0.52, 0.34)),
    ((0.40, 0.90), (0.44, 1.05), (0.36, 1.08)),
    ((-0.30, 0.97), (-0.14, 0.97)),
)
_MOTORCYCLE_WHEELS = ((-0.68, 0.32), (0.68, 0.32))
_MOTORCYCLE_RADIUS = 0.32
_MOTORCYCLE_BODY = ((-0.75, 0.62), (-0.45, 0.40), (0.45, 0.40), (0.62, 0.70), (0.45, 0.98),
                    (0.15, 0.95), (-0.05, 0.82), (-0.55, 0.85))  # fmt: skip
_LAMP_NAMES = ("lamp red", "lamp amber", "lamp green")
_UNLIT = 0.3  # brightness of an unlit traffic-light lamp


def _sprite(cam: Camera, x: float, z: float, scale: float, mirror: int, pts: Sequence) -> list:
    cx, cy = cam.point(x, z)
    s = cam.ppm(z) * scale
    return [(cx + mirror * dx * s, cy - dy * s) for dx, dy in pts]


def _sprite_ellipse(
    p: Painter, anchor: Anchor, shape: tuple[Point, Point], cls: int, rgb: Rgb, ring: float = 0.0
) -> None:
    """Ellipse ``shape`` = (centre, radii) of a sprite; a ring ``ring`` metres wide if > 0."""
    x, z, scale, mirror = anchor
    (centre, (rx, ry)), s = shape, p.cam.ppm(z) * scale
    ((ex, ey),) = _sprite(p.cam, x, z, scale, mirror, [centre])
    ring_px = max(1, round(ring * s)) if ring > 0 else 0
    p.ellipse((ex - rx * s, ey - ry * s), (ex + rx * s, ey + ry * s), cls, rgb, ring=ring_px)


def draw_tree(p: Painter, x: float, z: float, size: float = 1.0) -> None:
    """A tree: trunk plus 3–5 overlapping crown blobs, all labelled vegetation."""
    cam, rng = p.cam, p.rng
    veg = CLS["vegetation"]
    trunk, radius = rng.uniform(1.8, 3.5) * size, rng.uniform(1.4, 2.6) * size
    if not cam.sees(x - 1.5 * radius, x + 1.5 * radius, z):
        return
    p.front(x - 0.15 * size, x + 0.15 * size, 0.0, trunk + radius, z, veg, p.tint("trunk", 0.5))
    base = p.tint("vegetation")
    n_blobs = int(rng.integers(3, 6))
    shapes = rng.random((n_blobs, 3)).tolist()  # per blob: offset across, height, radius
    shades = rng.integers(-12, 13, (n_blobs, 3)).tolist()
    for (u, v, w), shade in zip(shapes, shades, strict=True):
        cx, cy = x + (1.2 * u - 0.6) * radius, trunk + radius * (0.7 + 0.8 * v)
        r = radius * (0.55 + 0.35 * w)
        red, green, blue = (min(MAX_VALUE, max(0, c + o)) for c, o in zip(base, shade, strict=True))
        p.disc(cx, cy, z, r, veg, (red, green, blue))


def _draw_sign(p: Painter, x: float, z: float, y: float) -> None:
    cam, rng = p.cam, p.rng
    sign, r = CLS["traffic sign"], rng.uniform(0.3, 0.42)
    shape = int(rng.integers(0, 4))
    outline = {
        1: ((0.0, 1.0), (1.0, -0.8), (-1.0, -0.8)),
        2: ((-1.1, -0.8), (1.1, -0.8), (1.1, 0.8), (-1.1, 0.8)),
        3: ((0.0, 1.0), (1.0, 0.0), (0.0, -1.0), (-1.0, 0.0)),
    }
    for scale, colour in ((r, p.tint("traffic sign")), (0.55 * r, p.tint("marking", 0.3))):
        if shape == 0:
            p.disc(x, y, z, scale, sign, colour)
        else:
            pts = [cam.point(x + dx * scale, z, y + dy * scale) for dx, dy in outline[shape]]
            p.polygon(pts, sign, colour)


def _draw_light(p: Painter, x: float, z: float, top: float) -> None:
    rng = p.rng
    light, half_width, height, lamp = CLS["traffic light"], 0.18, 0.95, 0.11
    p.front(
        x - half_width, x + half_width, top - height, top, z, light, p.tint("traffic light", 0.6)
    )
    lit = int(rng.integers(0, len(_LAMP_NAMES)))
    for i, name in enumerate(_LAMP_NAMES):
        rgb = p.tint(name, 0.3)
        if i != lit:
            rgb = (int(rgb[0] * _UNLIT), int(rgb[1] * _UNLIT), int(rgb[2] * _UNLIT))
        cy = top - 0.18 - 0.3 * i
        p.disc(x, cy, z, lamp, light, rgb)


def draw_pole(p: Painter, x: float, z: float, kind: str, toward_road: int) -> None:
    """A pole of ``kind`` 'lamp' (with an arm), 'sign' (1–2 plates) or 'light' (signal box)."""
    cam, rng = p.cam, p.rng
    pole, metal, s = CLS["pole"], p.tint("pole", 0.6), cam.ppm(z)
    height = {"lamp": rng.uniform(6.0, 9.0), "sign": rng.uniform(2.4, 3.2)}.get(
        kind, rng.uniform(3.2, 4.2)
    )
    top = cam.point(x, z, height)
    p.line([cam.point(x, z), top], POLE_WIDTH * s, pole, metal)
    if kind == "lamp":
        end = x + toward_road * rng.uniform(1.2, 2.5)
        p.line([top, cam.point(end, z, height)], 0.6 * POLE_WIDTH * s, pole, metal)
        p.front(end - 0.35, end + 0.35, height - 0.2, height, z, pole, metal)
    elif kind == "sign":
        for k in range(int(rng.integers(1, 3))):
            _draw_sign(p, x, z, height - 0.35 - 0.8 * k)
    else:
        _draw_light(p, x, z, height)
        if rng.random() < 0.4:  # mast arm over the road with a second signal
            end = x + toward_road * rng.uniform(2.5, 5.0)
            p.line([top, cam.point(end, z, height)], 0.6 * POLE_WIDTH * s, pole, metal)
            _draw_light(p, end, z, height - 0.1)


def draw_person(p: Painter, x: float, z: float, height: float) -> None:
    """A standing or walking person ``height`` metres tall."""
    cam, rng = p.cam, p.rng
    person, stride = CLS["person"], rng.uniform(0.0, 0.12)
    top, trousers, skin = p.tint("person", 1.5), p.tint("person", 1.5), p.tint("skin", 0.6)
    legs = (
        ((-0.11 - stride, 0.0), (-0.03 - 0.3 * stride, 0.0), (0.01, 0.48), (-0.11, 0.48)),
        ((0.03 + 0.3 * stride, 0.0), (0.11 + stride, 0.0), (0.11, 0.48), (-0.01, 0.48)),
    )
    for leg in legs:
        p.polygon(_sprite(cam, x, z, height, 1, leg), person, trousers)
    for mirror in (1, -1):
        p.polygon(_sprite(cam, x, z, height, mirror, _PERSON_ARM), person, top)
    p.polygon(_sprite(cam, x, z, height, 1, _PERSON_TORSO), person, top)
    _sprite_ellipse(p, (x, z, height, 1), _PERSON_HEAD, person, skin)


def draw_two_wheeler(p: Painter, x: float, z: float, kind: str, ridden: bool, scale: float) -> None:
    """A bicycle or motorcycle seen from the side, with a rider on it if ``ridden``."""
    cam, rng = p.cam, p.rng
    cls, mirror = CLS[kind], 1 if rng.random() < 0.5 else -1
    anchor, colour = (x, z, scale, mirror), p.tint(kind)
    if kind == "bicycle":
        for centre in _BICYCLE_WHEELS:
            shape = (centre, (_BICYCLE_RADIUS, _BICYCLE_RADIUS))
            _sprite_ellipse(p, anchor, shape, cls, colour, ring=_BICYCLE_TUBE)
        tube_px = _BICYCLE_TUBE * cam.ppm(z) * scale
        for tube in _BICYCLE_FRAME:
            p.line(_sprite(cam, x, z, scale, mirror, tube), tube_px, cls, colour)
    else:
        tyre = p.tint("tyre", 0.3)
        for centre in _MOTORCYCLE_WHEELS:
            shape = (centre, (_MOTORCYCLE_RADIUS, _MOTORCYCLE_RADIUS))
            _sprite_ellipse(p, anchor, shape, cls, tyre)
        p.polygon(_sprite(cam, x, z, scale, mirror, _MOTORCYCLE_BODY), cls, colour)
    if not ridden:
        return
    rider, drop = CLS["rider"], _RIDER_DROP[kind]
    colours = {"legs": p.tint("rider", 1.5), "torso": p.tint("rider", 1.5)}
    for part, poly in _RIDER_PARTS:
        shifted = [(dx, dy - drop) for dx, dy in poly]
        p.polygon(_sprite(cam, x, z, scale, mirror, shifted), rider, colours[part])
    (hx, hy), radii = _RIDER_HEAD
    _sprite_ellipse(p, anchor, ((hx, hy - drop), radii), rider, p.tint("skin", 0.6))


@dataclass(frozen=True)
class _Vehicle:
    """Size, kind and colours of one vehicle."""

    kind: str
    width: float
    height: float
    length: float
    front_view: bool  # oncoming: windscreen and headlights face the camera
    body: Rgb
    glass: Rgb
    tyre: Rgb


def _vehicle_side(p: Painter, v: _Vehicle, xs: float, z: float) -> None:
    """The long side of a vehicle facing the camera, in the plane x = ``xs``."""
    h, length, cls, r = v.height, v.length, CLS[v.kind], WHEEL_RADIUS[v.kind]
    if v.kind == "car":
        belt = 0.55 * h
        a, b = (0.22, 0.72) if v.front_view else (0.28, 0.78)  # cabin span along the car
        p.side(xs, z, z + length, 0.7 * r, belt, cls, v.body)
        p.side(xs, z + a * length, z + b * length, belt, h, cls, v.body)
        za, zb = z + (a + 0.04) * length, z + (b - 0.04) * length
        p.side(xs, za, zb, belt + 0.06, h - 0.1, cls, v.glass)
        wheels = (0.18, 0.82)
    elif v.kind == "truck":
        cab = 0.22 * length
        cab_z = z if v.front_view else z + length - cab
        box_z = z + cab if v.front_view else z
        p.side(xs, box_z, box_z + length - cab, 0.7 * r, h, cls, v.body)
        p.side(xs, cab_z, cab_z + cab, 0.7 * r, 0.8 * h, cls, v.body)
        p.side(xs, cab_z + 0.15 * cab, cab_z + 0.85 * cab, 0.45 * h, 0.72 * h, cls, v.glass)
        wheels = (0.12, 0.5, 0.88)
    else:
        p.side(xs, z, z + length, 0.6 * r, h, cls, v.body)
        p.side(xs, z + 0.4, z + length - 0.4, 0.45 * h, 0.85 * h, cls, v.glass)
        step = WINDOW_PILLAR_STEP[v.kind]
        for zp in np.arange(z + step, z + length - 0.5, step):
            p.side(xs, zp, zp + 0.25, 0.45 * h, 0.85 * h, cls, v.body)
        wheels = (0.2, 0.8) if v.kind == "bus" else (0.08, 0.16, 0.84, 0.92)
    for frac in wheels:  # ellipses in the side plane
        zc = z + frac * length
        p.ellipse(p.cam.point(xs, zc - r, 0.0), p.cam.point(xs, zc + r, 2.0 * r), cls, v.tyre)


def _vehicle_end(p: Painter, v: _Vehicle, x0: float, x1: float, z: float) -> None:
    """The rear (or, for oncoming traffic, front) face of a vehicle at depth ``z``."""
    w, h, cls, r = v.width, v.height, CLS[v.kind], WHEEL_RADIUS[v.kind]
    for a, b in ((0.05, 0.22), (0.78, 0.95)):  # wheels peeking out below the body
        p.front(x0 + a * w, x0 + b * w, 0.0, 1.2 * r, z + 0.3, cls, v.tyre)
    top = h
    if v.kind == "car":
        top, inset = 0.55 * h, 0.12 * w
        p.front(x0 + inset, x1 - inset, top, h, z + 0.4, cls, v.body)
        p.front(x0 + inset + 0.08, x1 - inset - 0.08, top + 0.05, h - 0.1, z + 0.4, cls, v.glass)
    elif v.kind == "truck" and v.front_view:  # cab in front of the taller box
        top = 0.8 * h
        p.front(x0, x1, top, h, z + 0.22 * v.length, cls, v.body)
    p.front(x0, x1, 0.6 * r, top, z, cls, v.body)
    if v.kind != "car" and (v.front_view or v.kind != "truck"):
        p.front(x0 + 0.1, x1 - 0.1, 0.5 * top, 0.85 * top, z, cls, v.glass)
    lamp = p.tint("marking" if v.front_view else "rear lamp", 0.3)
    for a, b in ((0.04, 0.2), (0.8, 0.96)):
        p.front(x0 + a * w, x0 + b * w, 0.25 * top + 0.2, 0.25 * top + 0.4, z, cls, lamp)


def draw_vehicle(
    p: Painter, xc: float, z: float, kind: str, front_view: bool, scale: float
) -> None:
    """A car, truck, bus or train/tram centred at ``xc`` whose nearest face is at depth ``z``.

    The side facing the camera is drawn when the vehicle is not straight ahead; ``front_view``
    shows oncoming traffic (windscreen and headlights toward the camera).
    """
    rng = p.rng
    w, h, length = (d * scale * rng.uniform(0.92, 1.08) for d in VEHICLE_DIMS[kind])
    body = p.tint(kind, 1.8 if kind == "car" else 1.0)
    v = _Vehicle(kind, w, h, length, front_view, body, p.tint("glass", 0.5), p.tint("tyre", 0.3))
    x0, x1 = xc - w / 2, xc + w / 2
    p.cast_shadow(ground_quad(p.cam, x0 - 0.15, x1 + 0.15, z - 0.2, z + length))
    if x0 > 0 or x1 < 0:
        _vehicle_side(p, v, x0 if x0 > 0 else x1, z)
    _vehicle_end(p, v, x0, x1, z)
