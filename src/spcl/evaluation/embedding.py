"""Feature embeddings: sampled pixel features of each domain in 2-D, coloured by class.

The picture shows what SPCL (arXiv 2111.12358, Sec. 3) acts on: pixel features of source and
target coloured by class, with the class prototypes, projected by PCA or t-SNE. Like every
picture of :mod:`spcl.evaluation.plots`, it draws on a private Agg canvas and is written as PNG
atomically.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from spcl.base import IGNORE_INDEX
from spcl.evaluation.plots import DPI, save_figure

__all__ = ["embed_2d", "plot_feature_embedding"]

DOMAIN_MARKERS = ("o", "^", "s", "D", "v", "P")
POINT_STYLE = {"s": 9.0, "alpha": 0.55, "linewidths": 0}  # sampled pixel features
PROTOTYPE_STYLE = {"s": 320.0, "marker": "*", "edgecolors": "black", "linewidths": 1.0, "zorder": 3}
PROTOTYPE_HANDLE = {
    "color": "grey",
    "marker": "*",
    "markersize": 14,
    "markeredgecolor": "black",
    "linestyle": "",
}
MAX_POINTS_PER_DOMAIN = 2000
TSNE_PERPLEXITY = 30.0
EMBED_DIMS = 2
TAB20_SIZE = 20
NORM_EPS = 1e-12  # guards the L2 norm of an all-zero feature


def embed_2d(points: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """Project points to 2-D by PCA (SVD of the centred points) or t-SNE.

    t-SNE needs scikit-learn (not a dependency of spcl); without it PCA is used and a warning
    says so.

    Returns:
        ``(coords, used)``, ``used`` being ``"pca"`` or ``"tsne"``.

    Shape:
        - points: (N, C) → coords (N, 2).
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    points = np.asarray(points, dtype=np.float64)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            warnings.warn(
                "t-SNE needs scikit-learn, which is not installed; using PCA instead", stacklevel=2
            )
        else:
            perplexity = min(TSNE_PERPLEXITY, max(1.0, (len(points) - 1) / 3.0))
            tsne = TSNE(n_components=EMBED_DIMS, perplexity=perplexity, random_state=seed)
            return tsne.fit_transform(points), "tsne"
    centred = points - points.mean(axis=0)
    _, _, right = np.linalg.svd(centred, full_matrices=False)  # rows: principal directions
    basis = right[:EMBED_DIMS]
    if basis.shape[0] < EMBED_DIMS:  # a single feature channel
        basis = np.vstack([basis, np.zeros((EMBED_DIMS - basis.shape[0], points.shape[1]))])
    return centred @ basis.T, "pca"


def _flatten(
    features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, domain: str
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) features and (N,) labels from (N, C)/(N,) or (B, C, h, w)/(B, h, w) inputs."""
    feats = torch.as_tensor(features).detach().cpu().double()
    labs = torch.as_tensor(labels).detach().cpu().long()
    if feats.dim() == 4:  # (B, C, h, w) → (B*h*w, C)
        feats = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
        labs = labs.reshape(-1)
    if feats.dim() != 2 or labs.shape != feats.shape[:1]:
        raise ValueError(
            f"domain {domain!r}: features {tuple(torch.as_tensor(features).shape)} and labels "
            f"{tuple(torch.as_tensor(labels).shape)} must be (N, C) and (N,), or (B, C, h, w) "
            f"and (B, h, w)"
        )
    return feats.numpy(), labs.numpy()


def plot_feature_embedding(
    features_by_domain: Mapping[str, torch.Tensor | np.ndarray],
    labels: Mapping[str, torch.Tensor | np.ndarray],
    prototypes: torch.Tensor | np.ndarray | None,
    path: str | Path,
    *,
    method: str = "pca",
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    max_points: int = MAX_POINTS_PER_DOMAIN,
    normalize: bool = True,
    seed: int = 0,
) -> str:
    """Scatter of sampled pixel features, one marker per domain, coloured by class; prototypes ★.

    Args:
        features_by_domain: e.g. ``{"source": src_feat, "target": tgt_feat}``.
        labels: per domain, the class of every feature pixel (ground truth or pseudo-label);
            values outside ``[0, K)`` (ignore) are dropped.
        prototypes: class prototypes (K, C) (a ``PrototypeBank``'s), or None.
        path: destination PNG.
        method: ``"pca"`` or ``"tsne"`` (falls back to PCA without scikit-learn, noted in the
            title).
        class_names: K names for the colour legend; K is otherwise the prototype count or the
            largest label + 1.
        palette: RGB per class; default matplotlib's tab20.
        max_points: pixels sampled per domain (seeded, without replacement).
        normalize: L2-normalise features over channels, as SPCL compares them to prototypes.
        seed: sampling (and t-SNE) seed.

    Returns:
        The projection used, ``"pca"`` or ``"tsne"``.

    Shape:
        - features: (N, C) or (B, C, h, w); labels: (N,) or (B, h, w); prototypes: (K, C).
    """
    protos = None if prototypes is None else torch.as_tensor(prototypes).cpu().double().numpy()
    limit = len(protos) if protos is not None else len(class_names) if class_names else None
    samples = _sample_domains(features_by_domain, labels, limit, max_points, normalize, seed)
    stacked = np.concatenate(
        [p for p, _ in samples.values()] + ([protos] if protos is not None else [])
    )
    coords, used = embed_2d(stacked, method, seed)
    largest = max((int(c.max()) for _, c in samples.values() if c.size), default=-1)
    colours = _class_colours(limit if limit is not None else largest + 1, palette)
    fig = Figure(figsize=(8.0, 7.0), dpi=DPI)
    ax = fig.add_subplot()
    handles = _draw_embedding(ax, coords, samples, protos, colours)
    if class_names is not None:
        present = sorted({int(c) for _, classes in samples.values() for c in np.unique(classes)})
        handles += [Patch(color=colours[i], label=class_names[i]) for i in present]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    note = "" if used == method else " (t-SNE unavailable: scikit-learn not installed)"
    ax.set_title(f"pixel features, {used.upper()}{note}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    return used


def _draw_embedding(
    ax: Axes,
    coords: np.ndarray,
    samples: Mapping[str, tuple[np.ndarray, np.ndarray]],
    protos: np.ndarray | None,
    colours: np.ndarray,
) -> list[Line2D | Patch]:
    """Scatter each domain's points, then the prototypes (the last rows of ``coords``)."""
    handles: list[Line2D | Patch] = []
    start = 0
    for index, (domain, (points, classes)) in enumerate(samples.items()):
        xy = coords[start : start + len(points)]  # (n, 2)
        start += len(points)
        marker = DOMAIN_MARKERS[index % len(DOMAIN_MARKERS)]
        ax.scatter(xy[:, 0], xy[:, 1], c=colours[classes], marker=marker, **POINT_STYLE)
        handles.append(Line2D([], [], color="grey", marker=marker, linestyle="", label=domain))
    if protos is not None:
        xy = coords[start:]  # (K, 2)
        ax.scatter(xy[:, 0], xy[:, 1], c=colours[: len(protos)], **PROTOTYPE_STYLE)
        handles.append(Line2D([], [], label="prototype", **PROTOTYPE_HANDLE))
    return handles


def _sample_domains(
    features_by_domain: Mapping[str, torch.Tensor | np.ndarray],
    labels: Mapping[str, torch.Tensor | np.ndarray],
    num_classes: int | None,
    max_points: int,
    normalize: bool,
    seed: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per domain, up to ``max_points`` labelled (features (n, C), classes (n,)), seeded."""
    rng = np.random.default_rng(seed)
    samples = {}
    for domain, features in features_by_domain.items():
        if domain not in labels:
            raise ValueError(f"no labels for domain {domain!r}; labels has {sorted(labels)}")
        flat, classes = _flatten(features, labels[domain], domain)
        keep = (classes >= 0) & (classes != IGNORE_INDEX)
        if num_classes is not None:
            keep &= classes < num_classes
        chosen = np.flatnonzero(keep)
        if len(chosen) > max_points:
            chosen = np.sort(rng.choice(chosen, max_points, replace=False))
        flat = flat[chosen]
        if normalize:  # cosine geometry, as the contrastive loss sees it
            flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), NORM_EPS)
        samples[domain] = (flat, classes[chosen])
    if not samples:
        raise ValueError("features_by_domain is empty")
    return samples


def _class_colours(count: int, palette: Sequence[Sequence[int]] | None) -> np.ndarray:
    """(max(count, 1), 4) RGBA colours in [0, 1]: the palette or a matplotlib colour map."""
    count = max(count, 1)
    if palette is not None:
        rgb = np.asarray(palette, dtype=np.float64).reshape(-1, 3)[:count] / 255.0
        if len(rgb) < count:
            raise ValueError(f"palette has {len(rgb)} colours for {count} classes")
        return np.concatenate([rgb, np.ones((count, 1))], axis=1)
    cmap = colormaps["tab20" if count <= TAB20_SIZE else "hsv"]
    return cmap(np.arange(count) % TAB20_SIZE if count <= TAB20_SIZE else np.arange(count) / count)
