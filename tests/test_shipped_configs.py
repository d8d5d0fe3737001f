"""The shipped configs load, keep the reference values, and name what they read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.config import PACKAGED_CONFIGS, ConfigError, load_config
from spcl.config_schema import DomainConfig
from spcl.stages.builders import domain_dataset
from spcl.stages.start_checks import padded_crop_warnings

ROOTS = ["data.source.root=/s", "data.target.root=/t", "data.target_val.root=/t"]
SHIPPED = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def test_the_four_configs_ship() -> None:
    assert set(SHIPPED) >= {
        "demo",
        "gta5_to_cityscapes",
        "synthia_to_cityscapes",
        "synscapes_to_cityscapes",
    }


ONLINE_SUFFIXES = ("_dlv2", "_mitb5", "_vitb14", "_vitl14")
OWN = ("demo", "folder_example")  # the synthetic pair's and the own-data example: no reference
SPCL_REFERENCE = [n for n in SHIPPED if n not in OWN and not n.endswith(ONLINE_SUFFIXES)]
ONLINE_REFERENCE = [n for n in SHIPPED if n.endswith(("_dlv2", "_mitb5"))]


@pytest.mark.parametrize("name", SPCL_REFERENCE)
def test_reference_configs_keep_the_reference_recipe(name: str) -> None:
    config = load_config(name, ROOTS)
    assert config.model.name == "deeplabv2_resnet101" and config.model.freeze_bn
    assert config.warmup.adversarial and config.warmup.lambda_adv == 0.001
    for optim in (config.warmup.optim, config.adapt.optim):
        assert (optim.lr, optim.head_lr_mult, optim.momentum) == (2.5e-4, 10.0, 0.9)
        assert (optim.max_iter, optim.stop_iter) == (62_500, 40_000)
    assert (config.adapt.momentum, config.adapt.temperature, config.adapt.lambda_cl) == (
        0.1,
        100.0,
        1.0,
    )
    assert config.adapt.absent_policy == "zero_fill" and config.pseudo_labels.cap == 0.9
    assert config.self_train.optim.lr == 5e-4 and config.self_train.crop == [512, 1024]
    assert config.data.target.size == [512, 1024] and config.data.target.kind == "cityscapes"


def test_synthia_uses_sixteen_classes_everywhere() -> None:
    config = load_config("synthia_to_cityscapes", ROOTS)
    assert config.data.num_classes == 16
    for domain in (config.data.source, config.data.target, config.data.target_val):
        assert domain.options == {"classes": 16}


def test_reference_configs_require_the_dataset_roots() -> None:
    with pytest.raises(ConfigError, match=r"data\.source\.root"):
        load_config("gta5_to_cityscapes")


def test_other_kinds_go_through_the_registry_with_their_options(tmp_path: Path) -> None:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "classes.yaml").write_text("names: [a, b]\nid_to_train: {10: 0, 20: 1}\n")
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "images/train/x.png")
    Image.fromarray(np.full((8, 16), 20, np.uint8)).save(tmp_path / "labels/train/x.png")
    domain = DomainConfig(kind="folder", root=str(tmp_path))
    sample = domain_dataset(domain, with_labels=True, train=False)[0]
    assert sample["label"].unique().tolist() == [1]
    with pytest.raises(KeyError, match="unknown dataset kind 'gtav'"):
        domain_dataset(DomainConfig(kind="gtav", root="/x"), with_labels=True, train=False)
    with pytest.raises(ValueError, match="unknown option"):
        bad = DomainConfig(kind="folder", root=str(tmp_path), options={"clases": 2})
        domain_dataset(bad, with_labels=True, train=False)


WEIGHTS = ["model.pretrained=/weights/mit_b5.pth"]  # the MiT configs require the ImageNet file


@pytest.mark.parametrize("name", ONLINE_REFERENCE)
def test_online_configs_keep_the_authors_recipe(name: str) -> None:
    config = load_config(name, [*ROOTS, *WEIGHTS])
    online = config.online
    assert config.run.stages == ["online", "evaluate"] and online.init == "pretrained"
    assert online.optim.optimizer == "adamw" and online.optim.lr == 6e-5
    assert (online.optim.warmup_iters, online.optim.max_iter, online.optim.batch_size) == (
        1500,
        40_000,
        2,
    )
    assert (online.teacher.alpha, online.pseudo.threshold) == (0.999, 0.968)
    hrda = "_hrda_" in name
    assert config.online.hrda.enabled == hrda
    if hrda:  # HRDA: 1024 crops of 2048x1024 Cityscapes, a 512 detail window
        assert online.crop == [1024, 1024] and config.online.hrda.detail_crop == [512, 512]
        assert config.data.target.size == [1024, 2048] == config.data.target_val.size
        assert (config.online.hrda.context_scale, config.online.hrda.detail_loss_weight) == (
            0.5,
            0.1,
        )
        assert online.masking.block_size == (64 if "_mic_" in name else 32)
    assert (online.pseudo.crop_top, online.pseudo.crop_bottom) == ((0, 0) if hrda else (15, 120))
    assert online.pseudo.margins == ([30, 240, 30, 30] if hrda else [])  # HRDA's PL crop v2
    assert online.scale_range == []  # mmseg Resize to a fixed scale, no ratio_range
    assert online.mix.enabled and online.ce_over_all_pixels
    assert online.source_crop_max_share == 0.75  # source RandomCrop cat_max_ratio
    # RCS crops: > 1500 px of the class (HRDA: > 6000 px of 4× larger crops)
    assert config.data.source.rcs_min_crop_ratio == (2.0 if hrda else 0.5)
    assert (
        config.data.source.sampling == "rare_class" and config.data.source.rcs_temperature == 0.01
    )
    assert online.masking.enabled == ("_mic_" in name)
    assert (online.contrast.source and online.contrast.target) == ("_sepico_" in name)
    assert online.pseudo.class_balanced_crop == ("_sepico_" in name)  # SePiCo's CBC
    if "_sepico_" in name:
        assert config.data.target.size == [640, 1280] and online.crop == [640, 640]
    assert (online.feature_distance.weight > 0) == ("_sepico_" not in name)
    if name.startswith("synthia"):
        assert config.data.num_classes == 16 and config.data.source.kind == "synthia"
        assert online.feature_distance.classes == [6, 7, 10, 11, 12, 13, 14, 15]

    if name.endswith("_mitb5"):
        assert config.model.name == "daformer_mit_b5" and config.model.width == 64
        assert (config.online.optim.norm_decay_mult, config.online.optim.embed_decay_mult) == (0, 0)
    else:
        assert config.model.options["dilations"] in ([6, 12], [6, 12, 18, 24])


@pytest.mark.parametrize("name", [n for n in SHIPPED if "_vfmuda_" in n])
def test_vfmuda_configs_fine_tune_the_vit_at_a_tenth(name: str) -> None:
    config = load_config(name, ROOTS)
    online, optim = config.online, config.online.optim
    assert config.model.name.startswith("dinov2_vit") and config.model.options["input_scale"] == 1.1
    assert (optim.backbone_lr_mult, optim.head_lr_mult, optim.lr) == (0.1, 1.0, 0.000141)
    assert online.teacher.ema_buffers and online.masking.enabled
    assert online.feature_distance.weight == 0.0 and config.data.source.rcs_temperature == 0.05
    assert online.mix.augment == "torchvision"  # random_aug_weak, then random_aug_uda


@pytest.mark.parametrize("name", [n for n in SHIPPED if "_vfm" not in n])
def test_the_other_configs_mix_with_dacs_augmentation(name: str) -> None:
    assert load_config(name, [*ROOTS, *WEIGHTS]).online.mix.augment == "dacs"


@pytest.mark.parametrize("name", [n for n in SHIPPED if "_vfmudapp_" in n])
def test_vfmudapp_configs_turn_on_every_vfmudapp_switch(name: str) -> None:
    config = load_config(name, ROOTS)
    online, optim = config.online, config.online.optim
    assert config.model.name.startswith("vfmudapp_vit") and not online.teacher.ema_buffers
    assert online.source_augment == "strong" and online.pseudo.flip_average
    assert (online.distill.weight_source, online.distill.weight_target) == (0.1, 0.1)
    assert (online.distill.model, online.distill.input_size) == ("dinov2_vitl14_reg", 406)
    assert online.distill.pretrained.endswith("dinov2_vitl14_reg4_pretrain.pth")
    assert (optim.lr_batch_scaling, optim.layer_decay, optim.backbone_lr_mult) == ("sqrt", 0.9, 0.1)
    assert optim.grad_accum == 4 and optim.batch_size == (
        4 if name == "gta5_to_cityscapes_vfmudapp_vitb14" else 2
    )
    assert optim.lr == (1e-5 if name.endswith("vitl14") else 5e-5)
    assert config.evaluate.slide == [1024, 1024, 512, 512] and online.crop == [1024, 1024]
    assert config.data.source.rcs_joint_tries == 20 and online.source_crop_max_share == 0.75
    assert (optim.warmup_mode, optim.warmup_iters, optim.warmup_ratio) == ("vfmuda", 1500, 1e-3)
    # the ignore margins of the whole image (3 %, 25 %, 3 %, 3 %), not rows of the crop
    assert (online.pseudo.crop_top, online.pseudo.crop_bottom) == (0, 0)
    assert online.pseudo.margins == [30, 256, 61, 61]
    assert online.scale_range == [0.9, 1.1]  # UDATransform: short side × U(0.9, 1.1)
    assert online.pad == "bottom_right"  # UDATransform: FV.pad(image, [0, 0, pad_w, pad_h])
    assert online.mix.augment == "torchvision"  # random_aug_weak, then random_aug_uda
    # the authors mask the crop resized to 1120 with 64-px blocks; spcl masks the 1024 crop with
    # blocks of the same count per side
    assert round(1024 / online.masking.block_size) == round(1120 / 64) == 18


@pytest.mark.parametrize("name", SHIPPED)
def test_no_shipped_config_pads_every_crop_of_a_stage(name: str) -> None:
    """Each stage's crop fits the config's image size at some scale the stage draws."""
    assert padded_crop_warnings(load_config(name, require_all=False)) == []
