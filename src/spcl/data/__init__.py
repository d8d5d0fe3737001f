"""Datasets and label tables: real benchmarks, user folders and the synthetic pair."""
