"""Model files: a stage's final weights together with what is needed to rebuild the model.

A model file is a dict ``{"model": state_dict, "arch": {"name", "num_classes", "width",
"options"}, "class_names": [...], "palette": [[r, g, b], ...]}`` saved atomically (the class
table of the dataset the model was trained on); :func:`load_model_file` rebuilds the segmenter
from it alone (for ``spcl predict`` and ``spcl evaluate``) and says what is wrong when it cannot.
A file that is no spcl model file but an mmseg checkpoint of DAFormer, MIC(DAFormer) or SePiCo is
imported instead (:mod:`spcl.models.mmseg_import`), and so are the Lightning checkpoints of
VFM-UDA and VFM-UDA++ (:mod:`spcl.models.vfm_checkpoints`) and a checkpoint of the reference
SPCL/FADA code (``feature_extractor``/``classifier``, :mod:`spcl.models.weight_layouts`), so
published models can be scored. A ``.safetensors`` file written by ``spcl export`` is read too
(:mod:`spcl.models.safetensors_file`).

``arch["options"]`` holds every constructor option, including those a pretrained file implied
(``style``/``input_convention`` of the DeepLab COCO initialisation); ``arch["frozen_bn_eps"]``,
when present, freezes the backbone's BatchNorm with that eps after loading (reference
checkpoints trained with frozen BN, evaluated as the reference's ``test.py`` does);
``arch["hrda"]``, when present, holds HRDA's settings: the named model is rebuilt inside
:class:`~spcl.models.hrda.HRDASegmenter` (multi-resolution inference in evaluate and predict).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from spcl.base import CheckpointError, UserError
from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES
from spcl.engine.checkpoint import clean_state_dict, load_state, save_state
from spcl.models.build import build_model
from spcl.models.hrda import HRDASegmenter, HRDASettings
from spcl.models.mit import DEFAULT_WIDTH
from spcl.models.mmseg_import import import_mmseg_state, is_mmseg_checkpoint
from spcl.models.model_meta import checked_arch, checked_class_table
from spcl.models.resnet import freeze_batchnorm
from spcl.models.safetensors_file import is_safetensors_file, read_safetensors_model
from spcl.models.segmenter import Segmenter
from spcl.models.vfm_checkpoints import (
    ADAPTER_OPTIONAL,
    detect_vfm_layout,
    is_vfm_network,
    vfm_model_weights,
    vfm_unused_keys,
)
from spcl.models.weight_layouts import (
    LAYOUTS,
    detect_layout,
    fit_problems,
    load_deeplab_weights,
    resnet_weights_from_state,
)

__all__ = ["load_model_file", "save_model_file"]

logger = logging.getLogger(__name__)

REFERENCE_FROZEN_BN_EPS = 0.0  # the reference's FrozenBatchNorm2d computes rsqrt(var), no eps
# class names of a reference checkpoint by its class count (Cityscapes, SYNTHIA-16, SYNTHIA-13)
REFERENCE_CLASS_NAMES = {
    len(names): names for names in (CITYSCAPES.names, SYNTHIA_16_NAMES, SYNTHIA_13_NAMES)
}


def save_model_file(
    model: Segmenter | nn.parallel.DistributedDataParallel,
    path: str | Path,
    *,
    name: str,
    num_classes: int,
    width: int,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] = (),
    options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model``'s weights, architecture and class table to ``path`` (temp file + rename).

    ``options`` are the ``build_model`` options the model was built with (needed to rebuild it);
    those its pretrained file implied (``model.layout_options``) are added.

    Raises:
        TypeError: ``model`` (inside DDP) is not a :class:`~spcl.models.segmenter.Segmenter`.
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(inner, Segmenter):
        raise TypeError(f"save_model_file needs a Segmenter, got {type(inner).__name__}")
    options = {**dict(options or {}), **inner.layout_options}
    arch: dict[str, Any] = {
        "name": name,
        "num_classes": num_classes,
        "width": width,
        "options": dict(options or {}),
    }
    if isinstance(inner, HRDASegmenter):  # rebuilt around the named model (spcl.models.hrda)
        arch["hrda"] = inner.settings.to_dict()
    save_state(
        {
            "model": clean_state_dict(model.state_dict()),
            "arch": arch,
            "class_names": list(class_names),
            "palette": [list(map(int, colour)) for colour in palette],
        },
        path,
    )


def _import_mmseg(
    path: str | Path, state: Mapping[str, Any], role: Literal["student", "teacher"]
) -> tuple[Segmenter, dict[str, Any]]:
    """An mmseg checkpoint as ``(model, info)`` in the shape :func:`load_model_file` returns."""
    model, report = import_mmseg_state(state, role=role, source=path)
    layout = report.layout
    logger.info(
        "%s: imported the %s of an mmseg checkpoint: %s; unused keys: %s",
        path, role, layout.description, report.unused_summary() or "none",
    )  # fmt: skip
    arch = {
        "name": layout.name,
        "num_classes": layout.num_classes,
        "width": DEFAULT_WIDTH,
        "options": dict(layout.options),
        "source": "mmseg",
        "role": role,
        "layout": layout.description,
    }
    if layout.hrda is not None:  # an HRDA checkpoint: rebuilt as the two-scale model
        arch["hrda"] = dict(layout.hrda)
    info = {
        "arch": arch,
        "class_names": report.class_names,
        "palette": [],
        "unused_keys": report.unused_keys,
    }
    return model, info


def _import_reference(path: str | Path, state: Mapping[str, Any]) -> tuple[Segmenter, dict]:
    """A reference SPCL/FADA checkpoint as ``(model, info)`` (DeepLab-v2, BN as it trained)."""
    weights = resnet_weights_from_state(state, path)
    classes = weights.num_classes
    if weights.depth is None or classes is None:
        raise CheckpointError(
            f"{path}: looks like {weights.description}, but spcl needs a ResNet-18/34/50/101 "
            f"feature_extractor and an ASPP classifier (conv2d_list.i.weight)"
        )
    name = f"deeplabv2_resnet{weights.depth}"
    width = int(weights.backbone["conv1.weight"].shape[0])
    model = build_model(name, classes, width=width)
    notes = load_deeplab_weights(model, weights, path)
    arch: dict[str, Any] = {
        "name": name,
        "num_classes": classes,
        "width": width,
        "options": {},
        "source": "spcl_reference",
        "layout": weights.description,
    }
    if weights.frozen_bn:  # trained with FREEZE_BN: evaluate with the reference's frozen BN
        freeze_batchnorm(model.backbone, eps=REFERENCE_FROZEN_BN_EPS)
        arch["frozen_bn_eps"] = REFERENCE_FROZEN_BN_EPS
    logger.info("%s: imported %s; %s", path, weights.description, "; ".join(notes) or "all used")
    names = list(REFERENCE_CLASS_NAMES.get(classes, ()))
    return model, {"arch": arch, "class_names": names, "palette": [], "unused_keys": weights.unused}


def _import_vfm(
    path: str | Path, tensors: Mapping[str, Any], role: Literal["student", "teacher"]
) -> tuple[Segmenter, dict[str, Any]]:
    """A VFM-UDA or VFM-UDA++ Lightning checkpoint as ``(model, info)`` (width 64)."""
    layout = detect_vfm_layout(tensors, role, path)
    model = build_model(layout.name, layout.num_classes)
    weights = vfm_model_weights(tensors, layout)
    optional = ADAPTER_OPTIONAL if layout.name.startswith("vfmudapp_") else ()
    problems = fit_problems(model.state_dict(), weights, optional=optional)
    shown = [f"{kind} {keys[:3]} ({len(keys)})" for kind, keys in problems.items() if keys]
    if shown:
        raise CheckpointError(f"{path}: {layout.description}, but {'; '.join(shown)}")
    model.load_state_dict(weights, strict=False)
    unused = sorted(set(vfm_unused_keys(tensors, layout)))
    logger.info("%s: imported %s; unused: %s", path, layout.description, unused or "none")
    arch = {
        "name": layout.name,
        "num_classes": layout.num_classes,
        "width": DEFAULT_WIDTH,
        "options": {},
        "source": "vfm_lightning",
        "role": role,
        "layout": layout.description,
    }
    names = list(REFERENCE_CLASS_NAMES.get(layout.num_classes, ()))
    return model, {"arch": arch, "class_names": names, "palette": [], "unused_keys": unused}


def load_model_file(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    num_classes: int | None = None,
    mmseg_role: Literal["student", "teacher"] = "student",
) -> tuple[Segmenter, dict[str, Any]]:
    """Rebuild the segmenter saved at ``path`` (eval mode, on ``device``).

    Args:
        path: a file written by :func:`save_model_file`, a ``.safetensors`` file written by
            ``spcl export``, a checkpoint of the reference SPCL/FADA code (warm-up, SPCL or
            self-training), an mmseg checkpoint of DAFormer, MIC(DAFormer) or SePiCo, or a
            Lightning checkpoint of VFM-UDA or VFM-UDA++.
        device: where to put the model.
        num_classes: when given, the file must have this many classes.
        mmseg_role: which network of an mmseg UDA checkpoint: the ``"student"`` (``model.*``,
            what mmseg evaluates) or the EMA ``"teacher"`` (``ema_model.*``); of a VFM-UDA(++)
            Lightning checkpoint likewise ``network.*`` (what the authors evaluate) or
            ``network_ema.*`` (:mod:`spcl.models.vfm_checkpoints`).

    Returns:
        ``(model, info)`` with ``info = {"arch": ..., "class_names": [...], "palette": [...]}``
        (an empty palette for files written before palettes were saved, and for imports); for
        an import ``arch`` also has ``source`` and ``layout`` (mmseg: ``role``), and
        ``info["unused_keys"]`` lists the checkpoint entries not loaded (the other network,
        ``imnet_model.*``, optimizers, …).

    Raises:
        CheckpointError: none of these formats, or weights that do not fit the architecture it
            names (e.g. another number of classes or backbone); the message names the file, the
            layout it looks like and the first keys that do not fit.
    """
    if is_safetensors_file(path):
        weights, raw = read_safetensors_model(path)
        info = {**raw, **_checked_info(path, raw["arch"], raw["class_names"], raw["palette"])}
        _check_classes(path, info["arch"]["num_classes"], num_classes)
        model = _rebuild(path, info["arch"], weights)
        return model.to(device).eval(), info
    state = load_state(path)
    if "_loop" in state:  # spcl.engine.loop's resume record: a stage's checkpoint.pth
        raise CheckpointError(
            f"{path}: a training checkpoint (what `spcl run` resumes from), not a model file: "
            f"use model.pth beside it (written when the stage finishes)"
        )
    layout = detect_layout(state)
    nested = state.get("state_dict")
    tensors = {
        k: v
        for k, v in (nested.items() if isinstance(nested, Mapping) else ())
        if isinstance(k, str) and isinstance(v, Tensor)
    }  # a Lightning checkpoint's weights (edited files may hold anything there)
    if is_vfm_network(tensors):
        model, info = _import_vfm(path, tensors, mmseg_role)
        _check_classes(path, info["arch"]["num_classes"], num_classes)
        return model.to(device).eval(), info
    if layout == "spcl_reference":
        model, info = _import_reference(path, state)
        _check_classes(path, info["arch"]["num_classes"], num_classes)
        return model.to(device).eval(), info
    if layout != "spcl_model_file":
        if not is_mmseg_checkpoint(state):
            looks = LAYOUTS.get(layout or "", "no known layout")
            raise CheckpointError(
                f"{path}: not an spcl model file: it looks like {looks} "
                f"(keys {sorted(state)[:8]}); expected the model.pth written by a stage of "
                f"`spcl run`, an `spcl export` .safetensors file, a reference SPCL/FADA "
                f"checkpoint (feature_extractor + classifier) or an mmseg checkpoint of "
                f"DAFormer/MIC/SePiCo ([model.|ema_model.]backbone.*), a VFM-UDA(++) Lightning "
                f"checkpoint (state_dict with network.encoder.*); backbone "
                f"initialisations (torchvision, DeepLab COCO) belong in model.pretrained"
            )
        model, info = _import_mmseg(path, state, mmseg_role)
        _check_classes(path, info["arch"]["num_classes"], num_classes)
        return model.to(device).eval(), info
    info = _checked_info(
        path, state["arch"], state.get("class_names", []), state.get("palette", [])
    )
    _check_classes(path, info["arch"]["num_classes"], num_classes)
    model = _rebuild(path, info["arch"], _model_weights(path, state["model"]))
    return model.to(device).eval(), info


def _checked_info(path: str | Path, arch: Any, class_names: Any, palette: Any) -> dict[str, Any]:
    """``{"arch", "class_names", "palette"}`` of a model file, every field checked (named)."""
    checked = checked_arch(path, arch)
    names, colours = checked_class_table(path, class_names, palette, checked["num_classes"])
    return {"arch": checked, "class_names": names, "palette": colours}


def _model_weights(path: str | Path, weights: Any) -> dict[str, Tensor]:
    """The ``model`` entry of a model file: a mapping of names to tensors (named otherwise)."""
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{path}: 'model' is {type(weights).__name__}, not a state dict")
    wrong = [k for k, v in weights.items() if not isinstance(v, Tensor)]
    if wrong:
        raise CheckpointError(f"{path}: model weights that are not tensors: {wrong[:3]}")
    return clean_state_dict(weights)


def _fit_on_meta(path: str | Path, arch: Mapping[str, Any], weights: Mapping[str, Any]) -> None:
    """Build ``arch`` on the meta device (shapes, no memory) and compare it with ``weights``.

    Runs before the real build, so an edited size (``width: 100000``, ``num_classes: 10**6``)
    is refused without allocating the model it describes: once the shapes agree, the model is
    no larger than the weights already read. Draws no random numbers (meta tensors are empty).
    """
    try:
        with torch.device("meta"):
            model = _with_hrda(
                build_model(
                    arch["name"], arch["num_classes"], width=arch["width"], options=arch["options"]
                ),
                arch,
            )
    except (UserError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its arch cannot be built: {exc}") from exc
    problems = fit_problems(model.state_dict(), weights)  # num_batches_tracked may differ
    shown = [f"{kind} {keys[:3]} ({len(keys)})" for kind, keys in problems.items() if keys]
    if shown:
        raise CheckpointError(
            f"{path}: weights do not fit the arch it names ({arch['name']}, width "
            f"{arch['width']}, {arch['num_classes']} classes): {'; '.join(shown)}"
        )


def _rebuild(path: str | Path, arch: Mapping[str, Any], weights: Mapping[str, Any]) -> Segmenter:
    """Build the model ``arch`` names and load ``weights`` into it, strictly (named errors)."""
    _fit_on_meta(path, arch, weights)
    model = build_model(
        arch["name"], arch["num_classes"], width=arch["width"], options=arch.get("options")
    )
    model = _with_hrda(model, arch)  # checked on the meta device above
    expected = model.state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise CheckpointError(f"{path}: weights do not fit {dict(arch)}: {'; '.join(wrong[:3])}")
    # frozen BatchNorm has no num_batches_tracked buffer; everything else must match
    missing, unexpected = model.load_state_dict(dict(weights), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {dict(arch)}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if arch.get("frozen_bn_eps") is not None:
        freeze_batchnorm(model.backbone, eps=float(arch["frozen_bn_eps"]))
    return model


def _with_hrda(model: Segmenter, arch: Mapping[str, Any]) -> Segmenter:
    """``model`` inside HRDA's two-scale model when ``arch`` has ``hrda`` settings.

    Raises:
        ValueError: settings HRDA does not know or cannot use.
    """
    settings = arch.get("hrda")
    if settings is None:
        return model
    if not isinstance(settings, Mapping):
        raise ValueError(f"arch.hrda must be a mapping of HRDA settings, got {settings!r}")
    return HRDASegmenter(model, HRDASettings.from_mapping(settings))


def _check_classes(path: str | Path, found: int, expected: int | None) -> None:
    if expected is not None and found != expected:
        raise CheckpointError(f"{path}: the model has {found} classes but {expected} are expected")
