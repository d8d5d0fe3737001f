"""The torch-free model catalog (checked when a config loads) matches the constructors."""

from __future__ import annotations

import inspect

from spcl.model_catalog import MODEL_OPTIONS
from spcl.models.build import BUILD_ARGUMENTS, MODEL_REGISTRY


def test_the_catalog_names_every_registered_model() -> None:
    assert set(MODEL_OPTIONS) == set(MODEL_REGISTRY)


def test_the_catalog_options_are_the_constructor_keywords() -> None:
    for name, entry in MODEL_REGISTRY.items():
        constructor = entry.constructor
        bound = getattr(constructor, "keywords", {})
        params = inspect.signature(constructor).parameters
        accepted = {p for p in params if p not in BUILD_ARGUMENTS and p not in bound}
        assert set(MODEL_OPTIONS[name]) == accepted, name
