"""Shared test set-up: one intra-op thread keeps the many tiny models fast on a 2-core machine."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
