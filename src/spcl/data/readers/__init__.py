"""Readers of the on-disk formats: GTA5, SYNTHIA, Synscapes, Cityscapes and the user's folders.

Each ``scan_<kind>(root, split, *, with_labels, warn, **options)`` lists a dataset's files into a
:class:`~spcl.data.layout.DatasetFiles` (pairs, class table, label decoder) without decoding them;
:mod:`spcl.data.registry` maps kind names to them.
"""
