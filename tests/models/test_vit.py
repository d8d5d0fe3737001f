"""DINOv2 encoder: official key layout and counts, strict loading, numerics, pos-embed resizing.

The expected layouts are written here from the architecture facts (docs/recipes.md, "DINOv2
variants and checkpoint keys", read from facebookresearch/dinov2 ``vision_transformer.py`` and
``layers/*.py``), not from the model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from official_layouts import DINOV2_ARCH as OFFICIAL
from official_layouts import DINOV2_REGISTERS as REGISTERS
from official_layouts import dinov2_layout as official_layout
from spcl.base import CheckpointError, ConfigError
from spcl.models.build import build_model, load_dinov2_weights
from spcl.models.vit import DINOv2Encoder, resize_pos_embed

# parameter counts, millions: computed from the layout (docs/recipes.md, "DINOv2 variants and
# checkpoint keys") and the README's
COMPUTED_M = {"vits14": 22.1, "vitb14": 86.6, "vitl14": 304.4, "vitg14": 1136.5}
README_M = {"vits14": 21, "vitb14": 86, "vitl14": 300, "vitg14": 1100}
README_TOLERANCE = 0.06  # the README rounds (ViT-S: 22.06 M listed as 21 M)


def _meta_encoder(variant: str, registers: bool) -> DINOv2Encoder:
    name = f"dinov2_{variant}{'_reg' if registers else ''}"
    with torch.device("meta"):
        return build_model(name, 19).backbone


@pytest.mark.parametrize("registers", [False, True])
@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_state_dict_equals_the_official_layout(variant: str, registers: bool) -> None:
    expected = official_layout(variant, registers)
    own = {k: tuple(v.shape) for k, v in _meta_encoder(variant, registers).state_dict().items()}
    assert sorted(own) == sorted(expected)
    assert own == expected


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_parameter_counts(variant: str) -> None:
    encoder = _meta_encoder(variant, registers=False)
    count = sum(p.numel() for p in encoder.parameters())
    assert count == sum(math.prod(s) for s in official_layout(variant, False).values())
    assert round(count / 1e6, 1) == COMPUTED_M[variant]  # the computed figure of docs/recipes.md
    assert abs(count / 1e6 - README_M[variant]) / README_M[variant] < README_TOLERANCE
    with_registers = sum(p.numel() for p in _meta_encoder(variant, registers=True).parameters())
    assert with_registers - count == REGISTERS * OFFICIAL[variant][0]


# --- official files ---------------------------------------------------------------------------


def _official_file(tmp: Path, variant: str, registers: bool, seed: int) -> tuple[Path, dict]:
    generator = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(shape, generator=generator)
        for k, shape in official_layout(variant, registers).items()
    }
    path = tmp / f"dinov2_{variant}{'_reg4' if registers else ''}_pretrain.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def vits14_files(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple[Path, dict]]:
    tmp = tmp_path_factory.mktemp("dinov2")
    return {reg: _official_file(tmp, "vits14", reg, seed=int(reg)) for reg in (False, True)}


@pytest.mark.parametrize("registers", [False, True])
def test_official_file_loads_strictly(vits14_files: dict, registers: bool) -> None:
    path, state = vits14_files[registers]
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    model = build_model(name, 19, pretrained=path)
    loaded = model.backbone.state_dict()
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_mismatched_files_name_the_keys(vits14_files: dict, tmp_path: Path) -> None:
    reg_path, _ = vits14_files[True]
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): register_tokens"):
        build_model("dinov2_vits14", 19, pretrained=reg_path)
    # the checks run before anything is copied, so meta-device encoders suffice below
    plain_path, state = vits14_files[False]
    with pytest.raises(CheckpointError, match=r"missing \(1\): register_tokens"):
        load_dinov2_weights(_meta_encoder("vits14", registers=True), plain_path)
    with pytest.raises(CheckpointError, match=r"embed dim 768.*embed dim 384.*shape mismatch"):
        load_dinov2_weights(_meta_encoder("vitb14", registers=False), plain_path)
    partial = {k: v for k, v in state.items() if k != "blocks.3.ls2.gamma"}
    torch.save({"model": {f"module.{k}": v for k, v in partial.items()}}, tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match=r"missing \(1\): blocks\.3\.ls2\.gamma"):
        load_dinov2_weights(_meta_encoder("vits14", registers=False), tmp_path / "p.pth")
    with pytest.raises(ConfigError, match="width 64 only"):
        build_model("dinov2_vits14", 19, width=8, pretrained=plain_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_dinov2_weights(_meta_encoder("vits14", registers=False), tmp_path / "nope.pth")


# --- numerics against a forward written from the facts -----------------------------------------


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * weight + bias


def _naive_block(x: torch.Tensor, s: dict, b: str, heads: int, swiglu: bool) -> torch.Tensor:
    d = x.shape[-1]
    hd = d // heads
    h = _layer_norm(x, s[b + "norm1.weight"], s[b + "norm1.bias"])
    qkv = h @ s[b + "attn.qkv.weight"].T + s[b + "attn.qkv.bias"]
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]  # rows [Q; K; V]
    out = torch.zeros_like(q)
    for head in range(heads):
        cols = slice(head * hd, (head + 1) * hd)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(-1, -2) / hd**0.5, -1)
        out[..., cols] = weights @ v[..., cols]
    x = x + (out @ s[b + "attn.proj.weight"].T + s[b + "attn.proj.bias"]) * s[b + "ls1.gamma"]
    h = _layer_norm(x, s[b + "norm2.weight"], s[b + "norm2.bias"])
    if swiglu:
        x12 = h @ s[b + "mlp.w12.weight"].T + s[b + "mlp.w12.bias"]
        half = x12.shape[-1] // 2
        hidden = F.silu(x12[..., :half]) * x12[..., half:]
        ffn = hidden @ s[b + "mlp.w3.weight"].T + s[b + "mlp.w3.bias"]
    else:
        hidden = h @ s[b + "mlp.fc1.weight"].T + s[b + "mlp.fc1.bias"]
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))  # exact GELU
        ffn = hidden @ s[b + "mlp.fc2.weight"].T + s[b + "mlp.fc2.bias"]
    return x + ffn * s[b + "ls2.gamma"]


@pytest.mark.parametrize(("ffn", "registers"), [("mlp", 0), ("mlp", 4), ("swiglu", 0)])
def test_forward_matches_a_naive_transformer(ffn: str, registers: int) -> None:
    torch.manual_seed(0)
    heads, depth = 2, 2
    encoder = DINOv2Encoder(
        8, depth, heads, ffn=ffn, num_register_tokens=registers,
        interpolate_offset=0.0 if registers else 0.1, interpolate_antialias=bool(registers),
    ).double()  # fmt: skip
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_()
    s = encoder.state_dict()
    x = torch.randn(2, 3, 28, 42, dtype=torch.float64)  # a 2 × 3 patch grid
    # tokens: patch conv as a matmul over flattened 14 × 14 patches, row-major over the grid
    patches = x.unfold(2, 14, 14).unfold(3, 14, 14)  # (B, 3, 2, 3, 14, 14)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 3 * 14 * 14)
    tokens = patches @ s["patch_embed.proj.weight"].reshape(8, -1).T + s["patch_embed.proj.bias"]
    tokens = torch.cat([s["cls_token"].expand(2, 1, 8), tokens], 1)
    # resized in float32, as DINOv2 does (pos_embed.float()), then back to the tokens' dtype
    grid = s["pos_embed"][:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2).float()
    if registers:
        pos = F.interpolate(grid, size=(2, 3), mode="bicubic", antialias=True)
    else:
        pos = F.interpolate(grid, scale_factor=(2.1 / 37, 3.1 / 37), mode="bicubic")
    pos = pos.double().permute(0, 2, 3, 1).reshape(1, 6, 8)
    pos = torch.cat([s["pos_embed"][:, :1], pos], 1)
    tokens = tokens + pos
    if registers:  # after the position add, between the class token and the patches
        tokens = torch.cat(
            [tokens[:, :1], s["register_tokens"].expand(2, -1, -1), tokens[:, 1:]], 1
        )
    for n in range(depth):
        tokens = _naive_block(tokens, s, f"blocks.{n}.", heads, ffn == "swiglu")
    normed = _layer_norm(tokens, s["norm.weight"], s["norm.bias"])[:, 1 + registers :]
    expected = normed.transpose(1, 2).reshape(2, 8, 2, 3)
    torch.testing.assert_close(encoder(x), expected, rtol=1e-9, atol=1e-9)


# --- position embeddings ----------------------------------------------------------------------


def _cubic_weight(t: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (PyTorch's bicubic without antialias: a = -0.75)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def _cubic_resample(values: torch.Tensor, out: int, scale: float) -> torch.Tensor:
    """1-D bicubic along dim 0: source = (i + 0.5) / scale − 0.5, border indices clamped."""
    n = values.shape[0]
    rows = []
    for i in range(out):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        acc = torch.zeros_like(values[0])
        for k in range(base - 1, base + 3):
            acc = acc + _cubic_weight(src - k) * values[min(max(k, 0), n - 1)]
        rows.append(acc)
    return torch.stack(rows)


def test_stored_grid_is_returned_unchanged() -> None:
    for offset, antialias in ((0.1, False), (0.0, True)):
        encoder = DINOv2Encoder(8, 1, 2, interpolate_offset=offset, interpolate_antialias=antialias)
        assert encoder.interpolate_pos_encoding((37, 37)) is encoder.pos_embed
        tokens = encoder.prepare_tokens(torch.zeros(1, 3, 518, 518))
        patch_bias = encoder.patch_embed.proj.bias
        torch.testing.assert_close(tokens[0, 1:] - patch_bias, encoder.pos_embed[0, 1:])


def test_offset_rule_is_bicubic_with_the_offset_scale() -> None:
    torch.manual_seed(0)
    grid = torch.randn(37, 37, 2, dtype=torch.float64)
    h, w = 20, 52  # a down- and an up-sampled side
    got = resize_pos_embed(grid.reshape(1, 37 * 37, 2), (h, w), offset=0.1, antialias=False)
    rows = _cubic_resample(grid, h, (h + 0.1) / 37)  # (h, 37, 2)
    expected = _cubic_resample(rows.transpose(0, 1), w, (w + 0.1) / 37).transpose(0, 1)
    assert got.shape == (1, h * w, 2)
    # float32 arithmetic inside (DINOv2 resizes pos_embed.float()): agreement to ~1e-5; a wrong
    # rule (no offset, another kernel) is off by ~1e-2 or more, as the size rule shows
    torch.testing.assert_close(got.reshape(h, w, 2), expected, rtol=0, atol=1e-4)
    no_offset = resize_pos_embed(grid.reshape(1, 37 * 37, 2), (h, w), offset=0.0, antialias=False)
    assert (no_offset.reshape(h, w, 2) - expected).abs().max() > 1e-2


def test_register_rule_uses_the_size_and_antialias() -> None:
    ramp = torch.arange(37.0, dtype=torch.float64).view(37, 1, 1).expand(37, 37, 1)
    flat = ramp.reshape(1, 37 * 37, 1)
    up = resize_pos_embed(flat, (74, 50), offset=0.0, antialias=True).reshape(74, 50)
    # upsampling: source row (i + 0.5)·37/74 − 0.5 = i/2 − 0.25, and the antialiased (a = −0.5)
    # cubic reproduces a ramp away from the borders; columns stay constant
    # (rows 5 … 68: source rows 2.25 … 33.75, two rows clear of the border)
    rows = torch.arange(5, 69, dtype=torch.float64)
    torch.testing.assert_close(up[5:69, 7], rows / 2 - 0.25, rtol=0, atol=1e-4)
    torch.testing.assert_close(up, up[:, :1].expand(74, 50), rtol=0, atol=1e-4)
    down = resize_pos_embed(flat, (10, 10), offset=0.0, antialias=True).reshape(10, 10)
    # downsampling averages over a window symmetric about each source row: mirror rows sum to 36
    mirror = down[:, 0] + down.flip(0)[:, 0]
    torch.testing.assert_close(mirror, torch.full((10,), 36.0).double(), rtol=0, atol=1e-4)
    with pytest.raises(AssertionError):  # antialias changes a downsampled ramp
        plain = resize_pos_embed(flat, (10, 10), offset=0.0, antialias=False).reshape(10, 10)
        torch.testing.assert_close(plain, down)
