"""Engineering: the training loop, checkpoints, optimisers and schedules, devices and ranks.

- :mod:`~spcl.engine.loop`: the one training loop every training stage hands its step to.
- :mod:`~spcl.engine.checkpoint`: full-state checkpoints written atomically, safe loads, key
  prefix cleaning.
- :mod:`~spcl.engine.optim`: optimisers, per-parameter groups (head, norm, embeddings, layer
  decay) and the poly schedule with warm-up.
- :mod:`~spcl.engine.distributed`: devices and torchrun: ranks, all-reduces, cross-rank checks.
- :mod:`~spcl.engine.tracking`: what the person watching sees: progress, TensorBoard, the log file.
- :mod:`~spcl.engine.disk_errors`: failed writes of the log and TensorBoard files, named like
  every other failed write.
"""
