"""The online adaptation step (stage ``online``): every loss term of one DAFormer-style iteration.

Per iteration (docs/recipes.md: "DAFormer training step", "MIC masking step", "SePiCo step"),
with S the student, T its EMA teacher:

1. ``seg``: S on the source crop, CE against its labels.
2. ``fd``: the ImageNet feature distance on thing-class pixels (only with an ImageNet init).
3. T on the clean target crop (no gradient): pseudo-labels ŷ and their weight W (DAFormer's
   share of confident pixels, or per pixel, or 1), zeroed in the PL-crop rows (and, with
   ``online.pseudo.margins``, where the crop holds the whole image's margins: HRDA's v2). With
   SePiCo's class-balanced crop (``online.pseudo.class_balanced_crop``) T labels the whole
   target image, the crop goes where those labels are most varied, and T labels the crop again.
4. ``mix``: ClassMix of source onto target (image, label, weight), strong augmentation, S's
   weighted CE; without mixing (``online.mix.enabled=false``) ``tgt``: S's weighted CE on the
   strongly augmented target crop against ŷ.
5. ``mask`` (MIC): S on the colour-augmented, block-masked target crop against ŷ with W.
6. ``fd_src``/``fd_tgt`` (VFM-UDA++, ``online.distill``): S's last feature level, projected,
   against a frozen DINOv2 on each batch; with ``online.source_augment`` S sees its source batch
   augmented, with ``online.pseudo.flip_average`` T labels the mean of the image and its mirror
   (:mod:`spcl.stages.online_vfm`).
7. ``cl_src``/``cl_tgt``: pixel-to-prototype contrast (SPCL's loss, or SePiCo's ProtoCL, DistCL,
   BankCL) of S's features (or their projection) on source ground truth and on target
   pseudo-labels (W > 0), against class statistics kept from T's features on the source crop;
   zero before ``online.contrast.start_iter`` (:mod:`spcl.stages.online_contrast`). With
   ``online.contrast.augment_source`` S sees the source crop strongly augmented (SePiCo).

Under HRDA (``online.hrda``, docs/recipes.md "HRDA multi-resolution training") each student call
draws a detail window and its CE is HRDA's fused + detail loss; the teacher labels the whole crop
with overlapping detail windows; mixing and masking act on the whole crop.

The loop gives the step its iteration (0-based), weighs the terms (:func:`online_weights`), steps
the optimiser, then updates T (the stage's after-step hook). With ``online.backward: per_pass`` the
step hands the loop each pass's terms as soon as the pass is computed (1–2, 4, 5, each of 6, 7;
the source pass waits for 7 when the source contrast needs its features), and the loop
backpropagates them before the next pass, as the authors' separate backward calls do: the
activations of one pass are held at a time instead of all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from spcl.config_schema import OnlineConfig
from spcl.method.class_balanced_crop import class_balanced_corners, crop_at
from spcl.method.feature_distance import thing_feature_distance
from spcl.method.hrda import hrda_loss
from spcl.method.losses import upsample_logits
from spcl.method.masking import block_mask
from spcl.method.mixing import class_mix_masks, mix_batch
from spcl.method.photometric import strong_augment
from spcl.method.prototypes import PrototypeBank
from spcl.method.pseudo_weight import crop_pseudo_weight, teacher_pseudo_labels
from spcl.method.sepico import ClassStatistics
from spcl.method.vfm_augment import WEAK_SOURCE, torchvision_augment, uda_augment_recipe
from spcl.method.weighted_ce import pixel_weighted_cross_entropy
from spcl.models.hrda import HRDAOutput
from spcl.stages.online_contrast import contrast_terms
from spcl.stages.online_vfm import distill_terms, source_input, teacher_logits

__all__ = ["Batch", "OnlineParts", "SeededGenerator", "online_step", "online_weights"]

Batch = dict[str, Tensor]


class SeededGenerator:
    """A CPU ``torch.Generator`` for mixing, masking and augmentation draws, checkpointable."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["state"])


@dataclass
class OnlineParts:
    """What the online step works with."""

    cfg: OnlineConfig
    num_classes: int
    student: nn.Module | Callable[[Tensor], HRDAOutput]  # DDP-wrapped under torchrun; with
    # HRDA a DetailCropStudent (spcl.models.hrda) that draws each call's detail window
    teacher: nn.Module  # EMA of the student, train-mode BatchNorm, no gradient
    device: torch.device
    generator: SeededGenerator
    image_mean: Sequence[float]  # the input normalisation, undone for colour jitter
    image_std: Sequence[float]
    imnet: nn.Module | None = None  # frozen ImageNet model (feature distance)
    bank: PrototypeBank | None = None  # class prototypes from teacher features (contrast)
    statistics: ClassStatistics | None = None  # SePiCo's cumulative class statistics (contrast
    # with statistics: cumulative; then bank is None)
    distill: nn.Module | None = None  # the frozen DINOv2 of VFM-UDA++'s feature distillation
    watch: Callable[[Tensor, Tensor], None] | None = None  # given ŷ and W of each step (the
    # class-collapse alert counts them; spcl.stages.collapse)
    per_pass: bool = False  # yield each pass's terms for its own backward (online.backward:
    # per_pass): one pass's activations held at a time


MMSEG_ALIGN_CORNERS = False  # DAFormer/MIC/SePiCo resize logits with align_corners=False


def _ce(parts: OnlineParts, logits: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
    """Pixel-weighted CE at label size, DAFormer's reduction unless switched off."""
    up = upsample_logits(logits, labels.shape[-2:], align_corners=MMSEG_ALIGN_CORNERS)
    if weight is None and parts.cfg.source_temperature != 1.0:
        up = up / parts.cfg.source_temperature
    reduction = "all_pixels" if parts.cfg.ce_over_all_pixels else "valid_pixels"
    return pixel_weighted_cross_entropy(up, labels, weight, reduction=reduction)


def _out_ce(parts: OnlineParts, out: object, labels: Tensor, weight: Tensor | None) -> Tensor:
    """:func:`_ce` of a student output; HRDA's fused + detail CE when it has a detail view."""
    if isinstance(out, HRDAOutput) and out.detail is not None and out.box is not None:
        ce = partial(_ce, parts)
        return hrda_loss(ce, out.logits, out.detail, out.box, labels, weight, out.detail_weight)
    return _ce(parts, out.logits, labels, weight)  # type: ignore[attr-defined]


def _augment(parts: OnlineParts, images: Tensor) -> Tensor:
    """The strong augmentation (colour jitter, blur) of normalised images: DACS's, or VFM-UDA's
    torchvision one (``online.mix.augment``)."""
    mix = parts.cfg.mix
    if mix.augment == "torchvision":
        recipe = uda_augment_recipe(mix.color_jitter, mix.color_jitter_p, mix.blur)
        generator = parts.generator.generator
        return torchvision_augment(images, generator, recipe, parts.image_mean, parts.image_std)
    return strong_augment(
        images,
        parts.generator.generator,
        parts.image_mean,
        parts.image_std,
        jitter_strength=mix.color_jitter,
        jitter_skip_probability=1.0 - mix.color_jitter_p,
        blur=mix.blur,
    )


@torch.no_grad()
def _pseudo_labels(
    parts: OnlineParts, tgt_images: Tensor, *, pl_crop: bool = True
) -> tuple[Tensor, Tensor]:
    """The teacher's pseudo-labels ŷ and their weights W on the clean target batch (W zeroed in
    the PL-crop rows unless ``pl_crop`` is False)."""
    cfg = parts.cfg.pseudo
    logits = teacher_logits(parts, tgt_images, MMSEG_ALIGN_CORNERS)
    mode = "batch_quality" if cfg.weight == "none" else cfg.weight
    pseudo = teacher_pseudo_labels(logits, cfg.threshold, weight_mode=mode)
    weight = torch.ones_like(pseudo.weight) if cfg.weight == "none" else pseudo.weight
    if not pl_crop:
        return pseudo.labels, weight
    return pseudo.labels, crop_pseudo_weight(weight, cfg.crop_top, cfg.crop_bottom)


@torch.no_grad()
def _class_balanced_target(parts: OnlineParts, tgt_images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SePiCo's CBC: the whole target images cut where the teacher's labels are most varied,
    with ŷ and W of the crops (the teacher labels the crops again with ``regenerate``)."""
    cfg = parts.cfg
    labels, weight = _pseudo_labels(parts, tgt_images, pl_crop=False)
    corners = class_balanced_corners(labels, cfg.crop, parts.generator.generator)
    images = crop_at(tgt_images, corners, cfg.crop)
    if cfg.pseudo.regenerate:
        return (images, *_pseudo_labels(parts, images))
    cut = crop_at(weight, corners, cfg.crop)
    kept = crop_pseudo_weight(cut, cfg.pseudo.crop_top, cfg.pseudo.crop_bottom)
    return images, crop_at(labels, corners, cfg.crop), kept


def online_step(
    parts: OnlineParts, iteration: int, src: Batch, tgt: Batch
) -> Iterator[dict[str, Tensor]]:
    """The loss terms of iteration ``iteration`` (0-based; the function the stage binds): one
    mapping per student pass with ``parts.per_pass`` (the loop backpropagates each before the
    next pass is computed), all of them in one mapping without."""
    held: dict[str, Tensor] = {}
    for terms, role in _passes(parts, iteration, src, tgt):
        if parts.per_pass and role == "own":
            yield terms
            continue
        held |= terms  # kept passes wait for the last, whose terms use their graphs
    if held:
        yield held


Role = Literal["own", "keep", "last"]  # how a pass's terms are backpropagated per pass: alone,
# kept for the last pass (whose terms use its graph), or the last, with every kept pass


def _passes(
    parts: OnlineParts, iteration: int, src: Batch, tgt: Batch
) -> Iterator[tuple[dict[str, Tensor], Role]]:
    """The step's passes in the authors' order, each with its :data:`Role`."""
    cfg, dev = parts.cfg, parts.device
    contrast = parts.bank is not None or parts.statistics is not None
    src_images = src["image"].to(dev, non_blocking=True)
    src_labels = src["label"].to(dev, non_blocking=True)
    src_in = _augment(parts, src_images) if cfg.contrast.augment_source else src_images
    src_out = parts.student(source_input(parts, src_in))
    terms = {"seg": _out_ce(parts, src_out, src_labels, None)}
    if parts.imnet is not None:
        with torch.no_grad():
            imnet_features = parts.imnet(src_images).features
        terms["fd"] = thing_feature_distance(
            src_out.features,
            imnet_features,
            src_labels,
            parts.num_classes,
            cfg.feature_distance.classes,
            min_ratio=cfg.feature_distance.scale_min_ratio,
        )
    src_features = src_out.features if contrast and cfg.contrast.source else None
    del src_out
    yield terms, ("keep" if src_features is not None else "own")  # for the source contrast
    if cfg.source_only:  # the recipe's own source-only baseline: no target batch, no target term
        return
    tgt_images = tgt["image"].to(dev, non_blocking=True)
    if cfg.pseudo.class_balanced_crop:  # whole target images in, SePiCo's crops out
        tgt_images, pseudo, weight = _class_balanced_target(parts, tgt_images)
    else:
        pseudo, weight = _pseudo_labels(parts, tgt_images)
        if "pseudo_valid" in tgt:  # online.pseudo.margins: HRDA's PL crop v2
            weight = weight * tgt["pseudo_valid"].to(weight.device, weight.dtype)
    if parts.watch is not None:
        parts.watch(pseudo, weight)
    tgt_features = None
    if cfg.mix.enabled:
        masks = class_mix_masks(
            src_labels,
            parts.num_classes,
            parts.generator.generator,
            exclude_ignore=cfg.mix.exclude_ignore,
        )
        pasted_on = tgt_images
        if cfg.mix.augment == "torchvision":  # VFM-UDA: the target weakly jittered first
            pasted_on = torchvision_augment(
                tgt_images, parts.generator.generator, WEAK_SOURCE, parts.image_mean,
                parts.image_std,
            )  # fmt: skip
        mixed = mix_batch(masks.mask, src_images, pasted_on, src_labels, pseudo, weight)
        out = parts.student(_augment(parts, mixed.image))
        terms = {"mix": _out_ce(parts, out, mixed.labels, mixed.weight)}
    else:  # the EMA teacher without mixing: self-training on the augmented target crop
        out = parts.student(_augment(parts, tgt_images))
        terms = {"tgt": _out_ce(parts, out, pseudo, weight)}
        if contrast and cfg.contrast.target:
            tgt_features = out.features
    del out
    yield terms, ("keep" if tgt_features is not None else "own")  # for the target contrast
    if cfg.masking.enabled:
        images = _augment(parts, tgt_images) if cfg.masking.color_aug else tgt_images
        b, _, h, w = images.shape
        mask = block_mask(
            (b, h, w),
            parts.generator.generator,
            block_size=cfg.masking.block_size,
            ratio=cfg.masking.ratio,
            device=dev,
        )
        masked = parts.student(images * mask)
        yield {"mask": _out_ce(parts, masked, pseudo, weight)}, "own"
        del masked
    if parts.distill is not None:
        for key, value in distill_terms(parts, src_images, tgt_images):
            yield {key: value}, "own"
    if contrast:
        if cfg.contrast.target and tgt_features is None:
            tgt_features = parts.student(_augment(parts, tgt_images)).features
        src_part = (src_images, src_labels, src_features)
        yield contrast_terms(parts, iteration, src_part, tgt_features, (pseudo, weight)), "last"


def online_weights(cfg: OnlineConfig, *, feature_distance: bool) -> dict[str, float]:
    """The total loss: source CE + target term (mixed or not) + MIC + FD + contrast, as set."""
    weights = {"seg": 1.0, ("mix" if cfg.mix.enabled else "tgt"): 1.0}
    if cfg.masking.enabled:
        weights["mask"] = cfg.masking.weight
    if feature_distance:
        weights["fd"] = cfg.feature_distance.weight
    fd = {"fd_src": cfg.distill.weight_source, "fd_tgt": cfg.distill.weight_target}
    weights |= {key: weight for key, weight in fd.items() if weight > 0}
    if cfg.contrast.source:
        weights["cl_src"] = cfg.contrast.weight
    if cfg.contrast.target:
        weights["cl_tgt"] = cfg.contrast.weight
    return weights
