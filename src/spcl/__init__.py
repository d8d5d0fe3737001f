"""spcl: domain-adaptive semantic segmentation with semantic prototype-based contrastive learning.

Implements SPCL (Xie, Li, Li; arXiv 2111.12358): a segmenter trained on a labelled source domain is
adapted to an unlabelled target domain by pulling every pixel's feature toward the prototype of its
class, on both domains, with pseudo-labels on the target. The online EMA-teacher recipes of
DAFormer, MIC, SePiCo and VFM-UDA run as one more stage of the same pipeline.

Packages:

- :mod:`spcl.data`: dataset readers, transforms, resumable loaders, the synthetic pair.
- :mod:`spcl.models`: the segmenters (DeepLab-v2, SegFormer MiT, DINOv2 ViT), the discriminator,
  weight files in and out.
- :mod:`spcl.method`: the methods' math on tensors (prototypes, contrast, thresholds, the online
  step's pieces).
- :mod:`spcl.engine`: the one training loop, checkpoints, optimisers, devices and ranks.
- :mod:`spcl.stages`: one module per pipeline stage, and what the stages share.
- :mod:`spcl.evaluation`: confusion matrices, IoU tables, inference, plots.
- :mod:`spcl.experiments`: ``spcl demo`` and ``spcl bench``.
- ``spcl/configs/``: the shipped YAML configs (not a module).

Modules:

- :mod:`spcl.base`: the leaf every layer may import: constants, user-error classes, atomic writes.
- :mod:`spcl.cli` (parsing, exit codes), :mod:`spcl.commands` (what each subcommand does) and
  :mod:`spcl.__main__` (``python -m spcl``): the command line.
- :mod:`spcl.config` (YAML files and ``a.b=c`` overrides), :mod:`spcl.config_schema` (one
  dataclass per section, a comment beside every default), :mod:`spcl.config_types` (ranges and
  lengths of values): the configuration.
- :mod:`spcl.context`: the ``RunContext`` every stage receives.
- :mod:`spcl.model_catalog`: the registered segmenters and their options, without importing torch.
- :mod:`spcl.recipe`: the recipe as data: every stage, its folder, config sections, needs, module.
- :mod:`spcl.run_dir`: every file name in a run directory.
- :mod:`spcl.pipeline`: plans and runs the stages into one resumable run directory.
- :mod:`spcl.run_state` (stage fingerprints, the lock) and :mod:`spcl.run_history` (what a re-run
  replaces, ``history/``): what a run directory records.
- :mod:`spcl.rehearsal`: ``spcl run CONFIG --fast-dev-run``.
- :mod:`spcl.predict` and :mod:`spcl.predict_io`: ``spcl predict`` and the files it reads and
  records.
- :mod:`spcl.progress`: progress bars, live on a terminal and plain lines in a file.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
