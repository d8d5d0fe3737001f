"""The built-in synthetic source ("game") → target ("real") pair: generator and reader.

:func:`generate_pair` writes a seeded street-scene pair in the Cityscapes label space
(:mod:`~spcl.data.synthetic.generator`, drawing in the other modules of this package);
:func:`scan_synthetic` reads it back as the registered dataset kind ``synthetic``
(``spcl data check synthetic DIR --option domain=target``).
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
