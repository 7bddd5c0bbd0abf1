"""Spectral relevance analysis (SpRAy): clusters of maps per class, and how suspicious each is.

Lapuschkin et al. (2019, "Unmasking Clever Hans predictors and assessing what machines really
learn") found a horse classifier that had learnt a copyright tag by clustering the relevance
maps of each class. As published, and as here:

1. each map is downsized to a small grid (:data:`SPRAY_GRID` x :data:`SPRAY_GRID`) and
   normalised per image (its floor removed, unit length), so that clusters gather maps by
   *where* they point, not by how strong they are;
2. a k-nearest-neighbour affinity (connectivity, symmetrised: ``(A + A.T) / 2``, as
   scikit-learn's ``SpectralClustering(affinity="nearest_neighbors")``); separate components
   are joined by one weak edge each (a disconnected graph makes the eigengap meaningless);
3. the number of clusters: the graph's components when the maps fall into separate groups
   (no neighbour in common), else where the gap between consecutive eigenvalues of the
   normalised graph Laplacian is largest (the eigengap; capped, near ties go to fewer
   clusters), unless it is forced;
4. a spectral embedding (scikit-learn's ``spectral_embedding``) and k-means in it.

Then each cluster gets a suspicion score (:func:`suspicion`): how unlike its class's typical
map its mean map is, times how much its members agree on one small spot, near the frame's
edge or outside the annotated objects. Pure NumPy / SciPy / scikit-learn functions on arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BRIDGE",
    "EDGE_BAND",
    "MAX_CLUSTERS",
    "NEAR_TIE",
    "NEIGHBOURS",
    "PEAK_TIE",
    "SPRAY_GRID",
    "TOP_SHARE",
    "ClusterScore",
    "Clustering",
    "affinity",
    "cluster_maps",
    "eigengap",
    "embed_2d",
    "neighbours_for",
    "normalise",
    "peak_of",
    "spray_features",
    "suspicion",
]

SPRAY_GRID = 16
"""Side of the grid each map is pooled to before the affinity."""

NEIGHBOURS = 10
"""At most this many neighbours per map in the affinity graph: a fifth of a class's maps, at
least 3 (each map counts itself), so that a small group of a small class is not drowned in
its neighbours."""

MAX_CLUSTERS = 8
"""The eigengap's cap on the number of clusters (at most a third of the class's images)."""

TOP_SHARE = 0.05
"""The share of cells whose part of a mean map's mass measures its concentration."""

EDGE_BAND = 0.2
"""Peaks closer to the frame's edge than this (fraction of the frame) count as at the edge."""

NEAR_TIE = 0.1
"""Gaps within this fraction of the largest count as ties; the smallest number wins."""

PEAK_TIE = 0.02
"""Cells within this fraction of a map's range below its maximum count as its peak."""

BRIDGE = 1e-3
"""The weight of the edge that joins a component of the affinity graph to the rest."""

_EPS = 1e-12


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each map with its floor removed, as a distribution of where it points (sums to 1).

    Args:
        maps: ``(n, h, w)`` maps of any scale (a RISE map has a high floor).

    Returns:
        ``(n, h, w)`` float64, non-negative, each summing to 1 (a flat map: uniform).

    """
    values = np.asarray(maps, dtype=np.float64)
    values = values - values.reshape(len(values), -1).min(axis=1)[:, None, None]
    total = values.reshape(len(values), -1).sum(axis=1)[:, None, None]
    flat = total[:, 0, 0] <= _EPS
    values = np.where(total > _EPS, values / np.maximum(total, _EPS), 0.0)
    if flat.any():
        values[flat] = 1.0 / values[0].size
    return values


def spray_features(maps: np.ndarray, size: int = SPRAY_GRID) -> np.ndarray:
    """SpRAy's input: each map block-averaged to ``size x size``, floor removed, unit length.

    Args:
        maps: ``(n, h, w)`` maps; ``h`` and ``w`` multiples of ``size``.
        size: the side of the pooled grid.

    Returns:
        ``(n, size * size)`` float64 rows of unit Euclidean length.

    """
    values = np.asarray(maps, dtype=np.float64)
    n, height, width = values.shape
    if height % size or width % size:
        raise ValueError(f"maps of {height} x {width} do not pool to {size} x {size}")
    pooled = values.reshape(n, size, height // size, size, width // size).mean(axis=(2, 4))
    rows = pooled.reshape(n, -1)
    rows = rows - rows.min(axis=1, keepdims=True)
    length = np.linalg.norm(rows, axis=1, keepdims=True)
    uniform = np.full_like(rows, 1.0 / np.sqrt(rows.shape[1]))
    return np.where(length > _EPS, rows / np.maximum(length, _EPS), uniform)


def affinity(features: np.ndarray, neighbours: int = NEIGHBOURS) -> tuple[object, int, int]:
    """The symmetrised k-nearest-neighbour connectivity of the rows, made connected.

    Each point counts itself among its ``k`` neighbours, as scikit-learn's
    ``kneighbors_graph(include_self=True)``; the graph is ``(A + A.T) / 2``. Groups of maps
    that point at different places often form separate components: each is then joined to
    the rest by one weak edge (weight :data:`BRIDGE`) between its nearest pair of points, so
    that the Laplacian has one zero eigenvalue and the eigengap can count the groups.

    Returns:
        The affinity as a SciPy sparse matrix, the ``k`` used, and the number of components
        the graph had before they were joined.

    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors, kneighbors_graph

    n = len(features)
    k = max(2, min(neighbours, n))
    graph = kneighbors_graph(features, n_neighbors=k, include_self=True)
    graph = (0.5 * (graph + graph.T)).tocsr()
    components, labels = connected_components(graph, directed=False)
    if components == 1:
        return graph, k, 1
    rows, cols = [], []
    for component in range(1, components):
        inside = np.flatnonzero(labels == component)
        others = np.flatnonzero(labels < component)  # joined one by one: a connected chain
        finder = NearestNeighbors(n_neighbors=1).fit(features[others])
        distances, nearest = finder.kneighbors(features[inside])
        best = int(np.argmin(distances[:, 0]))
        rows.append(int(inside[best]))
        cols.append(int(others[nearest[best, 0]]))
    bridges = coo_matrix((np.full(len(rows), BRIDGE), (rows, cols)), shape=(n, n))
    return (graph + bridges + bridges.T).tocsr(), k, int(components)


def eigengap(graph: object, max_clusters: int) -> tuple[int, np.ndarray]:
    """The number of clusters by the eigengap of the normalised Laplacian.

    Args:
        graph: a symmetric affinity (SciPy sparse), connected.
        max_clusters: the largest number allowed.

    Returns:
        ``(k, eigenvalues)``: ``k`` in ``1..max_clusters`` maximises
        ``eigenvalues[k] - eigenvalues[k - 1]`` (the smallest ``k`` within
        :data:`NEAR_TIE` of the largest gap); the ``max_clusters + 1`` smallest eigenvalues,
        ascending.

    """
    import scipy.linalg
    from scipy.sparse.csgraph import laplacian
    from scipy.sparse.linalg import eigsh

    matrix = laplacian(graph, normed=True)
    n = matrix.shape[0]
    count = min(max_clusters + 1, n)
    if n <= 2000:
        values = scipy.linalg.eigh(
            matrix.toarray(), eigvals_only=True, subset_by_index=[0, count - 1]
        )
    else:  # shift-invert about the smallest eigenvalues, as scikit-learn's embedding does
        values = -eigsh(-matrix, k=count, sigma=1.0, which="LM", return_eigenvectors=False)
    values = np.sort(np.asarray(values, dtype=np.float64))
    if count < 2:
        return 1, values
    gaps = np.diff(values)[:max_clusters]
    # Near ties (within NEAR_TIE of the largest gap) go to the fewer clusters: the simpler
    # answer, and the within-group gaps of a large k are noise.
    near = np.flatnonzero(gaps >= (1.0 - NEAR_TIE) * gaps.max())
    return int(near[0]) + 1, values


@dataclass(frozen=True)
class Clustering:
    """SpRAy's result for one class.

    Attributes:
        labels: the cluster of each map, ``0..count - 1``.
        count: the number of clusters.
        eigenvalues: the smallest eigenvalues of the normalised Laplacian.
        neighbours: the ``k`` of the affinity graph.
        forced: whether the number of clusters was given rather than read off the eigengap.

    """

    labels: np.ndarray
    count: int
    eigenvalues: np.ndarray
    neighbours: int
    forced: bool


def neighbours_for(count: int) -> int:
    """The affinity graph's ``k`` for a class of ``count`` maps (see :data:`NEIGHBOURS`)."""
    return int(min(NEIGHBOURS, max(3, round(count / 5))))


def cluster_maps(
    features: np.ndarray,
    clusters: int | None = None,
    max_clusters: int = MAX_CLUSTERS,
    neighbours: int | None = None,
    seed: int = 0,
) -> Clustering:
    """Cluster SpRAy features: affinity, eigengap, spectral embedding, k-means.

    Args:
        features: ``(n, d)`` rows from :func:`spray_features`, ``n >= 3``.
        clusters: force this many clusters (at most ``n``); ``None``: the eigengap's choice.
        max_clusters: the eigengap's cap (further capped at ``n // 3``, at least 1).
        neighbours: the affinity graph's ``k``; ``None``: :func:`neighbours_for` ``n``.
        seed: the embedding's and k-means' random state.

    Returns:
        The clusters.

    """
    from sklearn.cluster import KMeans
    from sklearn.manifold import spectral_embedding

    n = len(features)
    graph, k, components = affinity(features, neighbours or neighbours_for(n))
    cap = max(1, min(max_clusters, n // 3))
    chosen, values = eigengap(graph, cap if clusters is None else max(cap, min(clusters, n)))
    if clusters is not None:
        count = max(1, min(clusters, n))
    elif 1 < components <= cap:
        # Groups with no neighbour in common point at different places: they are the
        # clusters (the eigengap would also read the noise inside each group).
        count = components
    else:
        count = chosen
    if count == 1:
        return Clustering(np.zeros(n, dtype=np.int64), 1, values, k, clusters is not None)
    embedding = spectral_embedding(
        graph, n_components=count, drop_first=False, random_state=seed, norm_laplacian=True
    )
    labels = KMeans(n_clusters=count, n_init=10, random_state=seed).fit_predict(embedding)
    # Number the clusters by first appearance: the same clusters, the same numbers.
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    renumber = np.empty_like(order)
    renumber[order] = np.arange(len(order))
    return Clustering(renumber[labels], len(order), values, k, clusters is not None)


def peak_of(mean_map: np.ndarray, tie: float = PEAK_TIE) -> tuple[float, float]:
    """Where a map peaks, in fractions of the frame ``(x right, y down)``.

    The centre of the cells within ``tie`` of the maximum that are connected to it: the
    largest cell of a sharp map, the middle of a plateau (a flat map's first cell in row
    order would say nothing).
    """
    from scipy import ndimage

    rows, cols = mean_map.shape
    top = float(mean_map.max())
    low = float(mean_map.min())
    near = mean_map >= top - tie * max(top - low, _EPS)
    regions, _ = ndimage.label(near)
    row, col = np.unravel_index(int(np.argmax(mean_map)), mean_map.shape)
    ys, xs = np.nonzero(regions == regions[row, col])
    return (float(xs.mean()) + 0.5) / cols, (float(ys.mean()) + 0.5) / rows


@dataclass(frozen=True)
class ClusterScore:
    """How suspicious a cluster is, and the parts of that score (each in [0, 1]).

    Attributes:
        score: ``distinct`` times the mean of the other parts that are known.
        distinct: how unlike the class's mean map the cluster's is (1 - cosine similarity).
        tight: how much the members agree with their cluster's mean map (mean cosine
            similarity; 0 for a cluster of one image).
        concentrated: how much of the cluster's mean map lies in its top
            :data:`TOP_SHARE` of cells, from 0 (spread evenly) to 1 (all there).
        edge: how near the frame's edge the cluster's peak is (1 on the edge, 0 from
            :data:`EDGE_BAND` of the frame inwards).
        outside: the members' mean share of map mass outside the annotated objects, or
            ``None`` without annotations.

    """

    score: float
    distinct: float
    tight: float
    concentrated: float
    edge: float
    outside: float | None

    def parts(self) -> dict[str, float | None]:
        """The parts as JSON-ready numbers (rounded)."""
        return {
            "distinct": round(self.distinct, 4),
            "tight": round(self.tight, 4),
            "concentrated": round(self.concentrated, 4),
            "edge": round(self.edge, 4),
            "outside": None if self.outside is None else round(self.outside, 4),
        }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a.ravel(), b.ravel()) / norm) if norm > _EPS else 0.0


def suspicion(
    members: np.ndarray,
    class_mean: np.ndarray,
    outside: np.ndarray | None = None,
) -> ClusterScore:
    """Score a cluster: its members all look at one spot, unlike the rest of their class.

    Args:
        members: ``(m, h, w)`` the members' maps from :func:`normalise` (each sums to 1).
        class_mean: ``(h, w)`` the mean of the whole class's normalised maps.
        outside: per member with annotations, the share of its map outside the annotated
            objects (``None`` or empty: no annotations).

    Returns:
        The score and its parts.

    """
    mean = members.mean(axis=0)
    distinct = float(np.clip(1.0 - _cosine(mean, class_mean), 0.0, 1.0))
    if len(members) > 1:
        tight = float(np.mean([max(0.0, _cosine(m, mean)) for m in members]))
    else:
        tight = 0.0
    cells = mean.size
    top = max(1, round(TOP_SHARE * cells))
    total = float(mean.sum())
    share = float(np.sort(mean.ravel())[-top:].sum() / total) if total > _EPS else 0.0
    concentrated = float(np.clip((share - top / cells) / (1.0 - top / cells), 0.0, 1.0))
    x, y = peak_of(mean)
    border = min(x, 1.0 - x, y, 1.0 - y)
    edge = float(np.clip(1.0 - border / EDGE_BAND, 0.0, 1.0))
    parts = [tight, concentrated, edge]
    outside_share = None
    if outside is not None and len(outside):
        outside_share = float(np.clip(np.mean(outside), 0.0, 1.0))
        parts.append(outside_share)
    return ClusterScore(
        score=distinct * float(np.mean(parts)),
        distinct=distinct,
        tight=tight,
        concentrated=concentrated,
        edge=edge,
        outside=outside_share,
    )


def embed_2d(
    features: np.ndarray, seed: int = 0, limit: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D t-SNE of the features (scikit-learn), for the embedding picture.

    Args:
        features: ``(n, d)`` rows, ``n >= 3``.
        seed: the random state (the same input gives the same picture).
        limit: at most this many rows are embedded (an evenly spaced subset).

    Returns:
        ``(positions (m, 2), the rows embedded (m,))``.

    """
    from sklearn.manifold import TSNE

    n = len(features)
    chosen = np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).round().astype(int)
    rows = features[chosen]
    perplexity = float(min(30.0, max(1.0, (len(rows) - 1) / 3.0)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=seed,
        max_iter=500,
    )
    return tsne.fit_transform(rows), chosen
