"""Candidate pairs for near-duplicate verification, without all-pairs SSIM.

Each image's fingerprint (unit-norm local-structure descriptor, 256 dims, see
:mod:`engine.dedup.fingerprint`) is compared with every other in its scope (one subject/patient
group, or the whole dataset) by cosine similarity, which tracks the SSIM structure term and is
blind to brightness and contrast changes. For each image the
``k`` most similar images whose similarity is at least ``floor`` become candidates; pairs are
made symmetric (``i < j``, each once). Only candidates go on to SSIM.

Backends:
- ``exact`` (default below ``ann_min_size`` images per scope): block matrix products
  ``V[rows] @ V.T`` in blocks of at most ``block_mb`` MiB, thresholded at ``floor``, top-k
  per row. Memory O(block), time O(n²·D) BLAS work: well under a second for 5,640 images
  in one scope (256 dims); per-subject scopes are tiny.
- ``faiss`` (``pip install faiss-cpu``; HNSW graph, inner product) or ``hnswlib``
  (``pip install hnswlib``; HNSW, inner-product space): approximate k-NN in ~O(n log n), for
  scopes of a million images, where the exact search (10¹² products) is out of reach.
  Neither is a requirement: ``auto`` uses faiss, then hnswlib, when installed and a scope has
  at least ``ann_min_size`` (default 100,000) images, else the exact search. Both were checked
  to return the same 4,475 candidates as the exact search on the 5,640-image phantom.

Images without texture (``texture`` below ``flat_texture``: a blank or nearly uniform frame)
have no usable structure vector, yet SSIM can still call two of them duplicates (its constants
dominate on flat regions). Each such image is paired with its ``k`` nearest textureless
neighbours in brightness instead, and SSIM decides.

Example:
    >>> rng = np.random.default_rng(0); v = rng.normal(size=(50, 8)).astype(np.float32)
    >>> v[1] = v[0] + 0.01; v /= np.linalg.norm(v, axis=1, keepdims=True)
    >>> i, j, s, backend = knn_pairs(v, k=3, floor=0.99)
    >>> (int(i[0]), int(j[0]), backend)
    (0, 1, 'exact')
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.errors import ConfigError, unknown_name

BACKENDS = ("auto", "exact", "faiss", "hnswlib")


def available_backends() -> list[str]:
    """Backends usable here: always ``exact``, plus ``faiss``/``hnswlib`` when installed."""
    return list(_installed_backends())


@functools.lru_cache(maxsize=1)
def _installed_backends() -> tuple[str, ...]:
    # looked up once per process: find_spec walks sys.path (~0.2 ms each, and a search runs
    # once per subject group)
    return ("exact",) + tuple(name for name in ("faiss", "hnswlib") if importlib.util.find_spec(name) is not None)


def _resolve_backend(backend: str, n: int, ann_min_size: int) -> str:
    if backend not in BACKENDS:
        raise unknown_name("nearest-neighbour backend", backend, BACKENDS)
    have = available_backends()
    if backend == "auto":
        if n >= ann_min_size:
            for name in ("faiss", "hnswlib"):
                if name in have:
                    return name
        return "exact"
    if backend not in have:
        package = "faiss-cpu" if backend == "faiss" else backend
        raise ConfigError(f"nearest-neighbour backend '{backend}' is not installed",
                          hint=f"pip install {package}, or use --ann exact/auto")
    return backend


def _directed_exact(v: np.ndarray, k: int, floor: float, block_mb: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k (≥ floor) neighbours of every row of ``v`` (m,D) float32, in row blocks."""
    m = v.shape[0]
    rows_out, cols_out, sims_out = [], [], []
    block = max(1, int(block_mb * 2**20 // (4 * max(m, 1))))
    for s in range(0, m, block):
        e = min(m, s + block)
        sim = v[s:e] @ v.T  # (b, m)
        sim[np.arange(e - s), np.arange(s, e)] = -np.inf  # no self-pairs
        over = (sim >= floor).sum(axis=1) > k
        if over.any():  # keep only the k best of over-full rows (argpartition on those rows)
            sub = sim[over]
            top = np.argpartition(-sub, k - 1, axis=1)[:, :k]
            kept = np.full_like(sub, -np.inf)
            np.put_along_axis(kept, top, np.take_along_axis(sub, top, axis=1), axis=1)
            sim[over] = kept
        r, c = np.nonzero(sim >= floor)
        if r.size == 0:
            continue
        vals = sim[r, c]
        rows_out.append(r + s)
        cols_out.append(c)
        sims_out.append(vals)
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(rows_out).astype(np.int64), np.concatenate(cols_out).astype(np.int64),
            np.concatenate(sims_out).astype(np.float32))


def _directed_faiss(v: np.ndarray, k: int, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import faiss  # optional dependency

    m, d = v.shape
    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(np.ascontiguousarray(v, np.float32))
    index.hnsw.efSearch = max(64, 2 * (k + 1))
    sims, idx = index.search(np.ascontiguousarray(v, np.float32), min(m, k + 1))
    return _filter_knn(sims, idx, floor)


def _directed_hnswlib(v: np.ndarray, k: int, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import hnswlib  # optional dependency

    m, d = v.shape
    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=m, ef_construction=200, M=16, random_seed=0)
    index.add_items(np.ascontiguousarray(v, np.float32), np.arange(m))
    index.set_ef(max(64, 2 * (k + 1)))
    labels, dist = index.knn_query(np.ascontiguousarray(v, np.float32), k=min(m, k + 1))
    return _filter_knn(1.0 - dist, labels.astype(np.int64), floor)


def _filter_knn(sims: np.ndarray, idx: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    cols = idx.ravel().astype(np.int64)
    vals = sims.ravel().astype(np.float32)
    ok = (cols >= 0) & (cols != rows) & (vals >= floor)
    return rows[ok], cols[ok], vals[ok]


def knn_pairs(v: np.ndarray, k: int, floor: float, backend: str = "auto", ann_min_size: int = 100_000,
              block_mb: float = 64.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Symmetric candidate pairs among the rows of ``v`` (m,D) float32 (L2-normalised).

    A pair (i, j) is kept when j is among the ``k`` most similar rows of i, or i among those of
    j, and the cosine similarity is ≥ ``floor``.

    Returns:
        ``(i, j, sim, backend)``: int64 (P,) with ``i < j`` (each pair once, sorted),
        float32 (P,) similarity, and the backend used.
    """
    m = v.shape[0]
    name = _resolve_backend(backend, m, ann_min_size)
    if m < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), name
    if name == "exact":
        r, c, s = _directed_exact(v, k, floor, block_mb)
    elif name == "faiss":
        r, c, s = _directed_faiss(v, k, floor)
    else:
        r, c, s = _directed_hnswlib(v, k, floor)
    i, j, s = symmetric_unique(r, c, s)
    return i, j, s, name


def symmetric_unique(r: np.ndarray, c: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed pairs → undirected ``i < j`` pairs, each once (the max similarity kept), sorted."""
    if r.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i = np.minimum(r, c).astype(np.int64)
    j = np.maximum(r, c).astype(np.int64)
    key = i * (max(int(j.max()), 0) + 1) + j
    order = np.lexsort((-s, key))
    key, i, j, s = key[order], i[order], j[order], s[order]
    first = np.concatenate([[True], key[1:] != key[:-1]])
    return i[first], j[first], s[first]


@dataclass
class Candidates:
    """Candidate pairs as row indices into the fingerprint arrays (``i < j``)."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray
    backend: str
    n_flat: int
    n_scopes: int


SMALL_SCOPE = 2048  # scopes below this size are searched with single-threaded BLAS


def search_candidates(fp: np.ndarray, scopes: Sequence[np.ndarray], *, k: int = 8, floor: float = 0.69,
                      backend: str = "auto", ann_min_size: int = 100_000, block_mb: float = 64.0,
                      texture: np.ndarray | None = None, mean: np.ndarray | None = None,
                      flat_texture: float = 0.01) -> Candidates:
    """Candidate pairs within each scope (an index array into ``fp``); see the module docstring.

    Args:
        fp: (N,D) float32 unit-norm descriptors.
        scopes: int index arrays; pairs are only formed inside one scope.
        k, floor: neighbours per image and the similarity floor.
        backend, ann_min_size, block_mb: see :func:`knn_pairs`.
        texture, mean: (N,) float32 texture and brightness for the textureless fallback
            (skipped when None); flat_texture: the texture below which an image counts as flat.

    Returns:
        :class:`Candidates` with global row indices ``i < j``.
    """
    from engine.parallel import limit_blas

    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_s: list[np.ndarray] = []
    used: set[str] = set()
    n_flat = 0

    def run(idx: np.ndarray) -> int:
        i, j, s, name = knn_pairs(fp[idx], k, floor, backend, ann_min_size, block_mb)
        used.add(name)
        out_i.append(idx[i])
        out_j.append(idx[j])
        out_s.append(s)
        if texture is None or mean is None:
            return 0
        flat = idx[texture[idx] < flat_texture]
        if flat.size >= 2:
            order = flat[np.argsort(mean[flat], kind="stable")]
            for step in range(1, min(k, order.size - 1) + 1):  # k nearest in brightness on each side
                out_i.append(order[:-step])
                out_j.append(order[step:])
                out_s.append(np.zeros(order.size - step, np.float32))
        return int(flat.size)

    scopes = [np.asarray(x, np.int64) for x in scopes if len(x) >= 2]
    with limit_blas(1):  # many small products: BLAS threads only cost wake-ups
        for idx in scopes:
            if idx.size < SMALL_SCOPE:
                n_flat += run(idx)
    for idx in scopes:
        if idx.size >= SMALL_SCOPE:
            n_flat += run(idx)
    if not out_i:
        empty = np.zeros(0, np.int64)
        return Candidates(empty, empty, np.zeros(0, np.float32), _label(used, backend), n_flat, len(scopes))
    i, j, s = symmetric_unique(np.concatenate(out_i), np.concatenate(out_j),
                               np.concatenate(out_s).astype(np.float32))
    return Candidates(i, j, s, _label(used, backend), n_flat, len(scopes))


def _label(used: set[str], requested: str) -> str:
    if not used:
        return "exact" if requested == "auto" else requested
    return "+".join(sorted(used))
