"""Street layout of the synthetic scenes: where the road, buildings and objects go.

One image's scene is drawn back to front (painter's algorithm) so that nearer things occlude
farther ones: sky and skyline, the ground (road with lane marks, sidewalks, curbs, grass), the
building lots along both sides and across the street's end, boundary walls, fences and hedges,
then the street objects (trees, poles, vehicles, people, riders, parked two-wheelers) sorted far
to near (:mod:`spcl.data.synthetic.placement`). Sizes are metric, so perspective makes near
objects bigger and lower. The camera and the street's cross-section are sampled in
:mod:`spcl.data.synthetic.street`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spcl.base import IGNORE_INDEX
from spcl.data.synthetic.painter import CLS, Painter, ground_quad
from spcl.data.synthetic.placement import draw_street_objects
from spcl.data.synthetic.shapes import draw_tree
from spcl.data.synthetic.street import CURB_WIDTH, Street, pick, sample_street
from spcl.data.synthetic.style import Geometry

__all__ = ["paint_scene"]

Z_NEAR, Z_FAR = 1.0, 400.0  # metres: nearest and farthest depth of ground and facades
SKYLINE_DEPTH = 300.0  # metres: distant buildings or tree line on the horizon
BUILDING_DEPTH = 15.0  # metres from a building's front to its back
MARK_WIDTH, DASH_LENGTH, DASH_GAP = 0.15, 3.0, 6.0  # lane marks, metres
MIN_FEATURE_PX = 0.8  # windows and dashes narrower than this (pixels) are skipped
EGO_HOOD_PROB = 0.15  # share of images with the camera car's hood (ignore label) at the bottom
LOT_KINDS, LOT_PROBS = ("building", "park", "open"), (0.64, 0.2, 0.16)


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    r, g, b = (min(255, int(c * factor)) for c in rgb)
    return (r, g, b)


def _draw_backdrop(p: Painter) -> None:
    """Sky above the horizon, far ground below it, and a skyline or tree line on it."""
    cam, rng = p.cam, p.rng
    height, width = cam.size
    sky, ground = (-1.0, -1.0, width, cam.horizon), (-1.0, cam.horizon, width, height)
    for (x0, y0, x1, y1), cls in ((sky, "sky"), (ground, "terrain")):
        p.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], CLS[cls], p.tint(cls, 0.6))
    x, limit = -SKYLINE_DEPTH, SKYLINE_DEPTH
    if rng.random() < 0.75:
        while x < limit:
            wide, tall = rng.uniform(15.0, 60.0), rng.uniform(8.0, 55.0)
            p.front(x, x + wide, 0.0, tall, SKYLINE_DEPTH, CLS["building"], p.tint("building", 0.6))
            x += wide + rng.uniform(0.0, 25.0) * (rng.random() < 0.3)
        return
    while x < limit:
        draw_tree(p, x, SKYLINE_DEPTH, size=rng.uniform(4.0, 7.0))
        x += rng.uniform(10.0, 20.0)


def _dashes(p: Painter, x: float, solid: bool) -> None:
    cam, rng = p.cam, p.rng
    rgb, half = p.tint("marking", 0.3), MARK_WIDTH / 2
    if solid:
        p.ground(x - half, x + half, Z_NEAR, Z_FAR, CLS["road"], rgb)
        return
    z = Z_NEAR + rng.uniform(0.0, DASH_LENGTH + DASH_GAP)
    while cam.point(x, z)[1] - cam.point(x, z + DASH_LENGTH)[1] > MIN_FEATURE_PX:
        p.ground(x - half, x + half, z, z + DASH_LENGTH, CLS["road"], rgb)
        z += DASH_LENGTH + DASH_GAP


def _draw_ground(p: Painter, street: Street) -> float:
    """Road with lane marks, sidewalks, curbs and grass; returns the crosswalk depth (or 0)."""
    cam, rng = p.cam, p.rng
    (left, right), walk, front = street.road, street.walk, street.front
    for side, (a, b) in enumerate(((front[0], walk[0]), (walk[1], front[1]))):
        cls = "terrain" if street.setback_terrain[side] else "sidewalk"
        p.ground(a, b, Z_NEAR, Z_FAR, CLS[cls], p.tint(cls))
    for a, b in ((walk[0], left), (right, walk[1])):
        p.ground(a, b, Z_NEAR, Z_FAR, CLS["sidewalk"], p.tint("sidewalk"))
    p.ground(left, right, Z_NEAR, Z_FAR, CLS["road"], p.tint("road", 0.6))
    for edge, sign in ((left, -1), (right, 1)):
        curb = p.tint("curb", 0.3)
        p.ground(edge, edge + sign * CURB_WIDTH, Z_NEAR, Z_FAR, CLS["sidewalk"], curb)
        if rng.random() < 0.35:  # grass verge along the curb
            z0 = rng.uniform(Z_NEAR, 30.0)
            inner, outer = edge + sign * CURB_WIDTH, edge + sign * rng.uniform(1.0, 1.8)
            z1 = z0 + rng.uniform(8.0, 40.0)
            p.ground(inner, outer, z0, z1, CLS["terrain"], p.tint("terrain"))
    lane_width = (right - left) / len(street.lanes)
    for i in range(1, len(street.lanes)):
        _dashes(p, left + i * lane_width, solid=rng.random() < 0.25)
    if rng.random() < 0.5:
        _dashes(p, left + 0.3, solid=True)
        _dashes(p, right - 0.3, solid=True)
    if rng.random() >= 0.3:
        return 0.0
    z, rgb = rng.uniform(max(cam.nearest_ground(), Z_NEAR) + 2.0, 30.0), p.tint("marking", 0.3)
    for x in np.arange(left + 0.3, right - 0.5, 1.0):
        p.ground(x, x + 0.5, z, z + 3.0, CLS["road"], rgb)
    return float(z)


@dataclass(frozen=True)
class Lot:
    """A stretch of one street side: a building, a park or an open plot."""

    side: int  # 0 = left, 1 = right
    z0: float
    z1: float
    kind: str
    height: float  # building height in metres


def _sample_lots(rng: np.random.Generator, street: Street) -> list[Lot]:
    lots = []
    for side in (0, 1):
        z = Z_NEAR
        while z < street.end:
            length = rng.uniform(8.0, 30.0)
            kind = pick(rng, LOT_KINDS, LOT_PROBS)
            lots.append(Lot(side, z, min(z + length, street.end), kind, rng.uniform(6.0, 28.0)))
            z += length + rng.uniform(0.0, 4.0) * (rng.random() < 0.3)
    return sorted(lots, key=lambda lot: -lot.z0)  # far to near


def _windows(p: Painter, x: float, z0: float, z1: float, height: float) -> None:
    """Window grid (and sometimes a glazed shop front) on the facade in the plane ``x``."""
    cam, rng = p.cam, p.rng
    floor, step = rng.uniform(2.8, 3.5), rng.uniform(2.2, 4.0)
    win_w, win_h = step * rng.uniform(0.35, 0.6), floor * rng.uniform(0.35, 0.55)
    building, glass = CLS["building"], p.tint("glass", 0.5)
    first = floor * rng.uniform(0.3, 0.5)
    if rng.random() < 0.35:
        p.side(x, z0 + 0.5, z1 - 0.5, 0.3, 2.6, building, glass)
        first = floor + first
    rows = np.arange(first, height - win_h - 0.3, floor)
    for zc in np.arange(z0 + 0.5 * step, z1 - win_w, step):
        if cam.focal * abs(x) * (1 / zc - 1 / (zc + win_w)) < MIN_FEATURE_PX:
            break
        if not cam.sees(x, x, zc + win_w):
            continue
        for y in rows:
            p.side(x, zc, zc + win_w, y, y + win_h, building, glass)


def _draw_street_end(p: Painter, street: Street) -> None:
    """Buildings across the far end of the street (or a row of trees)."""
    cam, rng = p.cam, p.rng
    x, limit, z = street.front[0] - 60.0, street.front[1] + 60.0, street.end
    if rng.random() < 0.35:
        while x < limit:
            draw_tree(p, x, z, size=rng.uniform(1.5, 2.5))
            x += rng.uniform(4.0, 9.0)
        return
    glass = p.tint("glass", 0.5)
    while x < limit:
        wide, tall = rng.uniform(10.0, 30.0), rng.uniform(8.0, 30.0)
        p.front(x, x + wide, 0.0, tall, z, CLS["building"], p.tint("building"))
        if cam.ppm(z) * 1.2 > MIN_FEATURE_PX:
            for wx in np.arange(x + 1.0, x + wide - 1.5, 3.0):
                if not cam.sees(wx, wx + 1.2, z):
                    continue
                for wy in np.arange(1.2, tall - 1.5, 3.2):
                    p.front(wx, wx + 1.2, wy, wy + 1.5, z, CLS["building"], glass)
        x += wide


def _draw_lots(p: Painter, street: Street, lots: list[Lot]) -> None:
    """Shadows of one side's buildings on the street, then every lot, far to near."""
    cam, rng = p.cam, p.rng
    sun_side = int(rng.integers(0, 2))
    for lot in lots:
        if lot.kind == "building" and lot.side == sun_side:
            sign, x = (-1, 1)[lot.side], street.front[lot.side]
            reach, skew = lot.height * rng.uniform(0.3, 0.9), rng.uniform(-3.0, 3.0)
            z0, z1 = max(lot.z0 + skew, Z_NEAR), max(lot.z1 + skew, Z_NEAR)
            p.cast_shadow(ground_quad(cam, x - sign * reach, x, z0, z1))
    _draw_street_end(p, street)
    for lot in lots:
        sign, x = (-1, 1)[lot.side], street.front[lot.side]
        if lot.kind == "building":
            rgb, back, cls = p.tint("building"), x + sign * BUILDING_DEPTH, CLS["building"]
            p.front(x, back, 0.0, lot.height, lot.z0, cls, _shade(rgb, 0.8))  # end wall
            p.side(x, lot.z0, lot.z1, 0.0, lot.height, cls, rgb)  # facade
            _windows(p, x, lot.z0, lot.z1, lot.height)
        elif lot.kind == "park":
            n_trees = max(1, int((lot.z1 - lot.z0) / 5.0))
            for z in sorted(rng.uniform(lot.z0, lot.z1, n_trees) + 1.0, reverse=True):
                draw_tree(p, x + sign * rng.uniform(1.0, 8.0), z, rng.uniform(1.3, 2.2))


def _draw_boundaries(p: Painter, street: Street, lots: list[Lot]) -> None:
    """Walls, fences and hedges along the sidewalks' outer edges, far to near."""
    rng = p.rng
    chances = {"open": (0.45, 0.45, 0.0), "park": (0.0, 0.35, 0.4), "building": (0.08, 0.07, 0.0)}
    for lot in lots:
        wall, fence, hedge = chances[lot.kind]
        x, roll = street.walk[lot.side], rng.random()
        z0, z1 = lot.z0 + rng.uniform(0.0, 2.0), lot.z1
        if lot.kind == "building" and x == street.front[lot.side]:
            continue  # no room between sidewalk and facade
        if roll < wall:
            p.side(x, z0, z1, 0.0, rng.uniform(0.8, 2.2), CLS["wall"], p.tint("wall"))
        elif roll < wall + hedge:
            p.side(x, z0, z1, 0.0, rng.uniform(0.8, 1.6), CLS["vegetation"], p.tint("vegetation"))
        elif roll < wall + hedge + fence:
            _draw_fence(p, x, z0, z1)


def _draw_fence(p: Painter, x: float, z0: float, z1: float) -> None:
    cam, rng = p.cam, p.rng
    fence, rgb, top = CLS["fence"], p.tint("fence"), rng.uniform(1.0, 2.0)
    if rng.random() < 0.3:  # solid boards
        p.side(x, z0, z1, 0.05, top, fence, rgb)
        return
    for y in (0.3 * top, top - 0.1):
        p.side(x, z0, z1, y, y + 0.1, fence, rgb)
    for z in np.arange(z1, z0, -rng.uniform(1.5, 3.0)):
        p.line([cam.point(x, z), cam.point(x, z, top)], 0.1 * cam.ppm(z), fence, rgb)


def _draw_hood(p: Painter) -> None:
    """The camera car's bonnet along the bottom edge, labelled ignore."""
    cam, rng = p.cam, p.rng
    height, width = cam.size
    rise = height * rng.uniform(0.05, 0.11)
    hood = p.tint("hood", 0.3)
    p.ellipse((-0.3 * width, height - rise), (1.3 * width, height + 2.0 * rise), IGNORE_INDEX, hood)


def paint_scene(p: Painter, geometry: Geometry) -> None:
    """Draw one random street scene seen by ``p.cam`` into ``p``, back to front."""
    rng = p.rng
    street = sample_street(rng)
    _draw_backdrop(p)
    crosswalk = _draw_ground(p, street)
    lots = _sample_lots(rng, street)
    _draw_lots(p, street, lots)
    _draw_boundaries(p, street, lots)
    draw_street_objects(p, street, geometry, crosswalk)
    if rng.random() < EGO_HOOD_PROB:
        _draw_hood(p)
