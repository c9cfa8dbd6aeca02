"""Compare segmentation models with each other and with the ground truth.

Two questions, one module:

- **One image** (:func:`compare_masks`): given the label maps of two or three models (and the
  ground truth when it exists), how much do they agree? Dice between every pair of models on
  the *foreground* (any non-zero class) and per *shared class name*, Dice of each model
  against the ground truth, predicted areas, and a disagreement score.
- **A dataset** (:func:`compare_models`): the same numbers for every case, read from the
  predicted masks that :func:`engine.evaluation.evaluate` saved for each model, as one table
  sorted by disagreement, so the cases where models disagree most come first.

Conventions:

- Models are named by letters in the order given (``a``, ``b``, ``c``; see
  :func:`model_letters`); pair columns are ``dice_ab``, ``dice_ac``, ``dice_bc``.
- Models with different class sets are compared on the foreground (any class) and on the
  classes whose *names* they share (case-insensitive). Evaluation masks are already mapped to
  the dataset's classes (:func:`engine.evaluation.class_mapping`), so over a dataset the shared
  classes are the dataset classes every model of the pair covers.
- Empty masks: Dice of two empty masks is 1 under the default ``"kaggle"`` policy (two models
  that both find nothing agree perfectly), NaN under ``"exclude"``.
- ``disagreement = 1 − mean pairwise foreground Dice`` (for two models simply ``1 − dice_ab``):
  0 = identical foregrounds, 1 = no overlap at all.

Example:
    >>> import numpy as np
    >>> a = np.zeros((4, 4), np.uint8); a[:2] = 1
    >>> b = np.zeros((4, 4), np.uint8); b[:1] = 1
    >>> round(pairwise_dice(a, b)["foreground"], 4)
    0.6667
    >>> cmp = compare_masks({"m1": a, "m2": b}, gt=a)
    >>> cmp.dice_pairs["ab"]["foreground"] == pairwise_dice(a, b)["foreground"], cmp.dice_gt["m1"]["foreground"]
    (True, 1.0)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from engine.errors import ConfigError, MaskError, WorkbenchError
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from engine.datasets.base import Dataset
    from engine.evaluation import EvalResult

__all__ = [
    "FOREGROUND",
    "ImageComparison",
    "compare_masks",
    "compare_models",
    "covered_classes",
    "disagreement_score",
    "model_letters",
    "pair_key",
    "pairwise_dice",
    "read_prediction",
    "select_cases",
    "shared_classes",
]

#: Key of the any-class (foreground) score in the dicts returned here.
FOREGROUND = "foreground"
LETTERS = "abcdefghij"


def model_letters(names: Sequence[str]) -> dict[str, str]:
    """Letters for the models in the order given: ``{"a": names[0], "b": names[1], ...}``.

    Raises:
        ConfigError: fewer than two models, more than ten, or a name given twice.
    """
    names = list(names)
    if len(names) < 2:
        raise ConfigError(f"comparing models needs at least two, got {len(names)}", hint="pick two or three models")
    if len(names) > len(LETTERS):
        raise ConfigError(f"at most {len(LETTERS)} models can be compared, got {len(names)}",
                          hint="pick fewer models")
    if len(set(names)) != len(names):
        raise ConfigError(f"a model is listed twice: {names}", hint="pick different models")
    return {LETTERS[i]: n for i, n in enumerate(names)}


def pair_key(i: int, j: int) -> str:
    """``"ab"`` for models 0 and 1, ``"bc"`` for 1 and 2, ..."""
    return LETTERS[i] + LETTERS[j]


def shared_classes(labels_a: Mapping[int, str], labels_b: Mapping[int, str]) -> list[tuple[str, int, int]]:
    """Foreground classes two label maps share by name (case-insensitive), in ``labels_a``'s id order.

    Returns:
        ``[(name as in labels_a, id in a, id in b), ...]``; background (id 0) is never included.

    Example:
        >>> shared_classes({0: "bg", 1: "nerve", 2: "vessel"}, {0: "background", 1: "Vessel"})
        [('vessel', 2, 1)]
    """
    by_name = {str(v).strip().lower(): int(k) for k, v in labels_b.items() if int(k) != 0}
    out = []
    for k in sorted(int(i) for i in labels_a):
        if k == 0:
            continue
        name = str(labels_a[k])
        kb = by_name.get(name.strip().lower())
        if kb is not None:
            out.append((name, k, kb))
    return out


def _as_label_map(mask: Any, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"{name}: expected a label map (H,W), got shape {m.shape}",
                        hint="pass one 2-D mask per model")
    if m.dtype == bool:
        return m.astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer):
        raise MaskError(f"{name}: masks must hold integer class ids, got {m.dtype}",
                        hint="post-process probabilities into a label map first")
    return m


def _dice(a: np.ndarray, b: np.ndarray, policy: str) -> float:
    from engine.metrics import dice

    return float(dice(a, b, empty_policy=policy))  # type: ignore[arg-type]


def pairwise_dice(mask_a: Any, mask_b: Any, labels_a: Mapping[int, str] | None = None,
                  labels_b: Mapping[int, str] | None = None, empty_policy: str = "kaggle") -> dict[str, float]:
    """Dice between two label maps: foreground (any class) and each shared class.

    Args:
        mask_a, mask_b: integer/bool label maps (H,W) of the same size.
        labels_a, labels_b: label maps ``{id: name}`` of the two masks; when both are given,
            per-class Dice is added for every class name they share (:func:`shared_classes`).
            When only one is given, both masks are taken to use it.
        empty_policy: ``"kaggle"`` (both empty → 1.0) or ``"exclude"`` (→ NaN).

    Returns:
        ``{"foreground": d, "<class name>": d, ...}``; per-class keys only with labels and only
        when there are two or more shared classes or the classes differ from "any class".

    Raises:
        MaskError: masks of different sizes or non-integer masks.

    Example:
        >>> a = np.array([[1, 2], [0, 0]]); b = np.array([[1, 1], [0, 0]])
        >>> pairwise_dice(a, b, {0: "bg", 1: "x", 2: "y"})
        {'foreground': 1.0, 'x': 0.6666666666666666, 'y': 0.0}
    """
    a = _as_label_map(mask_a, "mask A")
    b = _as_label_map(mask_b, "mask B")
    if a.shape != b.shape:
        raise MaskError(f"masks differ in size: {a.shape} vs {b.shape}",
                        hint="compare predictions of the same image at its original size")
    out = {FOREGROUND: _dice(a > 0, b > 0, empty_policy)}
    if labels_a is None and labels_b is None:
        return out
    la = labels_a if labels_a is not None else labels_b
    lb = labels_b if labels_b is not None else labels_a
    assert la is not None and lb is not None
    shared = shared_classes(la, lb)
    n_fg = max(sum(1 for k in la if int(k) != 0), sum(1 for k in lb if int(k) != 0))
    if shared and n_fg > 1:  # with one class on both sides, the class score is the foreground score
        for name, ka, kb in shared:
            out[name] = _dice(a == ka, b == kb, empty_policy)
    return out


def disagreement_score(pair_dice: Sequence[float]) -> float:
    """``1 − mean`` of the pairwise foreground Dice values (NaN values ignored; all NaN → NaN)."""
    vals = [float(v) for v in pair_dice if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan")
    return 1.0 - float(np.mean(vals))


@dataclass
class ImageComparison:
    """What :func:`compare_masks` returns for one image.

    Attributes:
        models: ``{letter: model name}``.
        dice_pairs: ``{"ab": {"foreground": d, <class>: d, ...}, ...}``.
        dice_gt: ``{model name: {"foreground": d, <class>: d, ...}}`` (empty without ground truth).
        areas: ``{model name: {"foreground": px, <class name>: px, ...}}`` plus ``"ground truth"``.
        disagreement: ``1 − mean pairwise foreground Dice``.
    """

    models: dict[str, str]
    dice_pairs: dict[str, dict[str, float]] = field(default_factory=dict)
    dice_gt: dict[str, dict[str, float]] = field(default_factory=dict)
    areas: dict[str, dict[str, int]] = field(default_factory=dict)
    disagreement: float = float("nan")

    def pair_table(self):
        """pandas DataFrame: one row per model pair, columns ``pair``, ``models``, then Dice per key."""
        import pandas as pd

        rows = []
        for key, scores in self.dice_pairs.items():
            rows.append({"pair": key.upper(), "models": f"{self.models[key[0]]} vs {self.models[key[1]]}",
                         **{f"dice {k}": v for k, v in scores.items()}})
        return pd.DataFrame(rows)

    def model_table(self):
        """pandas DataFrame: one row per model with its Dice vs ground truth and predicted areas."""
        import pandas as pd

        rows = []
        for letter, name in self.models.items():
            row: dict[str, Any] = {"model": name, "letter": letter.upper()}
            for k, v in self.dice_gt.get(name, {}).items():
                row[f"dice vs GT {k}"] = v
            for k, v in self.areas.get(name, {}).items():
                row[f"area {k} (px)"] = v
            rows.append(row)
        return pd.DataFrame(rows)


def _areas(mask: np.ndarray, labels: Mapping[int, str] | None) -> dict[str, int]:
    out = {FOREGROUND: int(np.count_nonzero(mask))}
    if labels is not None and sum(1 for k in labels if int(k) != 0) > 1:
        counts = np.bincount(mask.ravel().astype(np.int64), minlength=max(int(k) for k in labels) + 1)
        for k in sorted(int(i) for i in labels):
            if k:
                out[str(labels[k])] = int(counts[k]) if k < len(counts) else 0
    return out


def compare_masks(masks: Mapping[str, Any], gt: Any | None = None,
                  labels: Mapping[str, Mapping[int, str]] | None = None,
                  gt_labels: Mapping[int, str] | None = None, empty_policy: str = "kaggle") -> ImageComparison:
    """Compare the predictions of 2–3 models on one image (and each against the ground truth).

    Args:
        masks: ``{model name: label map (H,W)}`` in the order the models should be lettered.
        gt: ground-truth label map (H,W), or None.
        labels: ``{model name: {id: class name}}``; None = every mask uses ``gt_labels`` (or
            foreground-only comparison when that is None too).
        gt_labels: the ground truth's label map (default: the first model's labels).
        empty_policy: see :func:`pairwise_dice`.

    Returns:
        :class:`ImageComparison`.

    Example:
        >>> a = np.zeros((2, 2), np.uint8); b = a.copy(); b[0, 0] = 1
        >>> compare_masks({"x": a, "y": b}).disagreement
        1.0
    """
    names = list(masks)
    letters = model_letters(names)
    maps = {n: _as_label_map(masks[n], f"mask of {n}") for n in names}
    shapes = {m.shape for m in maps.values()}
    g = _as_label_map(gt, "ground truth") if gt is not None else None
    if g is not None:
        shapes.add(g.shape)
    if len(shapes) > 1:
        raise MaskError(f"masks differ in size: {sorted(shapes)}", hint="compare masks of the same image")
    lab: dict[str, Mapping[int, str] | None] = {
        n: (labels.get(n) if labels is not None else gt_labels) for n in names}
    glab = gt_labels if gt_labels is not None else lab[names[0]]
    out = ImageComparison(models=letters)
    for i, j in itertools.combinations(range(len(names)), 2):
        a, b = names[i], names[j]
        out.dice_pairs[pair_key(i, j)] = pairwise_dice(maps[a], maps[b], lab[a], lab[b], empty_policy)
    for n in names:
        out.areas[n] = _areas(maps[n], lab[n])
        if g is not None:
            out.dice_gt[n] = pairwise_dice(maps[n], g, lab[n], glab, empty_policy)
    if g is not None:
        out.areas["ground truth"] = _areas(g, glab)
    out.disagreement = disagreement_score([d[FOREGROUND] for d in out.dice_pairs.values()])
    return out


# ---------------------------------------------------------------------------------------------
# Over a dataset, from saved evaluations

SELECT_MODES = ("first", "random", "all")


def select_cases(dataset: Dataset, limit: int | None = None, mode: str = "first", seed: int = 0) -> list[str]:
    """Labelled case ids to compare on a big dataset, in dataset order.

    Args:
        dataset: an :class:`engine.datasets.Dataset`.
        limit: at most this many cases (None or ``mode="all"``: every labelled case).
        mode: ``first`` (the first ``limit`` labelled cases), ``random`` (a uniform sample of
            ``limit`` without replacement, reproducible with ``seed``) or ``all``.

    Example:
        >>> select_cases(ds, 20, "random", seed=1)[:3]          # doctest: +SKIP
        ['1_14', '2_3', '2_40']
    """
    from engine.errors import unknown_name

    if mode not in SELECT_MODES:
        raise unknown_name("case selection", mode, SELECT_MODES)
    ids = [c.case_id for c in dataset.cases if c.labelled]
    if mode == "all" or limit is None or int(limit) >= len(ids):
        return ids
    n = max(0, int(limit))
    if mode == "first":
        return ids[:n]
    pick = np.random.default_rng(int(seed)).choice(len(ids), size=n, replace=False)
    return [ids[i] for i in sorted(pick.tolist())]


def read_prediction(path: str | Path) -> np.ndarray:
    """A predicted mask PNG written by :func:`engine.evaluation.evaluate` as uint8 (H,W) class ids.

    Raises:
        MaskError: the file is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise MaskError("predicted mask not found", path=path,
                        hint="re-run the evaluation with save_predictions=True")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError) as exc:
        raise MaskError(f"cannot read the predicted mask ({exc})", path=path,
                        hint="delete the evaluation folder and evaluate again") from None
    if arr.ndim != 2:
        raise MaskError(f"predicted mask is not a label map (shape {arr.shape})", path=path,
                        hint="delete the evaluation folder and evaluate again")
    return arr.astype(np.uint8, copy=False)


def covered_classes(summary: Mapping[str, Any], dataset_labels: Mapping[int, str]) -> dict[int, str]:
    """Dataset classes a model's evaluation maps predictions into (from ``settings.class_map``).

    Falls back to every dataset class when the summary does not record the mapping.
    """
    cmap = (summary.get("settings") or {}).get("class_map")
    fg = {int(k): str(v) for k, v in dataset_labels.items() if int(k) != 0}
    if not cmap:
        return fg
    names = {str(v).lower() for v in cmap.values() if str(v).lower() != "background"}
    return {k: v for k, v in fg.items() if v.lower() in names}


def compare_models(dataset: Dataset, eval_results: Mapping[str, EvalResult], case_ids: Sequence[str] | None = None,
                   progress: ProgressFn | None = None, empty_policy: str = "kaggle"):
    """Per-case agreement of 2–3 evaluated models, sorted by disagreement (largest first).

    Reads each model's saved predicted masks (:func:`engine.evaluation.prediction_path`) and the
    dataset's ground truth; does not run any model.

    Args:
        dataset: the :class:`engine.datasets.Dataset` the evaluations were run on.
        eval_results: ``{model name: EvalResult}`` (from :func:`engine.evaluation.evaluate` or
            ``load_eval``), in lettering order; each needs ``folder`` and ``per_image``.
        case_ids: cases to compare (default: the cases every evaluation scored, in dataset order).
        progress: ``(done, total, message)`` callback, once per case.
        empty_policy: ``"kaggle"`` (two empty masks agree: Dice 1) or ``"exclude"`` (NaN).

    Returns:
        pandas DataFrame, one row per case: ``case_id``, ``group_id``, ``disagreement``,
        ``dice_ab`` (``dice_ac``, ``dice_bc``), per-class ``dice_ab_<class>`` when the dataset has
        several classes, ``dice_gt_<model>`` (and ``dice_gt_<model>_<class>``), ``gt_area``,
        ``area_<model>``, ``error`` (why a case could not be compared, else ""). Sorted by
        ``disagreement`` descending, then the lowest Dice vs ground truth, then ``case_id``.
        ``df.attrs`` holds ``models`` (letter → name), ``pairs`` (column → "A vs B"),
        ``classes`` (pair → shared class names) and ``empty_policy``.

    Raises:
        ConfigError: fewer than two models, an evaluation of another dataset or without a folder,
            or no case common to all evaluations.

    Example:
        >>> res = {m: evaluate(load_predictor(m), ds) for m in ("unet", "cenet")}   # doctest: +SKIP
        >>> df = compare_models(ds, res)                                           # doctest: +SKIP
        >>> df.iloc[0][["case_id", "dice_ab", "dice_gt_unet", "dice_gt_cenet"]]     # doctest: +SKIP
    """
    import pandas as pd

    from engine.evaluation import prediction_path

    report = as_progress(progress)
    names = list(eval_results)
    letters = model_letters(names)
    folders: dict[str, Path] = {}
    for n in names:
        res = eval_results[n]
        folder = getattr(res, "folder", None)
        if folder is None:
            raise ConfigError(f"the evaluation of {n} has no folder with saved predictions",
                              hint="evaluate with save_predictions=True (the default)")
        ds_root = (res.summary or {}).get("dataset")
        if ds_root and Path(ds_root).resolve() != Path(dataset.root).resolve():
            raise ConfigError(f"the evaluation of {n} is of {ds_root}, not of {dataset.root}",
                              hint="evaluate every model on the same dataset")
        folders[n] = folder
    scored = [set(eval_results[n].per_image["case_id"].astype(str)) for n in names]
    common = set.intersection(*scored)
    if case_ids is None:
        ids = [c.case_id for c in dataset.cases if c.case_id in common]
    else:
        ids = [str(c) for c in case_ids]
        missing = [c for c in ids if c not in common]
        if missing:
            raise ConfigError(f"{len(missing)} case(s) were not scored by every model, e.g. {missing[0]}",
                              hint="evaluate every model on the same cases")
    if not ids:
        raise ConfigError("no case was evaluated by every model", hint="evaluate every model on the same cases")
    labels = dict(dataset.labels)
    fg_names = {k: v for k, v in labels.items() if k != 0}
    multi = len(fg_names) > 1
    covered = {n: covered_classes(eval_results[n].summary or {}, labels) for n in names}
    pairs = list(itertools.combinations(range(len(names)), 2))
    pair_classes = {pair_key(i, j): sorted(set(covered[names[i]]) & set(covered[names[j]])) for i, j in pairs}
    rows: list[dict[str, Any]] = []
    for done, cid in enumerate(ids, start=1):
        case = dataset.case(cid)
        row: dict[str, Any] = {"case_id": cid, "group_id": case.group_id, "error": ""}
        try:
            preds = {n: read_prediction(prediction_path(folders[n], cid)) for n in names}
            gt = dataset.load_mask(case) if case.labelled else None
            shapes = {p.shape for p in preds.values()} | ({gt.shape} if gt is not None else set())
            if len(shapes) > 1:
                raise MaskError(f"case {cid}: predicted masks and ground truth differ in size {sorted(shapes)}",
                                hint="delete the stale evaluations and evaluate again")
        except WorkbenchError as exc:
            row["error"] = str(exc)
            rows.append(row)
            report(done, len(ids), "comparing")
            continue
        fg = {n: preds[n] > 0 for n in names}
        pair_fg = []
        for i, j in pairs:
            key = pair_key(i, j)
            d = _dice(fg[names[i]], fg[names[j]], empty_policy)
            row[f"dice_{key}"] = d
            pair_fg.append(d)
            if multi:
                for k in pair_classes[key]:
                    row[f"dice_{key}_{labels[k]}"] = _dice(preds[names[i]] == k, preds[names[j]] == k, empty_policy)
        row["disagreement"] = disagreement_score(pair_fg)
        if gt is not None:
            gfg = gt > 0
            row["gt_area"] = int(np.count_nonzero(gfg))
            for n in names:
                row[f"dice_gt_{n}"] = _dice(fg[n], gfg, empty_policy)
                if multi:
                    for k in covered[n]:
                        row[f"dice_gt_{n}_{labels[k]}"] = _dice(preds[n] == k, gt == k, empty_policy)
        else:
            row["gt_area"] = -1
        for n in names:
            row[f"area_{n}"] = int(np.count_nonzero(fg[n]))
        rows.append(row)
        report(done, len(ids), "comparing")
    df = pd.DataFrame(rows)
    lead = ["case_id", "group_id", "disagreement"] + [f"dice_{pair_key(i, j)}" for i, j in pairs]
    gt_cols = [f"dice_gt_{n}" for n in names]
    for c in lead + gt_cols + ["gt_area"] + [f"area_{n}" for n in names]:
        if c not in df.columns:
            df[c] = np.nan
    rest = [c for c in df.columns if c not in lead + gt_cols and c != "error"]
    df = df[lead + gt_cols + rest + ["error"]]
    df["_min_gt"] = df[gt_cols].min(axis=1, skipna=True)
    df = df.sort_values(["disagreement", "_min_gt", "case_id"], ascending=[False, True, True],
                        na_position="last", kind="mergesort").drop(columns="_min_gt").reset_index(drop=True)
    df.attrs["models"] = dict(letters)
    df.attrs["pairs"] = {f"dice_{pair_key(i, j)}": f"{names[i]} vs {names[j]}" for i, j in pairs}
    df.attrs["classes"] = {k: [labels[c] for c in v] for k, v in pair_classes.items()}
    df.attrs["empty_policy"] = empty_policy
    return df
