"""Dataset → labelled cases → train/validation split → preprocessed in-memory caches.

Shared by segmentation (:mod:`engine.training.segment`) and the presence classifier
(:mod:`engine.classify`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from engine.errors import ConfigError
from engine.progress import ProgressFn
from engine.splits import SplitSpec, fold_summary, grouped_kfold, load_folds

if TYPE_CHECKING:
    from engine.datasets.base import Case, Dataset

__all__ = ["open_training_data", "split_cases", "cache_dir_for", "resolve_data_path", "positive_only", "is_synthetic"]


def resolve_data_path(data: str) -> str:
    """Absolute form of ``config.data`` (checked to exist)."""
    if not data:
        raise ConfigError("no training data given", hint="pass --data DATASET_FOLDER_OR_MANIFEST.json")
    p = Path(data).expanduser()
    if not p.exists():
        raise ConfigError("training data not found", path=p, hint="check the dataset folder or manifest path")
    return str(p.resolve())


def open_training_data(config: Any, progress: ProgressFn | None = None) -> tuple[Dataset, list[Case]]:
    """Open ``config.data`` (folder or manifest) and return ``(dataset, labelled cases)``."""
    from engine.datasets import open_dataset

    ds = open_dataset(resolve_data_path(config.data), config.layout, options=dict(config.dataset_options or {}),
                      progress=progress)
    cases = ds.labelled_cases()
    if len(cases) < 2:
        raise ConfigError(f"the dataset has {len(cases)} labelled case(s); training needs at least 2",
                          path=config.data, hint="check the masks are found (see `python -m engine info`)")
    return ds, cases


def split_cases(config: Any, cases: Sequence[Case]) -> tuple[list[Case], list[Case], dict[str, Any]]:
    """Train/validation cases from ``config.folds_file`` or a grouped, stratified k-fold.

    Returns:
        ``(train_cases, val_cases, description)``; the description (k, fold, seed, counts of cases,
        groups and positives on each side) goes into the model card.
    """
    ids = [c.case_id for c in cases]
    groups = [c.group_id for c in cases]
    has = [bool(c.has_mask) for c in cases]
    if config.folds_file:
        folds, spec = load_folds(config.folds_file, ids)
        source = str(Path(config.folds_file).resolve())
        if config.split.val_fold >= spec.k:
            raise ConfigError(f"val_fold {config.split.val_fold} does not exist in a {spec.k}-fold folds file",
                              path=config.folds_file, hint=f"pick --val-fold between 0 and {spec.k - 1}")
        spec = SplitSpec(k=spec.k, seed=spec.seed, val_fold=config.split.val_fold, stratify=spec.stratify)
    else:
        spec = config.split
        folds = grouped_kfold(ids, groups, has, k=spec.k, seed=spec.seed, stratify=spec.stratify)
        source = "grouped_kfold"
    train = [c for c in cases if folds[c.case_id] != spec.val_fold]
    val = [c for c in cases if folds[c.case_id] == spec.val_fold]
    if not train or not val:
        raise ConfigError(f"the split leaves {len(train)} training and {len(val)} validation cases",
                          hint="use fewer folds or another validation fold")
    summary = fold_summary(folds, groups, has)
    desc = {
        "source": source, "k": spec.k, "val_fold": spec.val_fold, "seed": spec.seed, "stratify": spec.stratify,
        "grouped_by": "group_id (subject/patient)",
        "n_train": len(train), "n_val": len(val),
        "n_train_groups": len({c.group_id for c in train}), "n_val_groups": len({c.group_id for c in val}),
        "n_train_positive": sum(c.has_mask for c in train), "n_val_positive": sum(c.has_mask for c in val),
        "fold_sizes": [f["n_cases"] for f in summary],
        "val_case_ids": [c.case_id for c in val],  # `engine evaluate --holdout` scores exactly these
        "train_case_ids": [c.case_id for c in train],  # evaluations report overlap with these
    }
    return train, val, desc


def positive_only(train: Sequence[Case], split: dict[str, Any]) -> list[Case]:
    """The training cases with a non-empty mask (the nerve case study trains its segmenter on
    positive images only and lets the presence classifier handle empty ones); validation keeps
    every case so the figures stay comparable. Updates ``split`` (``positive_only``, counts, ids).

    Raises:
        ConfigError: no training case has a mask.
    """
    kept = [c for c in train if c.has_mask]
    if not kept:
        raise ConfigError("positive_only: no training case has a non-empty mask",
                          hint="train on all cases, or check the masks are found")
    split.update(positive_only=True, n_train_before_positive_only=len(train), n_train=len(kept),
                 n_train_groups=len({c.group_id for c in kept}), train_case_ids=[c.case_id for c in kept])
    return kept


def is_synthetic(dataset: Dataset) -> bool:
    """Is the dataset one of our phantoms (its folder, or its parent, carries the phantom README)?"""
    from engine.phantoms import README_NAME

    root = Path(getattr(dataset, "root", "") or ".")
    root = root.parent if root.is_file() else root  # a manifest file → its folder
    return (root / README_NAME).is_file() or (root.parent / README_NAME).is_file()


def cache_dir_for(dataset: Dataset) -> Path:
    """``<dataset workspace>/train-cache`` (manifests: the workspace folder of the manifest file)."""
    from engine.workspace import Workspace

    base = dataset.workdir
    if base is None:
        src = getattr(dataset, "manifest_path", None) or dataset.root
        base = Workspace().dataset_dir(src)
    return Path(base) / "train-cache"
