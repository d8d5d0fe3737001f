"""VFM-UDA++'s segmenter (spcl.models.vfmudapp_seg, vit_adapter): sizes, counts, lr layers, init.

The parameter counts are checked against a count written from the authors' module definitions
(tue-mps/vfm-uda-plusplus ``models/vit_adapter/{dinov2_vit_adapter,adapter_modules,
ms_deform_attn}.py``, ``models/multiscale_vfm/basic_pyramid_head.py`` and the DINOv2 block), read
and summed by hand below, not by running their code.
"""

from __future__ import annotations

import pytest
import torch

from spcl.engine.optim import param_groups
from spcl.models.build import build_model
from spcl.models.vit_adapter import interaction_groups

NUM_CLASSES = 19


def _deform_attn(d: int, levels: int, heads: int, points: int = 4, ratio: float = 0.5) -> int:
    """MSDeformAttn: sampling_offsets, attention_weights, value_proj, output_proj (with bias)."""
    offsets = heads * levels * points * 2
    weights = heads * levels * points
    value = int(d * ratio)
    return (d + 1) * offsets + (d + 1) * weights + (d + 1) * value + (value + 1) * d


def _extractor(d: int, heads: int) -> int:
    hidden = int(d * 0.25)  # ConvFFN(hidden = d · cffn_ratio)
    ffn = (d + 1) * hidden + hidden * 9 + hidden + (hidden + 1) * d  # fc1, depthwise 3×3, fc2
    return 2 * 2 * d + _deform_attn(d, 1, heads) + ffn + 2 * d  # query/feat norms, ffn_norm


def _injector(d: int, heads: int) -> int:
    return 2 * 2 * d + _deform_attn(d, 3, heads) + d  # two norms, attention, gamma


def _spm(d: int, c: int = 64) -> int:
    convs = 3 * c * 9 + 2 * c * c * 9 + c * 2 * c * 9 + 2 * c * 4 * c * 9 + 4 * c * 4 * c * 9
    norms = 2 * (3 * c + 2 * c + 4 * c + 4 * c)
    projections = (c + 1) * d + (2 * c + 1) * d + 2 * (4 * c + 1) * d  # fc1 … fc4
    return convs + norms + projections


def _authors_adapter(d: int) -> int:
    heads = d // 64  # DinoV2ViTAdapter: num_heads=embed_dim // 64
    interactions = 4 * (_injector(d, heads) + _extractor(d, heads)) + 2 * _extractor(d, heads)
    up = d * d * 4 + d  # ConvTranspose2d(D, D, 2, 2)
    return 3 * d + _spm(d) + interactions + up + 4 * 2 * d  # level_embed, …, norm1-4


def _authors_vit(d: int, depth: int) -> int:
    block = 2 * d + (d + 1) * 3 * d + (d + 1) * d + d + 2 * d + (d + 1) * 4 * d + (4 * d + 1) * d
    return depth * (block + d) + d + 1370 * d + 3 * 14 * 14 * d + d  # + cls, pos, patch embed


def _authors_head(d: int, classes: int) -> int:
    w = [d, d // 2, d // 4, d // 8]
    ups = sum(w[k - 1] * w[k] * 4 + w[k] for k in (1, 2, 3))
    reduces = sum((d + 1) * w[k] for k in (1, 2, 3))
    smooths = sum(w[k] * w[k] * 9 + w[k] for k in (1, 2, 3)) + w[3] * w[3] * 9 + w[3]
    return ups + reduces + smooths + sum(2 * w[k] for k in (1, 2, 3)) + w[3] * classes


@pytest.mark.parametrize(("variant", "d", "depth"), [("vitb14", 768, 12), ("vitl14", 1024, 24)])
def test_parameter_counts_match_the_authors_module_definitions(
    variant: str, d: int, depth: int
) -> None:
    with torch.device("meta"):
        model = build_model(f"vfmudapp_{variant}", NUM_CLASSES)

    def count(prefix: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))

    unused = count("backbone.norm.") + count("backbone.mask_token")  # not in the authors' encoder
    assert count("adapter.") == _authors_adapter(d)
    assert count("decode_head.") == _authors_head(d, NUM_CLASSES)
    assert count("backbone.") - unused == _authors_vit(d, depth)
    expected = {"vitb14": 104_153_216, "vitl14": 334_523_456}[variant]  # docs/backbones.md
    assert count("") - unused == expected


def test_interaction_groups_are_the_authors() -> None:
    assert interaction_groups(12) == [(0, 2), (3, 5), (6, 8), (9, 11)]
    assert interaction_groups(24) == [(0, 5), (6, 11), (12, 17), (18, 23)]
    with pytest.raises(ValueError, match="at least 4 blocks"):
        interaction_groups(3)


def _tiny(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vfmudapp_vits14", 3, width=4, options=options)


def test_inputs_are_resized_to_multiples_of_224_as_the_authors_1024_to_1120() -> None:
    model = _tiny()
    assert model.fit_to_adapter(torch.zeros(1, 3, 1024, 1024)).shape[-2:] == (1120, 1120)
    assert model.fit_to_adapter(torch.zeros(1, 3, 512, 1024)).shape[-2:] == (448, 1120)
    assert model.fit_to_adapter(torch.zeros(1, 3, 64, 96)).shape[-2:] == (224, 224)
    same = torch.zeros(1, 3, 224, 448)
    assert _tiny(input_scale=1.0).fit_to_adapter(same) is same
    with torch.no_grad():
        out = model(torch.randn(1, 3, 200, 240))
    assert out.logits.shape == (1, 3, 56, 56)  # stride 4 of the resized 224 × 224


def test_untrained_adapter_leaves_the_vit_tokens_unchanged() -> None:
    """The injectors' gamma starts at 0: the ViT sees its own tokens (the authors' init)."""
    model = _tiny().eval()
    x = torch.randn(1, 3, 224, 224)
    seen: list[torch.Tensor] = []
    handle = model.backbone.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model.forward_levels(x)
        adapted = seen[-1]
        plain = model.backbone.prepare_tokens(x)
        for block in model.backbone.blocks:
            plain = block(plain)
    handle.remove()
    torch.testing.assert_close(adapted, plain)
    gammas = [i.injector.gamma for i in model.adapter.interactions]
    assert all(torch.count_nonzero(g) == 0 for g in gammas)


def test_layer_decay_reaches_the_vit_blocks_and_leaves_adapter_and_head_at_full_lr() -> None:
    model = _tiny()
    groups = param_groups(
        model, lr=1.0, weight_decay=0.01, head_lr_mult=1.0, backbone_lr_mult=0.1, layer_decay=0.9
    )
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    depth = len(model.backbone.blocks)
    assert lr_of[id(named["adapter.spm.fc1.weight"])] == 1.0
    assert lr_of[id(named["decode_head.out.weight"])] == 1.0
    assert lr_of[id(named[f"backbone.blocks.{depth - 1}.attn.qkv.weight"])] == pytest.approx(0.1)
    assert lr_of[id(named["backbone.blocks.0.attn.qkv.weight"])] == pytest.approx(
        0.1 * 0.9 ** (depth - 1)
    )
    assert lr_of[id(named["backbone.pos_embed"])] == pytest.approx(0.1 * 0.9**depth)
    assert id(named["backbone.norm.weight"]) not in lr_of  # unused by the adapter: frozen


def test_widths_the_head_cannot_split_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        build_model("vfmudapp_vits14", 3, width=2)  # D = 12
