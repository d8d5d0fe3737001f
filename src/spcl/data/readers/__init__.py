"""Readers of the on-disk formats: GTA5, SYNTHIA, Synscapes, Cityscapes and the user's folders.

- :mod:`~spcl.data.readers.gta5`: GTA5 as distributed (``images/`` + ``labels/``).
- :mod:`~spcl.data.readers.synthia`: SYNTHIA-RAND-CITYSCAPES (16-bit label PNGs, 16 or 13
  classes).
- :mod:`~spcl.data.readers.synscapes`: Synscapes (``img/rgb[-2k]/`` + ``img/class/``).
- :mod:`~spcl.data.readers.cityscapes`: Cityscapes (``leftImg8bit/`` + ``gtFine/``) and its
  label-id tables.
- :mod:`~spcl.data.readers.folder`: the user's own folders with a ``classes.yaml``.

Each ``scan_<kind>(root, split, *, with_labels, warn, **options)`` lists a dataset's files into a
:class:`~spcl.data.layout.DatasetFiles` (pairs, class table, label decoder) without decoding them;
:mod:`spcl.data.registry` maps kind names to them.
"""
