"""VFM-UDA++'s parts of the online step (spcl.stages.online_vfm, spcl.method.feature_distill,
spcl.method.vfm_augment): the distillation loss by hand, each switch changes what it should and
nothing while off, the √(batch) lr, and two online steps with every VFM-UDA++ switch on."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from official_layouts import dinov2_layout, random_tensors, save_state
from spcl.base import ConfigError, MissingFileError
from spcl.config import load_config
from spcl.config_schema import OnlineConfig, OnlineDistillConfig, OptimConfig
from spcl.context import open_run
from spcl.data.synthetic import generate_pair
from spcl.engine.loop import step_terms
from spcl.engine.optim import poly_scheduler
from spcl.method.feature_distill import DistillHead, FrozenDINOv2, distill_loss
from spcl.method.vfm_augment import STRONG_SOURCE, TorchvisionAugment, torchvision_augment
from spcl.models.segmenter import SegOutput
from spcl.models.vit import dinov2_encoder
from spcl.stages import online
from spcl.stages.builders import scaled_optim
from spcl.stages.online_step import online_weights
from spcl.stages.online_vfm import distill_head, frozen_dinov2, source_input, teacher_logits
from tiny import TINY

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_the_distillation_loss_is_the_authors_mix_of_smooth_l1_and_cosine() -> None:
    s = torch.tensor([[[[0.0]], [[2.0]]], [[[1.0]], [[1.0]]]])  # (2, 2, 1, 1)
    t = torch.tensor([[[[0.5]], [[0.0]]], [[[1.0]], [[-1.0]]]])
    # image 0: SmoothL1 per channel 0.5·0.5² = 0.125 and |2| − 0.5 = 1.5 → mean 0.8125;
    # cos((0, 2), (0.5, 0)) = 0 → 1 − cos = 1.  image 1: SmoothL1 0 and 2 − 0.5 = 1.5 → 0.75;
    # cos((1, 1), (1, −1)) = 0 → 1.
    by_hand = ((0.1 * 0.8125 + 0.9 * 1.0) + (0.1 * 0.75 + 0.9 * 1.0)) / 2
    assert distill_loss(s, t).item() == pytest.approx(by_hand, abs=1e-7)
    assert distill_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ"):
        distill_loss(s, t[:, :1])


def test_the_head_projects_d_to_4d_to_the_frozen_width_and_resizes() -> None:
    head = DistillHead(6, 10)
    assert (head.expand.in_channels, head.expand.out_channels) == (6, 24)
    assert (head.project.in_channels, head.project.out_channels) == (24, 10)
    assert head.expand.kernel_size == head.project.kernel_size == (1, 1)
    assert head(torch.randn(2, 6, 3, 5), (29, 29)).shape == (2, 10, 29, 29)


def test_the_frozen_model_sees_its_own_input_size_and_never_trains() -> None:
    frozen = FrozenDINOv2(dinov2_encoder("vits14", registers=True, width=4), 406)
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    out = frozen(torch.randn(1, 3, 64, 96))  # any crop: resized to 406 × 406 → 29 × 29 tokens
    assert out.shape == (1, 24, 29, 29)


def test_augmentation_recipes_draw_per_image_and_reproduce() -> None:
    images = torch.randn(3, 3, 16, 16)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = torchvision_augment(images, gen(), STRONG_SOURCE, MEAN, STD)
    b = torchvision_augment(images, gen(), STRONG_SOURCE, MEAN, STD)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, images)
    nothing = TorchvisionAugment(0.8, 0.8, 0.8, 0.4, jitter_p=0.0)
    torch.testing.assert_close(torchvision_augment(images, gen(), nothing, MEAN, STD), images)
    gray = TorchvisionAugment(0.0, 0.0, 0.0, 0.0, jitter_p=0.0, grayscale_p=1.0)
    pixels = torchvision_augment(images.clamp(-1, 1), gen(), gray, MEAN, STD)
    pixels = pixels * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])  # one grey value per pixel
    brightness = TorchvisionAugment(0.5, 0.0, 0.0, 0.0, jitter_p=1.0)
    mid = torch.full((1, 3, 4, 4), 0.5)
    norm = (mid - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    out = torchvision_augment(norm, gen(), brightness, MEAN, STD)
    pixels = out * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    factor = pixels[0, 0, 0, 0] / 0.5  # multiplicative brightness in [0.5, 1.5], one per image
    assert 0.5 <= factor <= 1.5
    torch.testing.assert_close(pixels, torch.full_like(pixels, 0.5 * float(factor)))


def test_the_vfmuda_warm_up_replaces_the_decayed_lr_then_decays_linearly() -> None:
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    schedule = poly_scheduler(
        optimizer, 10, 1.0, warmup_iters=3, warmup_ratio=0.1, warmup_mode="vfmuda"
    )
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # WarmupAndLinearScheduler: linspace(0.1, 1, 3) = 0.1, 0.55, 1.0, then linspace(1, 0, 11)[t]
    by_hand = [2 * f for f in (0.1, 0.55, 1.0, 1 - 3 / 10, 1 - 4 / 10, 1 - 5 / 10)]
    assert lrs == pytest.approx(by_hand)


def test_the_lr_scales_with_the_square_root_of_the_total_batch() -> None:
    optim = OptimConfig(lr=5e-5, batch_size=2, grad_accum=4, lr_batch_scaling="sqrt")
    assert scaled_optim(optim, 1).lr == pytest.approx(5e-5 * math.sqrt(8))
    assert scaled_optim(optim, 4).lr == pytest.approx(5e-5 * math.sqrt(32))
    plain = OptimConfig(lr=5e-5, batch_size=2, grad_accum=4)
    assert scaled_optim(plain, 4) is plain


class _Asymmetric(torch.nn.Module):
    """Logits that depend on the column: the mirror image gives other labels."""

    def forward(self, x: torch.Tensor) -> SegOutput:
        ramp = torch.linspace(-2, 2, x.shape[-1]).view(1, 1, 1, -1)
        logits = torch.cat([x[:, :1] * ramp, x[:, 1:2] + ramp, -x[:, 2:3]], dim=1)
        return SegOutput(logits, logits)


def test_flip_averaged_labels_are_the_mean_softmax_of_the_image_and_its_mirror() -> None:
    teacher, x = _Asymmetric(), torch.randn(2, 3, 4, 6)
    parts = SimpleNamespace(teacher=teacher, cfg=OnlineConfig())
    torch.testing.assert_close(teacher_logits(parts, x, False), teacher(x).logits)
    parts.cfg.pseudo.flip_average = True
    mean = (teacher(x).logits.softmax(1) + teacher(x.flip(-1)).logits.flip(-1).softmax(1)) / 2
    torch.testing.assert_close(teacher_logits(parts, x, False).softmax(1), mean)


def test_the_source_augment_switch_and_the_defaults_change_nothing() -> None:
    cfg = OnlineConfig()
    images = torch.randn(2, 3, 8, 8)
    parts = SimpleNamespace(cfg=cfg, generator=SimpleNamespace(generator=torch.Generator()))
    parts.image_mean, parts.image_std = MEAN, STD
    state = parts.generator.generator.get_state()
    assert source_input(parts, images) is images
    assert torch.equal(parts.generator.generator.get_state(), state)  # no draw while off
    assert online_weights(cfg, feature_distance=False) == {"seg": 1.0, "mix": 1.0}
    cfg.source_augment = "strong"
    assert not torch.equal(source_input(parts, images), images)


def test_config_checks_name_the_keys() -> None:
    with pytest.raises(ConfigError, match=r"online\.distill\.pretrained"):
        load_config("demo", ["online.distill.weight_source=0.1"], require_all=False)
    with pytest.raises(ConfigError, match="source_augment"):
        load_config(
            "demo",
            ["online.contrast.augment_source=true", "online.source_augment=strong"],
            require_all=False,
        )


def test_a_model_without_levels_or_a_missing_frozen_file_is_named(tmp_path: Path) -> None:
    frozen = FrozenDINOv2(dinov2_encoder("vits14", registers=True, width=4), 28)
    with pytest.raises(ConfigError, match="feature levels"):
        distill_head(torch.nn.Linear(2, 2), frozen)
    missing = tmp_path / "dinov2_vitl14_reg4_pretrain.pth"
    cfg = OnlineDistillConfig(weight_source=0.1, pretrained=str(missing))
    with pytest.raises(MissingFileError, match=str(missing)):
        frozen_dinov2(cfg, torch.device("cpu"))


VFMUDAPP = (  # every VFM-UDA++ switch, at the tiny size
    "model.name=vfmudapp_vits14",
    "model.freeze_bn=false",
    "online.init=pretrained",
    "online.crop=[32,32]",
    "online.optim.batch_size=2",
    "online.optim.grad_accum=2",
    "online.optim.lr_batch_scaling=sqrt",
    "online.optim.layer_decay=0.9",
    "online.optim.backbone_lr_mult=0.1",
    "online.optim.warmup_mode=vfmuda",
    "online.optim.head_lr_mult=1.0",
    "online.source_augment=strong",
    "online.pseudo.flip_average=true",
    "online.masking.enabled=true",
    "online.masking.block_size=4",
    "online.distill.weight_source=0.1",
    "online.distill.weight_target=0.1",
    "online.distill.model=dinov2_vits14_reg",
    "online.distill.input_size=28",
    "online.teacher.ema_buffers=false",
)


@pytest.mark.slow
def test_two_online_steps_with_every_vfmudapp_switch(tmp_path: Path) -> None:
    data = generate_pair(
        tmp_path / "data", seed=4, n_train=4, n_val=2, size=(32, 64), preview=False, progress=False
    )
    frozen = save_state(
        random_tensors(dinov2_layout("vits14", registers=True), seed=0),
        tmp_path / "dinov2_vits14_reg4_pretrain.pth",
    )
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    overrides = [*TINY, *roots, *VFMUDAPP, f"online.distill.pretrained={frozen}"]
    config = load_config("demo", [*overrides, f"run.out={tmp_path / 'run'}"])
    with open_run(config) as ctx:
        stage = online.setup(ctx, tmp_path / "07_online", {})
        assert stage.weights == {"seg": 1.0, "mix": 1.0, "mask": 1.0, "fd_src": 0.1, "fd_tgt": 0.1}
        head = stage.state["distill_head"]
        before = {k: v.clone() for k, v in head.state_dict().items()}
        optimizer = stage.optimizers[0]
        assert optimizer.param_groups[-1]["params"] == list(head.parameters())
        scaled = config.online.optim.lr * math.sqrt(2 * 2)  # batch 2 × grad_accum 2, one rank
        assert optimizer.param_groups[-1]["initial_lr"] == pytest.approx(scaled)
        for iteration in range(2):
            optimizer.zero_grad()
            terms = step_terms(stage.step(iteration))
            assert set(terms) == set(stage.weights)
            total = sum(stage.weights[k] * terms[k] for k in stage.weights)
            assert torch.isfinite(total)
            total.backward()
            optimizer.step()
        assert any(not torch.equal(before[k], v) for k, v in head.state_dict().items())
        frozen_model = stage.parts.distill
        assert not any(p.requires_grad for p in frozen_model.parameters())
        teacher = stage.state["teacher"]
        assert all(not p.requires_grad for p in teacher.parameters())
