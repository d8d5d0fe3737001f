"""The segmenter contract (spcl.models.segmenter), run by every registered model name.

A new family passes only if its models subclass Segmenter and keep every promise the stages,
the optimiser and the model files rely on: output shapes at ``output_stride``, feature channels,
a head named by ``head_prefixes``, layer ids for every parameter (every name), layout options that
survive a model file, and a weight loader that reads another run's model file back (one name per
constructor: the sizes of a family share its code).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from spcl.model_catalog import MODEL_OPTIONS
from spcl.models import deeplab_v2
from spcl.models.build import FAMILIES, MODEL_REGISTRY, _collect, build_model
from spcl.models.files import load_model_file, save_model_file
from spcl.models.segmenter import ModelEntry, Segmenter, SegOutput

NUM_CLASSES = 3
WIDTH = 4  # the smallest width every family takes (DINOv2 needs heads × width divisible by 4)
HEIGHT, WIDTH_PX = 56, 112  # multiples of 8, 4 and 14: every output stride divides them exactly
# families whose input sides must be multiples of more: ViT-Adapter needs multiples of 224
SIZES = {"vfmudapp": (224, 448)}
NAMES = sorted(MODEL_REGISTRY)
# a constructor option a model file's weights imply when it is loaded as model.pretrained (the
# DeepLab-v2 COCO convention); the other families' files imply none
IMPLIED = {"deeplabv2": {"input_convention": "caffe_bgr"}}


def _family(name: str) -> str:
    return name.split("_", 1)[0]


def _one_per_constructor() -> list[str]:
    """The first (smallest) name of each constructor and loader: the file round trips are slow.

    Names that share them differ only in sizes (depth, variant), not in what is saved or loaded.
    """
    firsts: dict[tuple[object, ...], str] = {}
    for name, entry in MODEL_REGISTRY.items():
        build = entry.constructor
        keywords = tuple(sorted(getattr(build, "keywords", {}).items()))
        key = (getattr(build, "func", build), keywords, entry.load_pretrained)
        firsts.setdefault(key, name)
    return sorted(firsts.values())


def _build(name: str, seed: int, **kwargs: object) -> Segmenter:
    torch.manual_seed(seed)
    return build_model(name, NUM_CLASSES, width=WIDTH, **kwargs).eval()  # type: ignore[arg-type]


def _images(name: str) -> torch.Tensor:
    size = SIZES.get(_family(name), (HEIGHT, WIDTH_PX))
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))


def _is_backbone(name: str) -> bool:
    return name.startswith("backbone.")


def test_every_name_is_declared_by_one_family() -> None:
    declared = [name for family in FAMILIES for name in family.MODELS]
    assert sorted(declared) == NAMES and set(MODEL_OPTIONS) == set(NAMES)
    assert all(isinstance(entry, ModelEntry) for entry in MODEL_REGISTRY.values())
    with pytest.raises(RuntimeError, match="'deeplabv2_resnet18' is declared twice"):
        _collect([deeplab_v2, deeplab_v2])


@pytest.mark.parametrize("name", NAMES)
def test_outputs_head_and_layer_ids(name: str) -> None:
    model = _build(name, seed=0)
    assert isinstance(model, Segmenter) and isinstance(model.backbone, nn.Module)
    assert model.num_classes == NUM_CLASSES and model.layout_options == {}
    x = _images(name)
    with torch.no_grad():
        out = model(x)
        logits = model.forward_head(model.forward_features(x))
    assert isinstance(out, SegOutput)
    size = tuple(int(side / model.output_stride) for side in x.shape[-2:])
    assert out.logits.shape == (2, NUM_CLASSES, *size)
    assert out.features.shape == (2, model.feature_channels, *size)
    torch.testing.assert_close(logits, out.logits)

    named = dict(model.named_parameters())
    head = {n for n in named if model.is_head(n)}
    assert head and head == {n for n in named if not _is_backbone(n)}  # head ∪ backbone = all
    backbone, head_params = model.param_groups()
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert [id(p) for p in head_params] == [id(named[n]) for n in trainable if n in head]
    assert [id(p) for p in backbone] == [id(named[n]) for n in trainable if n not in head]

    ids = {n: model.layer_id(n) for n in named}
    assert all(ids[n] == model.num_layers for n in head)
    assert {ids[n] for n in named if _is_backbone(n)} >= set(range(1, model.num_layers + 1))
    assert min(ids.values()) >= 0
    with pytest.raises(ValueError, match="no_such_module"):
        model.layer_id("backbone.no_such_module.weight")


@pytest.mark.parametrize("name", _one_per_constructor())
def test_weight_loader_and_layout_options_round_trip(name: str, tmp_path: Path) -> None:
    implied = IMPLIED.get(_family(name), {})
    source = _build(name, seed=0, options=implied)
    save_model_file(
        source, tmp_path / "source.pth", name=name, num_classes=NUM_CLASSES, width=WIDTH,
        class_names=["a", "b", "c"], options=implied,
    )  # fmt: skip
    loaded = _build(name, seed=1, pretrained=tmp_path / "source.pth")  # the family's loader
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    assert loaded.layout_options == implied
    assert set(loaded.layout_options) <= set(MODEL_OPTIONS[name])

    # no options given: those the pretrained file implied are recorded all the same
    save_model_file(
        loaded, tmp_path / "model.pth", name=name, num_classes=NUM_CLASSES, width=WIDTH,
        class_names=["a", "b", "c"],
    )  # fmt: skip
    rebuilt, info = load_model_file(tmp_path / "model.pth")
    assert info["arch"]["options"] == implied
    x = _images(name)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).logits, loaded(x).logits, rtol=0, atol=0)


class _NoLayerIds(Segmenter):
    head_prefixes = ("head.",)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return features


def test_a_family_outside_the_contract_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="abstract"):
        _NoLayerIds()  # type: ignore[abstract]
    plain = ModelEntry(lambda num_classes, width: nn.Conv2d(3, num_classes, 1), lambda: None)  # type: ignore[arg-type]
    monkeypatch.setitem(MODEL_REGISTRY, "plain_conv", plain)
    with pytest.raises(TypeError, match="'plain_conv' built a Conv2d, not a Segmenter"):
        build_model("plain_conv", NUM_CLASSES)
