"""Optimiser groups (named rules, layer decay), AdamW, and the poly schedule with warm-up."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spcl.config_schema import OptimConfig
from spcl.engine.optim import (
    WarmupPolyLR,
    build_optimizer,
    optimizer_from_groups,
    param_groups,
    poly_factor,
    poly_scheduler,
)
from spcl.models.build import build_model
from spcl.models.segmenter import Segmenter
from spcl.models.vit import DINOv2Encoder
from spcl.models.vit_seg import ViTSegmenter
from spcl.stages.builders import optimizer_and_schedule


def test_head_gets_ten_times_the_lr_and_frozen_params_are_left_out() -> None:
    backbone, head = nn.Linear(2, 2), nn.Linear(2, 2)
    backbone.bias.requires_grad_(False)
    opt = build_optimizer(backbone.parameters(), head.parameters(), lr=2.5e-4, head_lr_mult=10)
    assert [g["lr"] for g in opt.param_groups] == [2.5e-4, 2.5e-3]
    assert len(opt.param_groups[0]["params"]) == 1  # the frozen bias is not optimised
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(backbone.parameters(), head.parameters(), kind="lbfgs", lr=1.0)  # type: ignore[arg-type]


def test_poly_schedule_matches_the_formula_and_never_reaches_zero_before_max() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    schedule = poly_scheduler(opt, max_iter=100, power=0.9)
    seen = []
    for _ in range(60):  # stop_iter < max_iter, as the reference
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    expected = [(1 - i / 100) ** 0.9 for i in range(60)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[-1] > 0.4
    assert poly_factor(150, 100) == 0.0
    with pytest.raises(ValueError, match="max_iter"):
        poly_scheduler(opt, max_iter=0)


# --- named-parameter groups -----------------------------------------------------------------


def _tiny_vit() -> ViTSegmenter:
    torch.manual_seed(0)
    encoder = DINOv2Encoder(
        8, 2, 2, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True
    )
    return ViTSegmenter(encoder, 3)


def _lr_wd_by_name(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    where = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: where[id(p)] for n, p in model.named_parameters() if id(p) in where}


def _expected_vit_setting(name: str) -> tuple[float, float]:
    """lr 1e-3, wd 0.01, head × 10, backbone × 0.1, layer decay 0.5 over 2 blocks, norm and
    embedding decay × 0 — worked by hand per parameter name."""
    if name.startswith("decode_head."):
        return 1e-2, 0.01  # head norms (LayerNorm2d) keep their decay: the head rule wins
    part = name.split(".")
    if part[1] == "blocks":  # block i has layer id i + 1: lr 1e-4 · 0.5 ** (2 − (i + 1))
        lr = {"0": 5e-5, "1": 1e-4}[part[2]]
        return lr, 0.0 if part[3] in ("norm1", "norm2") else 0.01
    # stems (layer id 0): 1e-3 · 0.1 · 0.5 ** 2
    return 2.5e-5, 0.01 if part[1] == "patch_embed" else 0.0  # tokens, pos_embed, final norm: 0


def test_vit_groups_by_name() -> None:
    model = _tiny_vit()
    groups = param_groups(
        model,
        lr=1e-3,
        weight_decay=0.01,
        head_lr_mult=10,
        backbone_lr_mult=0.1,
        layer_decay=0.5,
        norm_decay_mult=0.0,
        embed_decay_mult=0.0,
    )
    got = _lr_wd_by_name(model, groups)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(got) == sorted(trainable) and "backbone.mask_token" not in got
    for name in trainable:
        lr, wd = _expected_vit_setting(name)
        assert got[name][0] == pytest.approx(lr, rel=1e-12), name
        assert got[name][1] == wd, name
    assert len(groups) == 7  # (1e-2, .01) and (2.5e-5 | 5e-5 | 1e-4) × (0, .01)


def test_layer_decay_multipliers() -> None:
    model = _tiny_vit()
    groups = param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.9)
    got = _lr_wd_by_name(model, groups)
    # lr × 0.9 ** (num_layers − layer_id) with num_layers 2: block 1 → 1, block 0 → 0.9, stems 0.81
    assert got["backbone.blocks.1.attn.qkv.weight"][0] == 1.0
    assert got["backbone.blocks.0.mlp.fc2.bias"][0] == pytest.approx(0.9)
    assert got["backbone.pos_embed"][0] == pytest.approx(0.81)
    assert got["backbone.norm.weight"][0] == pytest.approx(0.81)  # VFM-UDA: final norm in stems
    assert got["decode_head.out.weight"][0] == 10.0


def test_layer_decay_on_resnet_and_mit_goes_by_stage() -> None:
    """Every segmenter has layer ids (the contract): ResNet stem 0, layerN → N; MiT stage N → N."""
    resnet = build_model("deeplabv2_resnet18", 3, width=8)
    got = _lr_wd_by_name(resnet, param_groups(resnet, lr=1.0, weight_decay=0.0, layer_decay=0.5))
    assert got["backbone.conv1.weight"][0] == 0.5**4 and got["backbone.bn1.bias"][0] == 0.5**4
    assert got["backbone.layer1.0.conv1.weight"][0] == 0.5**3
    assert got["backbone.layer4.1.bn2.weight"][0] == 1.0
    assert got["classifier.conv2d_list.0.weight"][0] == 10.0
    mit = build_model("daformer_mit_b0", 3, width=8)
    got = _lr_wd_by_name(mit, param_groups(mit, lr=1.0, weight_decay=0.0, layer_decay=0.5))
    assert got["backbone.patch_embed1.proj.weight"][0] == 0.5**3
    assert got["backbone.block3.0.attn.q.weight"][0] == 0.5
    assert got["backbone.norm4.weight"][0] == 1.0
    assert got["decode_head.conv_seg.weight"][0] == 10.0


def test_a_model_outside_the_segmenter_contract_is_refused() -> None:
    with pytest.raises(TypeError, match=r"needs a Segmenter.*Linear"):
        param_groups(nn.Linear(2, 2), lr=1.0, weight_decay=0.0)


def test_norm_layers_are_found_by_type() -> None:
    resnet = build_model("deeplabv2_resnet18", 3, width=8)  # trainable BatchNorm (bn1, bn2, ...)
    groups = param_groups(resnet, lr=1.0, weight_decay=0.5, norm_decay_mult=0.0)
    got = _lr_wd_by_name(resnet, groups)
    assert got["backbone.bn1.weight"] == (1.0, 0.0) and got["backbone.layer2.0.bn2.bias"][1] == 0
    assert got["backbone.layer2.0.downsample.1.weight"][1] == 0.0  # a BatchNorm named "1"
    assert got["backbone.conv1.weight"] == (1.0, 0.5)
    assert got["classifier.conv2d_list.0.bias"] == (10.0, 0.5)


class _PosBlockNet(Segmenter):
    """A backbone with a PVT-style ``pos_block`` conv (DAFormer's custom key) and a head."""

    head_prefixes = ("head.",)

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({"pos_block": nn.Conv2d(2, 2, 3), "proj": nn.Conv2d(2, 2, 1)})
        self.head = nn.Conv2d(2, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone["proj"](self.backbone["pos_block"](x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def layer_id(self, name: str) -> int:
        return 0


def test_embedding_rule_matches_name_components() -> None:
    model = _PosBlockNet()
    got = _lr_wd_by_name(model, param_groups(model, lr=1.0, weight_decay=0.5, embed_decay_mult=0))
    assert got["backbone.pos_block.weight"] == (1.0, 0.0)
    assert got["backbone.pos_block.bias"] == (1.0, 0.0)
    assert got["backbone.proj.weight"] == (1.0, 0.5)
    assert got["head.weight"] == (10.0, 0.5)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_reference_settings_train_bit_identically(kind: str) -> None:
    """The named groups with every multiplier at 1 = the reference's two-group optimiser."""
    torch.manual_seed(0)
    old_model = build_model("deeplabv2_resnet18", 3, width=8)
    new_model = copy.deepcopy(old_model)
    cfg = OptimConfig(optimizer=kind, weight_decay=5e-4)  # the reference defaults otherwise
    old = build_optimizer(
        *old_model.param_groups(), kind=kind, lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    old_schedule = poly_scheduler(old, cfg.max_iter, cfg.power)
    new, new_schedule = optimizer_and_schedule(new_model, cfg)
    assert [[id(p) for p in g["params"]] for g in new.param_groups] == [
        [id(p) for p in group] for group in new_model.param_groups()
    ]
    x = torch.randn(2, 3, 33, 65)
    for _ in range(3):
        for model, opt, schedule in (
            (old_model, old, old_schedule),
            (new_model, new, new_schedule),
        ):
            opt.zero_grad()
            model(x).logits.square().mean().backward()
            opt.step()
            schedule.step()
    for (name, a), b in zip(
        old_model.state_dict().items(), new_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert [g["lr"] for g in old.param_groups] == [g["lr"] for g in new.param_groups]


def test_adamw_from_the_config() -> None:
    model = _tiny_vit()
    cfg = OptimConfig(
        optimizer="adamw", lr=6e-5, weight_decay=0.01, betas=[0.9, 0.98], warmup_iters=1500,
        power=1.0, max_iter=40_000, norm_decay_mult=0.0,
    )  # fmt: skip
    optimizer, schedule = optimizer_and_schedule(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(schedule, WarmupPolyLR)
    assert optimizer.defaults["betas"] == (0.9, 0.98)
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([6e-11, 6e-10])  # warm-up start: lr × 1e-6 (head × 10)
    with pytest.raises(ValueError, match="adamw"):
        optimizer_from_groups([{"params": [nn.Parameter(torch.zeros(1))]}], kind="rmsprop", lr=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no trainable"):
        optimizer_from_groups([{"params": []}], kind="adamw", lr=1.0)


# --- warm-up + poly (mmcv) ------------------------------------------------------------------


JUMP_AFTER = 1600  # stepped one by one through the warm-up, then only where a value is read


def _lr_trace(schedule_kwargs: dict, at: list[int], base: float = 6e-5) -> dict[int, float]:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "lr": base}], lr=base)
    schedule = poly_scheduler(opt, **schedule_kwargs)
    seen = {}
    for t in range(max(at) + 1):
        if t in at:
            seen[t] = opt.param_groups[0]["lr"]
        if t > JUMP_AFTER and t + 1 not in at:
            continue  # the schedule is a closed form of last_epoch: skip to the next point
        opt.step()
        schedule.last_epoch = t
        schedule.step()
    return seen


def test_daformer_warmup_poly_values() -> None:
    """poly10warm: lr 6e-5, T 40 000, power 1, linear warm-up 1500 from 1e-6, min_lr 0."""
    daformer = {"max_iter": 40_000, "power": 1.0, "warmup_iters": 1500, "warmup_ratio": 1e-6}
    seen = _lr_trace(daformer, [0, 750, 1499, 1500, 20_000, 40_000])
    assert seen[0] == pytest.approx(6e-11, rel=1e-9)  # 6e-5 · (1 − (1 − 0)(1 − 1e-6))
    assert seen[750] == pytest.approx(2.94375294375e-5, rel=1e-9)  # 6e-5 · 0.98125 · 0.5000005
    # t = 1499: 6e-5 · (1 − 1499/40000) · (1 − (1/1500)(1 − 1e-6))
    assert seen[1499] == pytest.approx(5.77515e-5 * (1 - (1 / 1500) * (1 - 1e-6)), rel=1e-9)
    assert seen[1500] == pytest.approx(5.775e-5, rel=1e-12)  # warm-up over: 6e-5 · 0.9625
    assert seen[20_000] == pytest.approx(3e-5, rel=1e-12)
    assert seen[40_000] == 0.0


def test_min_lr_quirk_and_resume() -> None:
    """poly10.py: min_lr 1e-4 above the base 6e-5, so the lr rises towards it."""
    seen = _lr_trace({"max_iter": 40_000, "power": 1.0, "min_lr": 1e-4}, [0, 20_000, 40_000])
    assert seen == pytest.approx({0: 6e-5, 20_000: 8e-5, 40_000: 1e-4}, rel=1e-12)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    schedule = poly_scheduler(opt, 100, 0.9, warmup_iters=10, warmup_ratio=0.1)
    for _ in range(5):
        opt.step()
        schedule.step()
    # t = 5: (1 − 5/100) ** 0.9 · (1 − (1 − 5/10)(1 − 0.1))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.95**0.9 * 0.55, rel=1e-12)
    again = poly_scheduler(torch.optim.SGD([param], lr=1.0), 100, 0.9, warmup_iters=10)
    again.load_state_dict(schedule.state_dict())
    assert again.get_last_lr() == schedule.get_last_lr() and again.last_epoch == 5
    for bad, match in (({"warmup_iters": -1}, "warmup_iters"), ({"min_lr": -1.0}, "min_lr"),
                       ({"warmup_iters": 5, "warmup_ratio": 0.0}, "warmup_ratio")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            poly_scheduler(opt, 100, **bad)
