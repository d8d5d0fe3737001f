"""The registered segmenters and the options each takes, without importing torch.

Loading a config checks ``model.name`` and ``model.options`` against this table, so that
``spcl config CONFIG`` (which never imports torch) already refuses a model option the model would
refuse when it is built. :data:`spcl.models.build.MODEL_REGISTRY` holds the constructors (each
family module declares its own, :mod:`spcl.models.segmenter`); tests keep both in step
(tests/models/test_model_catalog.py, test_segmenter_contract.py): the same names, and the options
here are exactly the keyword parameters of each constructor that ``model.options`` may set. A new
backbone family adds its names here, with its options.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from spcl.base import did_you_mean

__all__ = ["MODEL_OPTIONS", "model_names", "option_problems", "unknown_model"]

RESNET_DEPTHS = (18, 34, 50, 101)  # spcl.models.resnet.RESNET_DEPTHS
MIT_VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")  # spcl.models.mit.MIT_VARIANTS
DINOV2_VARIANTS = ("vits14", "vitb14", "vitl14", "vitg14")  # spcl.models.vit.DINOV2_VARIANTS

_DEEPLAB = ("projection_dim", "dilations", "style", "input_convention")
_MIT = ("decoder_channels", "projection_dim", "drop_path_rate", "dropout")
_DINOV2 = ("feature_blocks", "freeze_backbone", "input_scale")
ADAPTER_VARIANTS = ("vits14", "vitb14", "vitl14")  # spcl.models.vfmudapp_seg.ADAPTER_VARIANTS
_ADAPTER = ("freeze_backbone", "input_scale")

MODEL_OPTIONS: dict[str, tuple[str, ...]] = {  # registry name → what model.options may set
    **{f"deeplabv2_resnet{depth}": _DEEPLAB for depth in RESNET_DEPTHS},
    **{f"daformer_mit_{variant}": ("fusion", *_MIT) for variant in MIT_VARIANTS},
    **{f"segformer_mit_{variant}": _MIT for variant in MIT_VARIANTS},
    **{
        f"dinov2_{variant}{suffix}": _DINOV2
        for variant in DINOV2_VARIANTS
        for suffix in ("", "_reg")
    },
    **{f"vfmudapp_{variant}": _ADAPTER for variant in ADAPTER_VARIANTS},
}


def model_names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(MODEL_OPTIONS)


def unknown_model(name: str) -> str:
    """What is wrong with a model name that is not registered: the closest and every name."""
    return (
        f"unknown model {name!r}{did_you_mean(name, MODEL_OPTIONS)}; valid names: {model_names()}"
    )


def option_problems(name: str, options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(key, what is wrong) for an unknown model name or options the model does not take."""
    if name not in MODEL_OPTIONS:
        yield "name", unknown_model(name)
        return
    accepted = MODEL_OPTIONS[name]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        yield (
            "options",
            f"model {name!r} has no option(s) {unknown}; its options: {list(accepted)} (an "
            f"option inherited from a base config is removed with ~model.options.{unknown[0]} "
            f"on the command line, or options: {{_delete_: true, ...}} in YAML)",
        )
