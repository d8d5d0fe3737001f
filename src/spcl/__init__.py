"""spcl: domain-adaptive semantic segmentation with semantic prototype-based contrastive learning.

Implements SPCL (Xie, Li, Li; arXiv 2111.12358): a segmenter trained on a labelled source domain is
adapted to an unlabelled target domain by pulling every pixel's feature toward the prototype of its
class, on both domains, with pseudo-labels on the target.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
