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

from typing import Any

# name → submodule; imported on first use (PEP 562) so `python -m engine conflicts` loads only what it uses
_EXPORTS = {
    "ConflictConfig": "conflicts", "ConflictReport": "conflicts", "find_conflicts": "conflicts",
    "latest_report_path": "conflicts", "load_latest_report": "conflicts",
    "Fingerprints": "fingerprint", "compute_fingerprints": "fingerprint", "image_thumb": "fingerprint",
    "leakage_report": "leakage", "load_folds_file": "leakage",
    "CATEGORIES": "scoring", "categorize": "scoring", "group_ceiling": "scoring", "mask_dice": "scoring",
    "severity": "scoring",
    "available_backends": "search", "knn_pairs": "search", "search_candidates": "search",
    "ssim_matrix": "ssim", "ssim_pairs": "ssim",
}

__all__ = [
    "ConflictConfig", "ConflictReport", "find_conflicts", "latest_report_path", "load_latest_report",
    "Fingerprints", "compute_fingerprints", "image_thumb", "leakage_report", "load_folds_file",
    "CATEGORIES", "categorize", "group_ceiling", "mask_dice", "severity",
    "available_backends", "knn_pairs", "search_candidates", "ssim_pairs", "ssim_matrix",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.dedup' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"engine.dedup.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
