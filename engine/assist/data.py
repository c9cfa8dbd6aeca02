"""The real data the click model trains and is benchmarked on, and its grouped split.

Two sources whose licenses allow shipping weights (see ``../shared/data/README.md``):

- ``montgomery``: Montgomery County chest X-rays, structure ``lungs`` (left + right as one object);
- ``usgra``: regional-anaesthesia ultrasound, structures ``nerve`` and ``vessel`` (each class mask
  is one object, possibly of several parts).

The split is the one the shipped segmenters use (``lung-cxr``, ``nerve-vessel-us``): grouped,
stratified 5-fold, seed 0, fold 0 held out (:func:`engine.splits.grouped_kfold`; groups = patients
for Montgomery, scan sequences ``^(\\d{3})\\d$`` for usgra). The held-out images are never seen in
training; the benchmark (``bench/assist.py``) scores only them.

Example:
    >>> part = load_split("montgomery", "../shared/data")              # doctest: +SKIP
    >>> len(part.train), len(part.held_out), part.describe()["n_val"]   # doctest: +SKIP
    (110, 28, 28)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, unknown_name

if TYPE_CHECKING:
    from engine.datasets.base import Case, Dataset


@dataclass(frozen=True)
class Source:
    """One real data source: folder under the data root, dataset options, structures, license."""

    name: str
    folder: str
    options: dict[str, Any]
    structures: dict[int, str]
    license: str
    attribution: str


SOURCES: dict[str, Source] = {
    "montgomery": Source("montgomery", "montgomery-lung", {"label_names": ["lung"], "threshold": 127},
                         {1: "lungs"},
                         "Montgomery County X-ray Set, U.S. National Library of Medicine (public research data)",
                         "Montgomery County X-ray Set, U.S. National Library of Medicine"),
    "usgra": Source("usgra", "usgra-nerve-vessel",
                    {"label_names": ["nerve", "vessel"], "group_regex": r"^(\d{3})\d$"},
                    {1: "nerve", 2: "vessel"}, "CC-BY 4.0", "usgra-seg dataset, T. M. K., CC-BY 4.0"),
}
SPLIT = {"k": 5, "seed": 0, "val_fold": 0, "stratify": True}
MIN_OBJECT_PIXELS = 20


@dataclass
class Split:
    """A source's dataset and its grouped split."""

    source: Source
    dataset: "Dataset"
    train: list["Case"]
    held_out: list["Case"]

    def describe(self) -> dict[str, Any]:
        """The split as stored in the model card (counts, groups, every held-out and training case id)."""
        return {"source": "grouped_kfold", **SPLIT, "grouped_by": "group_id (patient / scan sequence)",
                "options": dict(self.source.options),
                "n_train": len(self.train), "n_val": len(self.held_out),
                "n_train_groups": len({c.group_id for c in self.train}),
                "n_val_groups": len({c.group_id for c in self.held_out}),
                "val_case_ids": [c.case_id for c in self.held_out],
                "train_case_ids": [c.case_id for c in self.train]}


def load_split(name: str, data_root: str | Path) -> Split:
    """Open source ``name`` under ``data_root`` and split it (see the module docstring).

    Raises:
        ConfigError: unknown source name or missing folder.
    """
    from engine.datasets import open_dataset
    from engine.splits import grouped_kfold

    if name not in SOURCES:
        raise unknown_name("click-model data source", name, list(SOURCES))
    src = SOURCES[name]
    folder = Path(data_root) / src.folder
    if not folder.is_dir():
        raise ConfigError(f"data folder {src.folder} not found", path=folder,
                          hint="pass --data pointing at ../shared/data (or set SEGWB_SHARED_DATA)")
    ds = open_dataset(folder, options=dict(src.options))
    cases = ds.labelled_cases()
    folds = grouped_kfold([c.case_id for c in cases], [c.group_id for c in cases], [bool(c.has_mask) for c in cases],
                          k=int(SPLIT["k"]), seed=int(SPLIT["seed"]), stratify=bool(SPLIT["stratify"]))
    val = int(SPLIT["val_fold"])
    return Split(src, ds, [c for c in cases if folds[c.case_id] != val], [c for c in cases if folds[c.case_id] == val])


@dataclass
class TrainObject:
    """One object to segment: the working image ((H,W) uint8), its mask ((H,W) bool), where it is from."""

    image: np.ndarray
    mask: np.ndarray
    source: str
    structure: str
    case_id: str


def load_objects(split: Split, cases: list["Case"]) -> list[TrainObject]:
    """Every object (one per structure present with ≥ 20 pixels) of ``cases``, images as working images."""
    from engine.assist.prep import working_image

    out = []
    for c in cases:
        arr, _meta = split.dataset.load_image(c)
        grey = working_image(np.asarray(arr))
        labels = split.dataset.load_mask(c)
        for k, structure in split.source.structures.items():
            m = labels == k
            if int(m.sum()) >= MIN_OBJECT_PIXELS:
                out.append(TrainObject(grey, m, split.source.name, structure, c.case_id))
    return out
