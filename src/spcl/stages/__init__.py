"""Pipeline stages: one module per stage, each with ``run(ctx, out_dir, inputs)`` writing a folder.

The training stages (warm-up, adapt, self-training, online) are each a ``setup(ctx, out_dir,
inputs)`` that returns a :class:`~spcl.stages.training.TrainingSetup`, trained by one runner.

Stages, in pipeline order (:mod:`spcl.pipeline` runs them):

- :mod:`~spcl.stages.warmup`: 1, source CE, optionally output-space adversarial.
- :mod:`~spcl.stages.prototypes`: 2, source prototypes in one no-gradient pass.
- :mod:`~spcl.stages.pseudo_labels`: 3 and 5, target pseudo-labels with per-class thresholds.
- :mod:`~spcl.stages.adapt`: 4, SPCL adaptation (source CE + pixel-to-prototype contrast).
- :mod:`~spcl.stages.self_train`: 6, self-training on the refreshed pseudo-labels.
- :mod:`~spcl.stages.online`: 7, online adaptation with an EMA teacher; its step is
  :mod:`~spcl.stages.online_step`, its contrast terms :mod:`~spcl.stages.online_contrast`,
  VFM-UDA++'s parts :mod:`~spcl.stages.online_vfm`.
- :mod:`~spcl.stages.evaluate`: 8, mIoU of every trained model of the run.

What the stages share:

- :mod:`~spcl.stages.training`: the one runner of every training stage (the loop, the rank
  agreement check before each checkpoint, validation, the declared outputs).
- :mod:`~spcl.stages.builders`: config → models, datasets, loaders, optimisers.
- :mod:`~spcl.stages.class_sets`: the run's one class set, checked against every side.
- :mod:`~spcl.stages.source_order`: the source stream's order (class-balanced or rare-class).
- :mod:`~spcl.stages.start_checks`: what a run checks before any stage trains.
- :mod:`~spcl.stages.validation`: periodic validation during training.
- :mod:`~spcl.stages.collapse`: the class-collapse alert of the online and self-training stages.
- :mod:`~spcl.stages.target_labels`: a few labelled target images in every training stage.
"""
