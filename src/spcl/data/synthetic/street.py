"""Random geometry of one synthetic scene: the camera and the street's cross-section.

The source domain's camera is fixed here; the target's follows :class:`ShiftParams`' geometry
knobs (through :class:`~spcl.data.synthetic.style.Geometry`). The street is straight, with 2–4
lanes, sidewalks and setbacks; :mod:`spcl.data.synthetic.scene` draws it and
:mod:`spcl.data.synthetic.placement` puts objects along it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spcl.data.synthetic.painter import Camera
from spcl.data.synthetic.style import Geometry

__all__ = ["CURB_WIDTH", "Street", "pick", "sample_camera", "sample_street"]

HORIZON_LIMITS = (0.25, 0.65)  # the horizon row is clipped to this range (fraction of H)
VANISH_SPREAD = 0.12  # vanishing-point column: centre ± this fraction of the width
CAMERA_HEIGHT_JITTER = 0.1  # relative ± range of the camera height per image
FOCAL_JITTER = 0.08  # relative ± range of the focal length per image
CURB_WIDTH = 0.2  # metres


def sample_camera(rng: np.random.Generator, size: tuple[int, int], geometry: Geometry) -> Camera:
    """One image's camera, drawn around ``geometry``'s means."""
    height, width = size
    frac = float(np.clip(rng.normal(geometry.horizon_mean, geometry.horizon_std), *HORIZON_LIMITS))
    return Camera(
        horizon=frac * height,
        vanish_x=width * (0.5 + rng.uniform(-VANISH_SPREAD, VANISH_SPREAD)),
        focal=width * geometry.focal * (1.0 + rng.uniform(-FOCAL_JITTER, FOCAL_JITTER)),
        height=geometry.camera_height
        * (1.0 + rng.uniform(-CAMERA_HEIGHT_JITTER, CAMERA_HEIGHT_JITTER)),
        size=size,
    )


@dataclass(frozen=True)
class Street:
    """Lateral layout (x in metres, camera at x = 0) of a straight street."""

    road: tuple[float, float]  # left and right road edges
    walk: tuple[float, float]  # outer edges of the left and right sidewalks
    front: tuple[float, float]  # building fronts (outer edge + setback)
    setback_terrain: tuple[bool, bool]  # setback strip is grass (else paved)
    lanes: tuple[float, ...]  # lane centres, left to right
    oncoming_below: float  # lanes centred left of this carry oncoming traffic
    end: float  # depth where a cross street's buildings or trees close the view


def sample_street(rng: np.random.Generator) -> Street:
    """A random street: 2–4 lanes with the camera in one of them, sidewalks, setbacks."""
    n_lanes = int(rng.integers(2, 5))
    lane_width = rng.uniform(2.9, 3.6)
    ego_lane = int(rng.integers(0, n_lanes))
    left = -(ego_lane + 0.5 + rng.uniform(-0.2, 0.2)) * lane_width
    right = left + n_lanes * lane_width
    walks = rng.uniform(1.8, 5.0, 2)
    setbacks = rng.uniform(0.5, 4.0, 2) * (rng.random(2) < 0.5)
    two_way = rng.random() < 0.6
    return Street(
        road=(left, right),
        walk=(left - walks[0], right + walks[1]),
        front=(left - walks[0] - setbacks[0], right + walks[1] + setbacks[1]),
        setback_terrain=(bool(rng.random() < 0.6), bool(rng.random() < 0.6)),
        lanes=tuple(left + (i + 0.5) * lane_width for i in range(n_lanes)),
        oncoming_below=left + (n_lanes // 2) * lane_width if two_way else -np.inf,
        end=float(rng.uniform(60.0, 220.0)),
    )


def pick(rng: np.random.Generator, kinds: tuple[str, ...], probs: tuple[float, ...]) -> str:
    """One of ``kinds`` drawn with probabilities ``probs`` (cheaper than ``rng.choice``)."""
    index = int(np.searchsorted(np.cumsum(probs), rng.random() * sum(probs), side="right"))
    return kinds[min(index, len(kinds) - 1)]
