"""Stage 7 (``07_online``), online adaptation: a student and its EMA teacher, on the one loop.

The recipe of DAFormer (Hoyer et al., CVPR 2022) with the ingredients of DACS, MIC and SePiCo,
each a switch of the ``online`` config section (docs/recipes.md, sections DAFormer, MIC, SePiCo):

- the student trains on source crops (CE) and on target crops labelled by the teacher;
- the teacher is the exponential moving average of the student, updated by an after-step hook of
  the loop (``α_t = min(1 − 1/(t+1), α)``), and is part of every checkpoint; under torchrun it is
  copied from the student after DDP has given every rank rank 0's weights, and the ranks'
  teachers are checked to be identical before every checkpoint (:class:`RanksDivergedError`);
- pseudo-labels come from the teacher on the clean target image, weighted by DAFormer's
  confidence weight (the share of pixels above τ);
- cross-domain ClassMix pastes half of the source classes onto the target image (image, label and
  weight mixed), then colour jitter and blur (DACS's strong augmentation);
- masked image consistency (MIC): the student also sees a block-masked target image and learns
  the teacher's pseudo-labels;
- the ImageNet feature distance on thing classes, when the model starts from ImageNet weights;
- SPCL's pixel-to-prototype contrast on source ground truth and target pseudo-labels, with
  prototypes from teacher features (in SePiCo's projection space when the model has one:
  ``model.options.projection_dim``).

The stage seeds the global RNGs (Dropout, DropPath) from the run seed and its rank when it starts,
so its draws do not depend on the stages that ran before it in the same process: a run killed
before the stage's first checkpoint starts it again exactly. The step itself is
:func:`spcl.stages.online_step.online_step`. Writes ``student.pth``,
``teacher.pth`` and ``model.pth``, the one of them evaluated and handed on (``online.hand_on``:
the student, as DAFormer evaluates it, or the teacher).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from spcl.base import IMAGENET_MEAN, IMAGENET_STD, ConfigError, atomic_duplicate
from spcl.context import RunContext, seed_everything
from spcl.engine.distributed import (
    RanksDivergedError,
    all_reduce_mean_buffers_,
    module_difference_across_ranks,
)
from spcl.engine.loop import AfterStep, LoopConfig, checkpoint_due, train_loop
from spcl.method.ema import disable_teacher_dropout, init_teacher, update_teacher
from spcl.method.prototypes import PrototypeBank
from spcl.run_dir import MODEL_FILE, STUDENT_FILE, TEACHER_FILE
from spcl.stages.builders import (
    build_segmenter,
    domain_dataset,
    load_weights,
    loop_config,
    optimizer_and_schedule,
    save_weights,
    source_stream,
    train_loader,
    wrap_ddp,
)
from spcl.stages.collapse import PSEUDO_LABEL_SHARE, CollapseAlert
from spcl.stages.online_step import OnlineParts, SeededGenerator, online_step, online_weights
from spcl.stages.validation import validation_hooks

__all__ = ["run"]

SOURCE_STREAM, TARGET_STREAM = 31, 32  # loader seed salts
AUGMENT_SALT = 33  # seed salt of the mixing/masking/augmentation generator
RNG_SALT = 34  # seed salt of the global RNGs (Dropout, DropPath) when the stage starts


def _teacher(student: nn.Module) -> nn.Module:
    """The EMA teacher: a copy of the student (its BatchNorm statistics included), frozen."""
    teacher = copy.deepcopy(student)
    init_teacher(teacher, student)
    return teacher


def _models(ctx: RunContext, warmup: Path | None) -> tuple[nn.Module, nn.Module | None]:
    """Student and, for the feature distance, the frozen ImageNet model."""
    cfg, model_cfg = ctx.config.online, ctx.config.model
    if cfg.init == "warmup":
        if warmup is None:
            raise ConfigError("online.init=warmup needs the warmup stage in run.stages")
        student = load_weights(build_segmenter(ctx, freeze_bn=cfg.freeze_bn), warmup)
    else:
        student = build_segmenter(ctx, freeze_bn=cfg.freeze_bn)
    imnet = None
    if model_cfg.pretrained and cfg.feature_distance.weight > 0:
        imnet = build_segmenter(ctx, freeze_bn=cfg.freeze_bn).eval()  # the ImageNet init
        imnet.requires_grad_(False)
    return student, imnet


def _teachers_agree(ctx: RunContext, teacher: nn.Module, loop: LoopConfig) -> AfterStep:
    """After-step hook: under torchrun, every rank's teacher equals rank 0's at each checkpoint.

    It runs before the loop writes the checkpoint, so a divergence stops the run with the last
    checkpoint holding teachers that still agreed.
    """

    def check(done: int) -> None:
        if ctx.world <= 1 or not checkpoint_due(loop, done):
            return
        spread = module_difference_across_ranks(teacher)
        ctx.tracker.info(
            f"[online] iteration {done}: teachers of {ctx.world} ranks: max difference {spread:g}"
        )
        if spread != 0.0:
            raise RanksDivergedError(
                f"[online] iteration {done}: the EMA teachers of the {ctx.world} ranks differ "
                f"(max difference {spread:g}); this iteration's checkpoint was not written, "
                f"{loop.checkpoint} holds the last state they agreed on"
            )

    return check


def _check_class_balanced_crop(crop: list[int], target_size: list[int]) -> None:
    """The class-balanced crop needs a crop size and target images of one size that holds it."""
    if not crop:
        raise ConfigError("online.pseudo.class_balanced_crop needs online.crop (e.g. [640, 640])")
    if not target_size:
        raise ConfigError(
            "online.pseudo.class_balanced_crop needs data.target.size (whole target images are "
            "batched before the crop; SePiCo: [640, 1280])"
        )
    if crop[0] > target_size[0] or crop[1] > target_size[1]:
        raise ConfigError(
            f"online.crop {crop} is larger than data.target.size {target_size}: the "
            f"class-balanced crop cuts it from the whole target image"
        )


def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Adapt online from the ImageNet init or the warm-up (``inputs["warmup"]`` with
    ``online.init: warmup``); returns ``model.pth``."""
    cfg, data = ctx.config.online, ctx.config.data
    warmup = inputs.get("warmup")
    seed_everything(ctx.config.run.seed * 1000 + RNG_SALT + ctx.rank)
    student, imnet = _models(ctx, warmup)
    net = wrap_ddp(ctx, student)  # every rank's student now holds rank 0's weights
    teacher = _teacher(student)  # so every rank's teacher starts from them too
    optimizer, schedule = optimizer_and_schedule(student, cfg.optim)
    augment = {"hflip": cfg.hflip, "crop": cfg.crop}  # no photometric change: the step's own
    source = source_stream(  # DAFormer limits the top class's share of source crops only
        ctx,
        cfg.optim.batch_size,
        SOURCE_STREAM,
        sampling=cfg.source_sampling,
        crop_max_share=cfg.source_crop_max_share,
        **augment,
    )
    if cfg.pseudo.class_balanced_crop:  # SePiCo: the step crops the whole target images
        _check_class_balanced_crop(cfg.crop, data.target.size)
        augment = {**augment, "crop": []}
    target = train_loader(
        ctx,
        domain_dataset(data.target, with_labels=False, train=True, **augment),
        cfg.optim.batch_size,
        TARGET_STREAM,
    )
    bank = None
    if cfg.contrast.source or cfg.contrast.target:
        dim = student.feature_channels  # the projection's size when the model has one
        bank = PrototypeBank(data.num_classes, dim, cfg.contrast.momentum, "keep").to(ctx.device)
    generator = SeededGenerator(ctx.config.run.seed * 1000 + AUGMENT_SALT + ctx.rank)
    alert = CollapseAlert(ctx, out_dir, "online", PSEUDO_LABEL_SHARE, cfg.optim.stop_iter)
    parts = OnlineParts(
        cfg=cfg,
        num_classes=data.num_classes,
        student=net,
        teacher=teacher,
        device=ctx.device,
        generator=generator,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        imnet=imnet,
        bank=bank,
        schedule=schedule,
        watch=alert.observe,
    )

    def ema_step(done: int) -> None:  # the loop's after-step hook
        update_teacher(
            teacher, student, done, cfg.teacher.alpha, include_buffers=cfg.teacher.ema_buffers
        )
        all_reduce_mean_buffers_(teacher)  # BN statistics of each rank's target batches

    state: dict = {
        "model": student,
        "teacher": teacher,
        "optimizer": optimizer,
        "schedule": schedule,
        "source": source,
        "target": target,
    }
    state |= {"bank": bank} if bank is not None else {}
    handed_on = teacher if cfg.hand_on == "teacher" else student
    student.train()
    teacher.train()  # DAFormer: the teacher keeps train-mode BatchNorm, its dropout is off
    disable_teacher_dropout(teacher)
    loop = loop_config(ctx, cfg.optim, out_dir, "online")
    train_loop(
        lambda: online_step(parts, next(source), next(target)),
        weights=online_weights(cfg, feature_distance=imnet is not None),
        state=state,
        optimizers=[optimizer],
        schedulers=[schedule],
        config=loop,
        tracker=ctx.tracker,
        after_step=[
            ema_step,
            _teachers_agree(ctx, teacher, loop),
            *validation_hooks(ctx, handed_on, "online", alert.validated),
            alert.after_step,  # the class-collapse alert (no draw, no forward pass)
        ],
        rank_state={"generator": generator},  # seeded with the rank: each rank's own draws
    )
    save_weights(ctx, teacher, out_dir / TEACHER_FILE)
    save_weights(ctx, student, out_dir / STUDENT_FILE)
    if ctx.is_main:  # the same bytes as the file handed on: a second name, not a third write
        atomic_duplicate(out_dir / f"{cfg.hand_on}.pth", out_dir / MODEL_FILE)
    return out_dir / MODEL_FILE
