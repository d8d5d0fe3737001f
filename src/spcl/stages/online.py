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
- VFM-UDA++'s feature distillation to a frozen DINOv2, strong source augmentation and
  flip-averaged pseudo-labels (:mod:`spcl.stages.online_vfm`);
- SPCL's pixel-to-prototype contrast on source ground truth and target pseudo-labels, with
  prototypes from teacher features (in SePiCo's projection space when the model has one:
  ``model.options.projection_dim``), or SePiCo's ProtoCL, DistCL and BankCL against cumulative
  class statistics, all-reduced across ranks and checked identical before every checkpoint
  (:mod:`spcl.stages.online_contrast`).

The stage seeds the global RNGs (Dropout, DropPath) from the run seed and its rank when it starts,
so its draws do not depend on the stages that ran before it in the same process: a run killed
before the stage's first checkpoint starts it again exactly. The step itself is
:func:`spcl.stages.online_step.online_step`; :func:`setup` builds it and its parts and
:func:`spcl.stages.training.train` runs it. Writes ``student.pth``,
``teacher.pth`` and ``model.pth``, the one of them evaluated and handed on (``online.hand_on``:
the student, as DAFormer evaluates it, or the teacher).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from spcl.base import IMAGENET_MEAN, IMAGENET_STD, ConfigError
from spcl.config_schema import OnlineConfig
from spcl.context import RunContext, seed_everything
from spcl.data.loaders import InfiniteLoader
from spcl.engine.distributed import all_reduce_mean_buffers_
from spcl.engine.loop import AfterStep, Stateful, Terms, step_terms
from spcl.method.ema import disable_teacher_dropout, init_teacher, update_teacher
from spcl.method.prototypes import PrototypeBank
from spcl.method.sepico import ClassStatistics
from spcl.models.hrda import ContextView, DetailCropStudent, HRDASegmenter
from spcl.run_dir import STUDENT_FILE, TEACHER_FILE
from spcl.stages.builders import (
    build_segmenter,
    domain_dataset,
    load_weights,
    loop_config,
    optimizer_and_schedule,
    source_stream,
    train_loader,
    wrap_ddp,
)
from spcl.stages.collapse import PSEUDO_LABEL_SHARE, CollapseAlert
from spcl.stages.online_step import (
    Batch,
    OnlineParts,
    SeededGenerator,
    online_step,
    online_weights,
)
from spcl.stages.online_vfm import DistillStudent, distill_head, frozen_dinov2
from spcl.stages.target_labels import with_target_labels
from spcl.stages.training import RankAgreement, TrainingSetup, local_backward, train

__all__ = ["run", "setup"]

SOURCE_STREAM, TARGET_STREAM = 31, 32  # loader seed salts
AUGMENT_SALT = 33  # seed salt of the mixing/masking/augmentation generator
RNG_SALT = 34  # seed salt of the global RNGs (Dropout, DropPath) when the stage starts
HANDED_ON = {"student": STUDENT_FILE, "teacher": TEACHER_FILE}  # online.hand_on → its file
SOURCE_TERMS = ("seg", "fd")  # what online.source_only trains on (the step returns only them)


def _teacher(student: nn.Module) -> nn.Module:
    """The EMA teacher: a copy of the student (its BatchNorm statistics included), frozen."""
    teacher = copy.deepcopy(student)
    init_teacher(teacher, student)
    return teacher


def _models(ctx: RunContext, warmup: Path | None) -> tuple[nn.Module, nn.Module | None]:
    """Student (inside HRDA's two-scale model with ``online.hrda``) and, for the feature
    distance, the frozen ImageNet model (under HRDA run on the context view)."""
    cfg, model_cfg = ctx.config.online, ctx.config.model
    if cfg.init == "warmup" and warmup is None:
        raise ConfigError("online.init=warmup needs the warmup stage in run.stages")
    student = build_segmenter(ctx, freeze_bn=cfg.freeze_bn, hrda=cfg.hrda)
    if cfg.init == "warmup" and warmup is not None:
        single = student.segmenter if isinstance(student, HRDASegmenter) else student
        load_weights(single, warmup)  # the warm-up trained one scale: HRDA's attention is new
    imnet: nn.Module | None = None
    if model_cfg.pretrained and cfg.feature_distance.weight > 0:
        imnet = build_segmenter(ctx, freeze_bn=cfg.freeze_bn).eval()  # the ImageNet init
        imnet.requires_grad_(False)
        if cfg.hrda.enabled:  # HRDA: FD on the context view's features
            imnet = ContextView(imnet, cfg.hrda.context_scale)
    return student, imnet


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


def _geometry(cfg: OnlineConfig) -> dict[str, Any]:
    """The stage's geometric augmentation of its training images (flip, scale, crop, pad)."""
    return {"hflip": cfg.hflip, "crop": cfg.crop, "scale_range": cfg.scale_range, "pad": cfg.pad}


def _streams(ctx: RunContext, cfg: OnlineConfig) -> tuple[InfiniteLoader, InfiniteLoader]:
    """The source stream (labelled crops) and the target stream (unlabelled)."""
    augment = _geometry(cfg)  # no photometric change here: the step's own
    source = source_stream(  # DAFormer limits the top class's share of source crops only
        ctx,
        cfg.optim.batch_size,
        SOURCE_STREAM,
        sampling=cfg.source_sampling,
        crop_max_share=cfg.source_crop_max_share,
        **augment,
    )
    target_domain = ctx.config.data.target
    if cfg.pseudo.class_balanced_crop:  # SePiCo: the step crops the whole target images
        _check_class_balanced_crop(cfg.crop, target_domain.size)
        augment = {**augment, "crop": []}
    target_data = domain_dataset(target_domain, with_labels=False, train=True, **augment)
    if cfg.pseudo.margins:  # HRDA's PL crop v2: margins of the whole image, cut with the crop
        target_data.pseudo_margins = (tuple(cfg.pseudo.margins), tuple(target_domain.size))
    target = train_loader(ctx, target_data, cfg.optim.batch_size, TARGET_STREAM)
    return source, target


def _step(
    parts: OnlineParts, source: Iterator[Batch], target: Iterator[Batch], iteration: int
) -> Terms | Iterator[Terms]:
    """One online iteration's terms: the passes one by one (``online.backward: per_pass``, one
    process), else all of them in one mapping."""
    passes = online_step(
        parts, iteration, next(source), {} if parts.cfg.source_only else next(target)
    )
    return passes if parts.per_pass else step_terms(passes)


def _training_view(net: nn.Module, student: nn.Module, generator: SeededGenerator) -> Any:
    """What the step calls as the student: ``net`` itself, or under HRDA ``net`` with a detail
    window drawn per call from the step's generator (:class:`DetailCropStudent`)."""
    if isinstance(student, HRDASegmenter):
        return DetailCropStudent(net, student.settings, generator.generator)
    return net


def _ema_hook(cfg: OnlineConfig, teacher: nn.Module, student: nn.Module) -> AfterStep:
    """The loop's after-step hook that moves the teacher toward the student."""

    def ema_step(done: int) -> None:
        update_teacher(
            teacher, student, done, cfg.teacher.alpha, include_buffers=cfg.teacher.ema_buffers
        )
        all_reduce_mean_buffers_(teacher)  # BN statistics of each rank's target batches

    return ema_step


def _contrast_state(
    cfg: OnlineConfig, num_classes: int, dim: int
) -> tuple[PrototypeBank | None, ClassStatistics | None]:
    """The contrast's class statistics: SPCL's EMA bank or SePiCo's cumulative statistics (the
    features' ``dim`` is the projection's size when the model has one); none without contrast."""
    contrast = cfg.contrast
    if not (contrast.source or contrast.target):
        return None, None
    if contrast.statistics == "cumulative":
        memory = contrast.memory_length if contrast.loss == "bank" else 0
        return None, ClassStatistics(num_classes, dim, memory)
    return PrototypeBank(num_classes, dim, contrast.momentum, "keep"), None


def setup(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> TrainingSetup:
    """Student and EMA teacher from the ImageNet init or the warm-up (``inputs["warmup"]`` with
    ``online.init: warmup``), the two streams, the prototype bank when contrast is on and the
    step's generator; the teachers checked on every rank at each checkpoint."""
    cfg, data = ctx.config.online, ctx.config.data
    seed_everything(ctx.config.run.seed * 1000 + RNG_SALT + ctx.rank)
    student, imnet = _models(ctx, inputs.get("warmup"))
    distill = head = None
    if cfg.distill.weight_source > 0 or cfg.distill.weight_target > 0:  # VFM-UDA++
        distill = frozen_dinov2(cfg.distill, ctx.device)
        head = distill_head(student, distill).to(ctx.device)
    # every rank's student (and distillation head) now holds rank 0's weights
    net = wrap_ddp(ctx, student if head is None else DistillStudent(student, head))
    teacher = _teacher(student)  # so every rank's teacher starts from them too
    extra = [head] if head is not None else []
    optimizer, schedule = optimizer_and_schedule(student, cfg.optim, world=ctx.world, extra=extra)
    source, target = _streams(ctx, cfg)
    bank, statistics = _contrast_state(cfg, data.num_classes, student.feature_channels)
    generator = SeededGenerator(ctx.config.run.seed * 1000 + AUGMENT_SALT + ctx.rank)
    alert = CollapseAlert(ctx, out_dir, "online", PSEUDO_LABEL_SHARE, cfg.optim.stop_iter)
    parts = OnlineParts(
        cfg=cfg,
        num_classes=data.num_classes,
        student=_training_view(net, student, generator),
        teacher=teacher,
        device=ctx.device,
        generator=generator,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        imnet=imnet,
        distill=distill,
        bank=bank.to(ctx.device) if bank is not None else None,
        statistics=statistics.to(ctx.device) if statistics is not None else None,
        watch=alert.observe,
        per_pass=cfg.backward == "per_pass",
    )
    state: dict[str, Stateful] = {
        "model": student,
        "teacher": teacher,
        "optimizer": optimizer,
        "schedule": schedule,
        "source": source,
        "target": target,
    }
    state |= {"bank": bank} if bank is not None else {}
    state |= {"distill_head": head} if head is not None else {}
    state |= {"statistics": statistics} if statistics is not None else {}
    student.train()
    teacher.train()  # DAFormer: the teacher keeps train-mode BatchNorm, its dropout is off
    disable_teacher_dropout(teacher)
    weights = online_weights(cfg, feature_distance=imnet is not None)
    if cfg.source_only:  # no target batch is drawn, no target term weighed
        weights = {k: w for k, w in weights.items() if k in SOURCE_TERMS}
    stage = TrainingSetup(
        step=partial(_step, parts, source, target),
        weights=weights,
        state=state,
        optimizers=[optimizer],
        schedulers=[schedule],
        loop=loop_config(ctx, cfg.optim, out_dir, "online"),
        outputs={TEACHER_FILE: teacher, STUDENT_FILE: student},
        hand_on=HANDED_ON[cfg.hand_on],
        hooks=[_ema_hook(cfg, teacher, student)],
        watchers=[alert.after_step],  # the class-collapse alert (no draw, no forward pass)
        on_scores=alert.validated,
        rank_state={"generator": generator},  # seeded with the rank: each rank's own draws
        agree=[
            RankAgreement("teachers", "EMA teachers", teacher),
            *(
                [RankAgreement("class statistics", "class statistics", statistics)]
                if statistics is not None
                else []
            ),
            *(
                [RankAgreement("distillation heads", "distillation heads", head)]
                if head is not None
                else []
            ),
        ],
        parts=parts,
    )
    stage = with_target_labels(ctx, stage, net, **_geometry(cfg))
    if parts.per_pass and ctx.world > 1:
        ctx.tracker.info(
            f"[online] each pass backpropagated on its own (online.backward=per_pass), the "
            f"gradients averaged over {ctx.world} ranks once per iteration"
        )
        return local_backward(stage, net)
    return stage


def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Adapt online from the ImageNet init or the warm-up; returns ``model.pth``."""
    return train(ctx, out_dir, setup(ctx, out_dir, inputs))
