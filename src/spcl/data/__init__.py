"""Datasets: readers of each format, the shared infrastructure, and the built-in synthetic pair.

- :mod:`~spcl.data.readers`: one module per on-disk format (GTA5, SYNTHIA, Synscapes, Cityscapes,
  the user's own folders).
- :mod:`~spcl.data.synthetic`: the generated source/target pair, its generator and its reader.
- Infrastructure: :mod:`~spcl.data.registry` (kind → reader), :mod:`~spcl.data.layout` (pairing
  files), :mod:`~spcl.data.lists` (the Dataset class, image/label decoding),
  :mod:`~spcl.data.labels` (class tables), :mod:`~spcl.data.label_decoder`,
  :mod:`~spcl.data.transforms`, :mod:`~spcl.data.loaders` (resumable streams),
  :mod:`~spcl.data.sampling` (class-balanced order), :mod:`~spcl.data.doctor`
  (``spcl data check``).
"""
