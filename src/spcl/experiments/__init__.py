"""Experiments over the pipeline: ``spcl demo`` and ``spcl bench``, on one table of rows.

- :mod:`~spcl.experiments.rows`: the runs (a config variant and its stages) and the rows (the
  model of one stage of one run, e.g. "SPCL + self-training"), shared by demo and bench.
- :mod:`~spcl.experiments.runner`: runs a seed's runs (finished stages shared between runs,
  :mod:`~spcl.experiments.sharing`) and collects each row's scores.
- :mod:`~spcl.experiments.payload`: statistics over seeds (mean ± std, gap closed, differences).
- :mod:`~spcl.experiments.report`: the one report writer (``report.md``, tables, plots of
  :mod:`~spcl.experiments.figures`).
- :mod:`~spcl.experiments.demo`, :mod:`~spcl.experiments.bench`: the two commands.
"""
