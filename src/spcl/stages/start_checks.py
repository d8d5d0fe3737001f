"""What a run checks when it starts, before any stage trains (:func:`spcl.pipeline.prepare_data`).

A config loads when every value is in range and the values of a section go together
(:mod:`spcl.config`); what needs the files on disk is checked here, so that a mistake shows in the
first seconds of a run, not at its first validation or after all its training:

* every path the run will read: the source (with labels), the target images when a stage reads
  them, the labelled target split when the run evaluates or validates, a local
  ``model.pretrained`` and the folder of a ``class_index`` given in the config; a wrong root or
  split is named with its key;
* the classes: ``data.num_classes`` comes from the source's class table when the config leaves it
  out, and every side must agree (:mod:`spcl.stages.class_sets`);
* class ids in the config (``online.feature_distance.classes``) must be ids of that table: the
  default ids are Cityscapes' thing classes 6–18, which a 4-class dataset does not have (the
  feature distance would be 0 for the whole run);
* the pseudo-label crop rows (``online.pseudo.crop_top`` + ``crop_bottom``) must leave rows of the
  target images when the online stage takes them whole (with ``online.crop`` set, loading the
  config checks them against the crop height);
* the labelled target images (``data.target_labels``): the list names target-train images that
  have labels, and the evaluation split holds none of them (:mod:`spcl.stages.target_labels`).

It also says (a warning, not an error) when a stage's random crop is larger than the images it is
cut from at every scale the stage draws: every crop is then padded, and the padding costs compute
and trains on nothing (:func:`padded_crop_warnings`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from spcl.base import ConfigError, MissingFileError
from spcl.config_schema import Config, pseudo_crop_problems
from spcl.context import RunContext
from spcl.data.label_decoder import describe_ids
from spcl.data.labels import ClassTable
from spcl.data.registry import scan_domain
from spcl.stages.class_sets import check_class_sets
from spcl.stages.target_labels import check_target_labels

__all__ = [
    "CLASS_ID_LISTS",
    "check_run_start",
    "padded_crop_warnings",
    "reads_target",
    "reads_target_val",
]

TARGET_READERS = ("pseudo_labels", "adapt", "pseudo_labels_2", "self_train", "online")  # stages
# that read the target images whatever their settings
TRAINING_STAGES = ("warmup", "adapt", "self_train", "online")  # stages that validate (val_every)


@dataclass(frozen=True)
class ClassIdList:
    """A config key holding class ids, and when the run uses it."""

    key: str
    ids: Callable[[Config], list[int]]
    used: Callable[[Config], bool]
    remedy: str  # what the user can do instead


def _feature_distance_used(config: Config) -> bool:
    """The online stage computes the feature distance only from ImageNet weights (online.py)."""
    fd = config.online.feature_distance
    return "online" in config.run.stages and bool(config.model.pretrained) and fd.weight > 0


CLASS_ID_LISTS: tuple[ClassIdList, ...] = (  # every list of class ids in the schema
    ClassIdList(
        "online.feature_distance.classes",
        lambda c: c.online.feature_distance.classes,
        _feature_distance_used,
        "set it to the ids of your object ('thing') classes, or online.feature_distance.weight=0",
    ),
)


def reads_target(config: Config) -> bool:
    """Whether a stage of the run reads the target training images."""
    stages = set(config.run.stages)
    return (
        bool(stages & set(TARGET_READERS))
        or ("warmup" in stages and config.warmup.adversarial)
        or ("evaluate" in stages and config.evaluate.adabn)
    )


def reads_target_val(config: Config) -> bool:
    """Whether the run scores models on the labelled target split (evaluation, validation)."""
    stages = set(config.run.stages)
    validates = config.run.val_every > 0 and bool(stages & set(TRAINING_STAGES))
    return "evaluate" in stages or validates


def _check_paths(config: Config) -> list[Path]:
    """Every path the run reads exists; returns the target images (empty: not read)."""
    data = config.data
    scan_domain(data.source, "data.source", with_labels=True)
    target = (
        scan_domain(data.target, "data.target", with_labels=False).images
        if reads_target(config)
        else []
    )
    if reads_target_val(config):
        scan_domain(data.target_val, "data.target_val", with_labels=True)
    pretrained = config.model.pretrained
    if pretrained and "://" not in pretrained and not Path(pretrained).is_file():
        raise MissingFileError(f"model.pretrained: no such file: {pretrained}")
    for name in ("source", "target", "target_val"):
        index = getattr(data, name).class_index
        if index and not Path(index).parent.is_dir():
            raise MissingFileError(
                f"data.{name}.class_index: the folder of {index} does not exist (the class "
                f"index is written there)"
            )
    return target


def _check_class_ids(config: Config, table: ClassTable) -> None:
    """Class ids in the config must be ids of the run's class table (where the run uses them)."""
    for entry in CLASS_ID_LISTS:
        ids = entry.ids(config)
        outside = sorted({i for i in ids if i >= table.num_classes})
        if not entry.used(config) or not outside:
            continue
        classes = ", ".join(f"{i} {n}" for i, n in enumerate(table.names))
        raise ConfigError(
            f"{entry.key} {ids} names class id(s) {describe_ids(outside)} but the run has "
            f"{table.num_classes} classes ({classes}); {entry.remedy}"
        )


def _check_pseudo_crop(config: Config, target_images: list[Path]) -> None:
    """The online stage's pseudo-label crop rows against the whole target image's height."""
    online = config.online
    if "online" not in config.run.stages or online.crop or not target_images:
        return  # with online.crop, loading the config compared the rows with the crop height
    size = config.data.target.size
    if size:
        height, source = size[0], "data.target.size"
    else:
        with Image.open(target_images[0]) as image:
            height, source = image.height, f"the height of {target_images[0]}"
    for keys, message in pseudo_crop_problems(online.pseudo, height, source):
        raise ConfigError(f"{' and '.join(f'online.{k}' for k in keys)}: {message}")


def _cropped_domains(config: Config) -> list[tuple[str, list[int], list[float], str]]:
    """(stage, crop, scale range, domain key) for each random crop a stage of the run cuts."""
    stages, out = config.run.stages, []
    online, self_train = config.online, config.self_train
    if "online" in stages and online.crop:
        out.append(("online", online.crop, online.scale_range, "source"))
        if not online.pseudo.class_balanced_crop:  # else the step crops (checked there)
            out.append(("online", online.crop, online.scale_range, "target"))
    if "self_train" in stages and self_train.crop:
        out.append(("self_train", self_train.crop, self_train.scale_range, "target"))
    return out


def padded_crop_warnings(config: Config) -> list[str]:
    """One message per stage and domain whose every crop is padded.

    A crop larger than the resized image (``data.<domain>.size``) times the largest scale the
    stage draws (``scale_range``; none: 1) is padded on every draw (image 0, label ignored): a
    smaller ``data.<domain>.size`` chosen for speed, with the stage's crop left at its default,
    trains on a padded frame. Domains without a fixed size (images kept at their own size) are
    not judged.
    """
    messages = []
    for stage, crop, scale_range, domain in _cropped_domains(config):
        size = getattr(config.data, domain).size
        if not size:
            continue
        largest = max(scale_range) if scale_range else 1.0
        height, width = size[0] * largest, size[1] * largest
        if crop[0] <= height and crop[1] <= width:
            continue
        covered = min(1.0, height / crop[0]) * min(1.0, width / crop[1])
        scaled = f" at the largest scale of {stage}.scale_range, {largest:g}" if scale_range else ""
        fits = [min(crop[0], size[0]), min(crop[1], size[1])]  # the image at scale 1
        messages.append(
            f"{stage}.crop {list(crop)} is larger than data.{domain}.size {list(size)}{scaled}: "
            f"every {domain} crop is padded, at least {100 * (1 - covered):.0f}% of it (image "
            f"black, label ignored), which costs compute and trains on nothing; set "
            f"{stage}.crop={fits} or a larger data.{domain}.size"
        )
    return messages


def check_run_start(ctx: RunContext) -> None:
    """Check everything a run reads before any stage trains (see the module docstring).

    Sets ``data.num_classes`` from the source's class table when the config leaves it out.

    Raises:
        UnknownNameError: an unknown dataset kind.
        MissingFileError: a dataset root, split or folder, or ``model.pretrained``, not found.
        ConfigError: sides that name different classes, class ids outside the class table,
            pseudo-label crop rows that leave no row, a labelled target image that is not one
            or is evaluated.
    """
    config = ctx.config
    target_images = _check_paths(config)
    table = check_class_sets(ctx)
    _check_class_ids(config, table)
    _check_pseudo_crop(config, target_images)
    check_target_labels(config, evaluates=reads_target_val(config))
    for message in padded_crop_warnings(config):
        ctx.tracker.warning(f"[start] warning: {message}")
