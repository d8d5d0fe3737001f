"""The built-in synthetic source ("game") → target ("real") pair: generator and reader.

:func:`generate_pair` writes a seeded street-scene pair in the Cityscapes label space
(:mod:`~spcl.data.synthetic.generator`); :func:`scan_synthetic` reads it back as the registered
dataset kind ``synthetic`` (:mod:`~spcl.data.synthetic.reader`; ``spcl data check synthetic DIR
--option domain=target``). The drawing is split by what it decides:

- :mod:`~spcl.data.synthetic.street`: the random geometry of one scene (camera, cross-section).
- :mod:`~spcl.data.synthetic.scene`: the street layout (road, buildings, where objects go).
- :mod:`~spcl.data.synthetic.placement`: where trees, poles, vehicles and people stand.
- :mod:`~spcl.data.synthetic.shapes`: the object shapes.
- :mod:`~spcl.data.synthetic.painter`: the camera projection and the painter.
- :mod:`~spcl.data.synthetic.style`: the domains' appearance: shift knobs, presets, colours and
  the target's effects.

The package exports the generator's and the reader's public names; the drawing modules are
internal.
"""

from __future__ import annotations

from spcl.data.synthetic.generator import (
    DOMAINS,
    GENERATOR_VERSION,
    PRESETS,
    SPLITS,
    ShiftParams,
    generate_pair,
    image_name,
    render_scene,
    scene_rng,
    write_preview,
)
from spcl.data.synthetic.reader import SYNTHETIC_TABLE, scan_synthetic

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "PRESETS",
    "SPLITS",
    "SYNTHETIC_TABLE",
    "ShiftParams",
    "generate_pair",
    "image_name",
    "render_scene",
    "scan_synthetic",
    "scene_rng",
    "write_preview",
]
