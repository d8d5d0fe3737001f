"""Datasets: readers of each format, the shared infrastructure, and the built-in synthetic pair.

- :mod:`~spcl.data.readers`: one module per on-disk format (GTA5, SYNTHIA, Synscapes, Cityscapes,
  the user's own folders).
- :mod:`~spcl.data.synthetic`: the generated source/target pair, its generator and its reader.
- Infrastructure: :mod:`~spcl.data.registry` (kind → reader), :mod:`~spcl.data.layout` (pairing
  files), :mod:`~spcl.data.lists` (the Dataset class, image/label decoding),
  :mod:`~spcl.data.labels` (class tables), :mod:`~spcl.data.label_decoder` (raw label values →
  train ids, unknown values refused), :mod:`~spcl.data.label_png` (the one label-map reader and
  its error), :mod:`~spcl.data.png_decode` (fast single-channel PNG
  decoding), :mod:`~spcl.data.transforms` (paired image/label transforms),
  :mod:`~spcl.data.loaders` (resumable streams), :mod:`~spcl.data.sampling` (SPCL's
  class-balanced order), :mod:`~spcl.data.rare_class` (DAFormer's rare-class sampling),
  :mod:`~spcl.data.doctor` (``spcl data check`` and ``spcl data stats``),
  :mod:`~spcl.data.target_labels` (which target-train images are labelled).
"""
