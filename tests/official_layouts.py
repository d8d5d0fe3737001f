"""Weight files in the official layouts, written from the published architecture facts.

Keys and shapes come from the architectures as their authors publish them (torchvision's ResNets,
the DeepLab-v2 COCO initialisation, NVlabs' SegFormer ``mit_bX.pth``, the DINOv2 hub files with
and without registers), not from spcl's modules, so that a test loading them checks spcl against
the real layouts. Values are random but tame (activations of a deep net stay in range), so a few
training steps on them stay finite. Used by the layout tests and by the shipped-config rehearsal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

EXPANSION = 4  # bottleneck output channels ÷ planes
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # bottleneck ResNets (torchvision)
ASPP_RATES = (6, 12, 18, 24)  # DeepLab-v2's four ASPP branches
IMAGENET_CLASSES = 1000
COCO_CLASSES = 21  # DeepLab_resnet_pretrained_init's Scale.layer5 classifier

# SegFormer MiT: (channels, depths) per variant; heads 1,2,5,8 and reduction 8,4,2,1 in all of them
MIT_ARCH = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
MIT_SR_RATIOS = (8, 4, 2, 1)
MIT_KERNELS = (7, 3, 3, 3)
MIT_MLP = 4

# DINOv2: name → (embed dim, depth, FFN hidden, SwiGLU) of the published models
DINOV2_ARCH = {
    "vits14": (384, 12, 1536, False),
    "vitb14": (768, 12, 3072, False),
    "vitl14": (1024, 24, 4096, False),
    "vitg14": (1536, 40, 4096, True),  # (int(6144 · 2/3) + 7) // 8 · 8 = 4096, SwiGLU
}
DINOV2_POS_TOKENS = 1370  # 37 × 37 patches at 518 px + the class token
DINOV2_REGISTERS = 4


def resnet_shapes(width: int, blocks: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer shapes of a bottleneck ResNet under torchvision's names (no counters)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (width, 3, 7, 7)}
    bn = ("weight", "bias", "running_mean", "running_var")
    shapes |= {f"bn1.{b}": (width,) for b in bn}
    inplanes = width
    for layer, count in enumerate(blocks, start=1):
        planes = width * 2 ** (layer - 1)
        for j in range(count):
            pre = f"layer{layer}.{j}."
            cin = inplanes if j == 0 else planes * EXPANSION
            shapes[pre + "conv1.weight"] = (planes, cin, 1, 1)
            shapes[pre + "conv2.weight"] = (planes, planes, 3, 3)
            shapes[pre + "conv3.weight"] = (planes * EXPANSION, planes, 1, 1)
            for k, c in (("bn1", planes), ("bn2", planes), ("bn3", planes * EXPANSION)):
                shapes |= {f"{pre}{k}.{b}": (c,) for b in bn}
            if j == 0:
                shapes[pre + "downsample.0.weight"] = (planes * EXPANSION, inplanes, 1, 1)
                shapes |= {f"{pre}downsample.1.{b}": (planes * EXPANSION,) for b in bn}
        inplanes = planes * EXPANSION
    return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Tensor]:
    """Weights that keep a deep random network's activations in range."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("running_mean", "bias")):
            out[key] = torch.randn(shape, generator=gen) * 0.1
        elif len(shape) == 1:  # BN scale; small on the last BN of a block (tame residual growth)
            scale = 0.2 if ".bn3." in key or "downsample" in key else 1.0
            out[key] = (torch.rand(shape, generator=gen) * 0.5 + 0.5) * scale
        else:
            fan_in = int(np.prod(shape[1:]))
            out[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return out


def aspp_tensors(channels: int, classes: int, seed: int) -> dict[str, Tensor]:
    """DeepLab-v2's classifier: four dilated 3×3 convs with bias (``conv2d_list.i``)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(len(ASPP_RATES)):
        out[f"conv2d_list.{i}.weight"] = torch.randn(classes, channels, 3, 3, generator=gen) * 0.01
        out[f"conv2d_list.{i}.bias"] = torch.randn(classes, generator=gen) * 0.1
    return out


def coco_init_state(
    width: int = 64, blocks: tuple[int, ...] = RESNET_BLOCKS[101], classes: int = COCO_CLASSES
) -> dict[str, Tensor]:
    """The DeepLab_resnet_pretrained_init layout: ``Scale.*``, ``Scale.layer5`` = 21-class ASPP."""
    backbone = random_tensors(resnet_shapes(width, blocks), seed=1)
    head = aspp_tensors(width * 8 * EXPANSION, classes, seed=2)
    return {f"Scale.{k}": v for k, v in backbone.items()} | {
        f"Scale.layer5.{k}": v for k, v in head.items()
    }


def torchvision_resnet_state(depth: int = 101, seed: int = 0) -> dict[str, Tensor]:
    """torchvision's ``resnetD-*.pth``: the backbone and its 1000-class ``fc``."""
    state = random_tensors(resnet_shapes(64, RESNET_BLOCKS[depth]), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    state["fc.weight"] = torch.randn(IMAGENET_CLASSES, 512 * EXPANSION, generator=gen) * 0.01
    state["fc.bias"] = torch.zeros(IMAGENET_CLASSES)
    return state


def mit_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official ``mit_bX.pth``, without its ``head.*`` classifier."""
    dims, depths = MIT_ARCH[variant]
    shapes: dict[str, tuple[int, ...]] = {}
    previous = 3
    for stage, (c, depth) in enumerate(zip(dims, depths, strict=True), start=1):
        k, sr = MIT_KERNELS[stage - 1], MIT_SR_RATIOS[stage - 1]
        shapes[f"patch_embed{stage}.proj.weight"] = (c, previous, k, k)
        for name in (
            "patch_embed{}.proj.bias",
            "patch_embed{}.norm.weight",
            "patch_embed{}.norm.bias",
        ):
            shapes[name.format(stage)] = (c,)
        for j in range(depth):
            b = f"block{stage}.{j}."
            for norm in ("norm1", "norm2"):
                shapes[b + norm + ".weight"] = shapes[b + norm + ".bias"] = (c,)
            shapes[b + "attn.q.weight"], shapes[b + "attn.q.bias"] = (c, c), (c,)
            shapes[b + "attn.kv.weight"], shapes[b + "attn.kv.bias"] = (2 * c, c), (2 * c,)
            shapes[b + "attn.proj.weight"], shapes[b + "attn.proj.bias"] = (c, c), (c,)
            if sr > 1:
                shapes[b + "attn.sr.weight"], shapes[b + "attn.sr.bias"] = (c, c, sr, sr), (c,)
                shapes[b + "attn.norm.weight"] = shapes[b + "attn.norm.bias"] = (c,)
            hidden = MIT_MLP * c
            shapes[b + "mlp.fc1.weight"], shapes[b + "mlp.fc1.bias"] = (hidden, c), (hidden,)
            shapes[b + "mlp.dwconv.dwconv.weight"] = (hidden, 1, 3, 3)
            shapes[b + "mlp.dwconv.dwconv.bias"] = (hidden,)
            shapes[b + "mlp.fc2.weight"], shapes[b + "mlp.fc2.bias"] = (c, hidden), (c,)
        shapes[f"norm{stage}.weight"] = shapes[f"norm{stage}.bias"] = (c,)
        previous = c
    return shapes


def mit_state(variant: str, seed: int = 0) -> dict[str, Tensor]:
    """A ``mit_bX.pth`` in its official layout, ImageNet head included, with tame values."""
    shapes = mit_shapes(variant) | {"head.weight": (IMAGENET_CLASSES, MIT_ARCH[variant][0][-1])}
    state = random_tensors(shapes, seed)
    state["head.bias"] = torch.zeros(IMAGENET_CLASSES)
    return state


def dinov2_layout(variant: str, registers: bool) -> dict[str, tuple[int, ...]]:
    """Key → shape of ``dinov2_<variant>[_reg4]_pretrain.pth``."""
    d, depth, hidden, swiglu = DINOV2_ARCH[variant]
    layout: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, DINOV2_POS_TOKENS, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, 14, 14),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    if registers:
        layout["register_tokens"] = (1, DINOV2_REGISTERS, d)
    for n in range(depth):
        b = f"blocks.{n}."
        layout |= {
            b + "norm1.weight": (d,),
            b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d),
            b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d),
            b + "attn.proj.bias": (d,),
            b + "ls1.gamma": (d,),
            b + "norm2.weight": (d,),
            b + "norm2.bias": (d,),
            b + "ls2.gamma": (d,),
        }
        if swiglu:
            layout |= {
                b + "mlp.w12.weight": (2 * hidden, d),
                b + "mlp.w12.bias": (2 * hidden,),
                b + "mlp.w3.weight": (d, hidden),
                b + "mlp.w3.bias": (d,),
            }
        else:
            layout |= {
                b + "mlp.fc1.weight": (hidden, d),
                b + "mlp.fc1.bias": (hidden,),
                b + "mlp.fc2.weight": (d, hidden),
                b + "mlp.fc2.bias": (d,),
            }
    return layout


def dinov2_file_name(variant: str, registers: bool) -> str:
    """The hub file's name, e.g. ``dinov2_vitb14_reg4_pretrain.pth``."""
    return f"dinov2_{variant}{'_reg4' if registers else ''}_pretrain.pth"


def save_state(state: dict, path: Path) -> Path:
    """``torch.save`` into ``path`` (its folder made), as the official files were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
