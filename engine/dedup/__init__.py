"""Near-duplicate images with contradictory masks: fingerprints, candidate search, SSIM
verification, mask disagreement, label-noise ceiling, fold leakage (finding only).

Start with :func:`find_conflicts` (CLI: ``python -m engine conflicts DATASET --json FILE``),
then review and apply decisions with :mod:`engine.curation` (``build_manifest``; CLI:
``python -m engine manifest``).

Nearest-neighbour search is exact (blocked matrix products) by default; for scopes of
100,000+ images it uses ``faiss-cpu`` or ``hnswlib`` when one is installed (optional, not a
requirement).

Example:
    >>> from engine.datasets import open_dataset
    >>> from engine.dedup import ConflictConfig, find_conflicts
    >>> ds = open_dataset("demo_data/nerve")                                   # doctest: +SKIP
    >>> rep = find_conflicts(ds, ConflictConfig(scope="global"))               # doctest: +SKIP
    >>> rep.stats["categories"]["conflict"], rep.ceiling["dataset"]           # doctest: +SKIP
    (16, 0.975)
"""

from engine.dedup.conflicts import (ConflictConfig, ConflictReport, find_conflicts, latest_report_path,
                                    load_latest_report)
from engine.dedup.fingerprint import Fingerprints, compute_fingerprints, image_thumb
from engine.dedup.leakage import leakage_report, load_folds_file
from engine.dedup.scoring import CATEGORIES, categorize, group_ceiling, mask_dice, severity
from engine.dedup.search import available_backends, knn_pairs, search_candidates
from engine.dedup.ssim import ssim_matrix, ssim_pairs

__all__ = [
    "ConflictConfig", "ConflictReport", "find_conflicts", "latest_report_path", "load_latest_report",
    "Fingerprints", "compute_fingerprints", "image_thumb", "leakage_report", "load_folds_file",
    "CATEGORIES", "categorize", "group_ceiling", "mask_dice", "severity",
    "available_backends", "knn_pairs", "search_candidates", "ssim_pairs", "ssim_matrix",
]
