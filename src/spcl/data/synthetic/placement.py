"""Street objects of the synthetic scenes: where trees, poles, vehicles and people stand.

Objects are placed at sampled depths (log-uniform, so near ones are not rare): rows of trees and
poles along both curbs, moving and parked vehicles in the lanes, people on the sidewalks and the
crosswalk, riders and parked two-wheelers. They are then drawn far to near (painter's algorithm)
with the shapes of :mod:`spcl.data.synthetic.shapes`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from spcl.data.synthetic.painter import Camera, Painter
from spcl.data.synthetic.shapes import (
    VEHICLE_DIMS,
    draw_person,
    draw_pole,
    draw_tree,
    draw_two_wheeler,
    draw_vehicle,
)
from spcl.data.synthetic.street import CURB_WIDTH, Street, pick
from spcl.data.synthetic.style import Geometry

__all__ = ["draw_street_objects"]

OBJECT_MAX_DEPTH = 70.0  # metres: street objects are placed nearer than this
# Expected number per image in the source domain (the target multiplies by its density).
MEAN_COUNTS: dict[str, float] = {
    "car": 3.5,
    "truck": 0.35,
    "bus": 0.3,
    "train": 0.12,  # at most one tram per image
    "person": 3.0,
    "rider": 0.8,
    "bicycle": 0.7,  # parked
    "motorcycle": 0.3,  # parked
}
RIDER_ON_BICYCLE = 0.6  # share of riders on bicycles (the rest ride motorcycles)
POLE_KINDS, POLE_PROBS = ("lamp", "sign", "light"), (0.45, 0.35, 0.2)


Item = tuple[float, int, Callable[..., None], tuple]  # depth, order, draw function, its args


class _Placer:
    """Collects street objects at sampled depths (log-uniform, so near ones are not rare)."""

    def __init__(
        self, rng: np.random.Generator, cam: Camera, street: Street, geo: Geometry
    ) -> None:
        self.rng, self.cam, self.street, self.geo = rng, cam, street, geo
        self.near = max(cam.nearest_ground() * 0.9, 2.0)
        self.far = max(min(OBJECT_MAX_DEPTH, street.end - 3.0), self.near + 1.0)
        self.items: list[Item] = []
        self.occupied: dict[int, list[tuple[float, float]]] = {}

    def add(self, z: float, fn: Callable[..., None], *args: object) -> None:
        self.items.append((z, len(self.items), fn, args))

    def depth(self, near: float | None = None) -> float:
        low = np.log(max(near or self.near, self.near))
        return float(np.exp(self.rng.uniform(low, max(np.log(self.far), low))))

    def count(self, name: str) -> int:
        return int(self.rng.poisson(MEAN_COUNTS[name] * self.geo.density))

    def sidewalk_x(self, margin: float = 0.4) -> float:
        side = int(self.rng.integers(0, 2))
        edge, outer = self.street.road[side], self.street.walk[side]
        sign = (-1, 1)[side]
        a, b = edge + sign * (CURB_WIDTH + margin), outer - sign * margin
        return float(self.rng.uniform(min(a, b), max(a, b)))

    def vehicle(self, kind: str, lane: int, z: float, front_view: bool) -> bool:
        """Place a vehicle unless it overlaps another in its lane; returns success."""
        length = VEHICLE_DIMS[kind][2] * self.geo.object_scale * 1.1
        taken = self.occupied.setdefault(lane, [])
        if any(z - 1.0 < b and a < z + length + 1.0 for a, b in taken):
            return False
        taken.append((z, z + length))
        x = self.street.lanes[lane] + self.rng.uniform(-0.3, 0.3)
        self.add(z, draw_vehicle, x, z, kind, front_view, self.geo.object_scale)
        return True


def _place_vehicles(pl: _Placer) -> None:
    rng, street = pl.rng, pl.street
    ego = int(np.argmin(np.abs(np.asarray(street.lanes))))
    kinds = [k for k in ("car", "truck", "bus") for _ in range(pl.count(k))]
    if rng.random() < MEAN_COUNTS["train"] * pl.geo.density:
        kinds.append("train")
    for kind in kinds:
        lane = int(rng.integers(0, len(street.lanes)))
        z = pl.depth(6.0 if lane == ego else None)
        pl.vehicle(kind, lane, z, street.lanes[lane] < street.oncoming_below)
    for lane in (0, len(street.lanes) - 1):  # parked rows along the curbs
        if lane == ego or rng.random() >= 0.35:
            continue
        z = pl.depth()
        for _ in range(int(rng.integers(1, 5))):
            pl.vehicle("car", lane, z, bool(rng.random() < 0.5))
            z += VEHICLE_DIMS["car"][2] * pl.geo.object_scale * 1.1 + rng.uniform(1.2, 4.0)


def _place_people(pl: _Placer, crosswalk: float) -> None:
    rng, scale, (left, right) = pl.rng, pl.geo.object_scale, pl.street.road
    for _ in range(pl.count("person")):
        if crosswalk and rng.random() < 0.3:
            x, z = rng.uniform(left, right), crosswalk + rng.uniform(0.3, 2.7)
        else:
            x, z = pl.sidewalk_x(), pl.depth()
        for _ in range(1 + int(rng.random() < 0.3)):  # sometimes a companion
            pl.add(z, draw_person, x, z, rng.uniform(1.55, 1.92) * scale)
            x, z = x + rng.uniform(-0.8, 0.8), z + rng.uniform(-0.6, 0.6)
    for _ in range(pl.count("rider")):
        if rng.random() < RIDER_ON_BICYCLE:
            side, kind = int(rng.integers(0, 2)), "bicycle"
            cycle_lane = pl.street.road[side] + (1, -1)[side] * 0.9
            x = cycle_lane if rng.random() < 0.7 else pl.sidewalk_x()
        else:
            lane = pl.street.lanes[int(rng.integers(0, len(pl.street.lanes)))]
            x, kind = lane + rng.uniform(-0.8, 0.8), "motorcycle"
        z = pl.depth()
        pl.add(z, draw_two_wheeler, x, z, kind, True, scale)
    for kind in ("bicycle", "motorcycle"):  # parked
        for _ in range(pl.count(kind)):
            x, z = pl.sidewalk_x(margin=0.6), pl.depth()
            for k in range(int(rng.integers(1, 4))):
                pl.add(z + 0.8 * k, draw_two_wheeler, x, z + 0.8 * k, kind, False, scale)


def _place_furniture(pl: _Placer, crosswalk: float) -> None:
    """Rows of trees and poles (lamps, signs, traffic lights) along both curbs."""
    rng, street = pl.rng, pl.street
    for side in (0, 1):
        sign, edge = (-1, 1)[side], street.road[side]
        if rng.random() < 0.55:
            z = rng.uniform(2.0, 10.0)
            x = edge + sign * rng.uniform(0.8, 1.4)
            while z < street.end - 2.0:
                pl.add(z, draw_tree, x, z)
                z += rng.uniform(7.0, 14.0)
        z = rng.uniform(3.0, 15.0)
        while z < min(street.end - 2.0, OBJECT_MAX_DEPTH * 1.5):
            kind = pick(rng, POLE_KINDS, POLE_PROBS)
            pl.add(z, draw_pole, edge + sign * 0.45, z, kind, -sign)
            z += rng.uniform(12.0, 35.0)
        if crosswalk:
            pl.add(crosswalk - 0.5, draw_pole, edge + sign * 0.45, crosswalk - 0.5, "light", -sign)


def draw_street_objects(p: Painter, street: Street, geometry: Geometry, crosswalk: float) -> None:
    """Place trees, poles, vehicles, people and two-wheelers, then draw them far to near.

    ``crosswalk`` is the crosswalk's depth (0 if none): pedestrians cross there under lights.
    """
    placer = _Placer(p.rng, p.cam, street, geometry)
    _place_furniture(placer, crosswalk)
    _place_vehicles(placer)
    _place_people(placer, crosswalk)
    for _, _, fn, args in sorted(placer.items, key=lambda item: (-item[0], item[1])):
        fn(p, *args)
