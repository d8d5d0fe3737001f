"""Evaluation: confusion matrices and IoU tables, inference, plots."""
