"""Evaluate a model on a dataset: per-image metrics, summary, presence metrics, post-processing sweep.

:func:`evaluate` predicts every labelled case (or a given subset), scores the post-processed
masks with :class:`engine.metrics.MetricAccumulator` under a stated empty-mask policy, and
(optionally) keeps the probabilities of a bounded number of cases to sweep thresholds and
minimum areas. Results are written to a folder (``summary.json``, ``per_image.csv``,
``sweep.csv``, ``pred/<case_id>.png``) that the app's dashboard and browser read; by
default the folder is cached in the dataset's workspace, keyed by the weights' hash, the
dataset state and the settings.

Class matching: dataset classes are matched to model classes by name; when the dataset's
classes have no real names (``foreground``, ``class_2`` — unnamed masks) they are matched by id
if both have the same number of classes. A nerve model is never scored against "pneumothorax".
Model classes the dataset does not have count as background.

Honesty: every evaluation states which evaluated cases were in the model's training split
(:func:`training_cases`, from the card: ``split.train_case_ids`` or, for older cards, the
training dataset's labelled cases minus ``split.val_case_ids``) as ``training_overlap``. With a
gate (two-stage pipeline) the summary has the gated figures, the same cases scored without the
gate (``ungated``) and the classifier's presence metrics. ``rand=True`` adds the ISBI Rand error,
``warping=True`` the U-Net paper's warping error, and areas are reported in mm² where the case
has a DICOM pixel spacing.

Example:
    >>> pred = Predictor.from_weights("lung-cxr")                                  # doctest: +SKIP
    >>> res = evaluate(pred, open_dataset("montgomery-lung"), EvalConfig())       # doctest: +SKIP
    >>> res.summary["mean_dice"], res.summary["per_class"]                        # doctest: +SKIP
    (0.97, {'lung': 0.97})
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from engine.config import JsonConfig
from engine.errors import ConfigError, WorkbenchError
from engine.fsutil import atomic_write_json, atomic_write_text, read_json, safe_name, stamp_text
from engine.metrics import EmptyPolicy
from engine.postprocess import PostProcessConfig, TuneGrid
from engine.progress import ProgressFn, as_progress, scaled

if TYPE_CHECKING:
    from engine.checkpoint import ClassifierCard, ModelCard
    from engine.datasets.base import Dataset
    from engine.inference import Predictor

EVAL_VERSION = 3


@dataclass(frozen=True)
class EvalConfig(JsonConfig):
    """Evaluation settings.

    Attributes:
        empty_policy: ``kaggle`` (both empty = Dice 1) or ``exclude`` (both-empty images left out).
        tta: ``none``/``flip``/``flip4``.
        post: post-processing; None = the model card's default.
        surface: also compute HD95 and mean surface distance (slower; uses DICOM pixel spacing when known).
        sweep: keep probabilities of up to ``sweep_max_images`` cases and grid-search post-processing.
        sweep_max_images: bound on the cases kept for the sweep (memory: K·H·W float16 each).
        save_predictions: write ``pred/<case_id>.png`` for the browser and dashboard.
        batch_size, device: passed to the predictor.
        rand: also per-image Rand error (``engine.metrics.rand_error``, foreground vs background).
        warping: also per-image warping error (``engine.metrics.warping_error``; slower).
    """

    empty_policy: EmptyPolicy = "kaggle"
    tta: str = "none"
    post: PostProcessConfig | None = None
    surface: bool = False
    sweep: bool = True
    sweep_max_images: int = 120
    save_predictions: bool = True
    batch_size: int = 8
    device: str = "auto"
    rand: bool = False
    warping: bool = False

    def __post_init__(self) -> None:
        if self.empty_policy not in ("kaggle", "exclude"):
            raise ConfigError(f"unknown empty policy {self.empty_policy!r}", hint="use kaggle or exclude")


@dataclass
class EvalResult:
    """What :func:`evaluate` returns (and what :func:`load_eval` reads back)."""

    summary: dict[str, Any]
    per_image: Any  # pandas DataFrame: one row per case
    sweep: Any = None  # pandas DataFrame or None
    folder: Path | None = None
    metrics_detail: dict[str, Any] = field(default_factory=dict)


def class_mapping(model_labels: dict[int, str], dataset_labels: dict[int, str]) -> np.ndarray:
    """uint8[256] LUT from model class ids to dataset class ids (see module docstring).

    Raises:
        ConfigError: no dataset class can be matched to a model class.
    """
    lut = np.zeros(256, np.uint8)
    by_name = {v.lower(): k for k, v in dataset_labels.items() if k != 0}
    same_k = len(model_labels) == len(dataset_labels)
    matched = 0
    for mid, name in model_labels.items():
        if mid == 0:
            continue
        if name.lower() in by_name:
            lut[mid] = by_name[name.lower()]
            matched += 1
        elif same_k and mid in dataset_labels and _generic_name(dataset_labels[mid]):
            lut[mid] = mid  # the dataset did not name its classes ("foreground", "class_2"): match by id
            matched += 1
    if matched == 0:
        raise ConfigError(f"model classes {list(model_labels.values())[1:]} do not match the dataset's "
                          f"{list(dataset_labels.values())[1:]}",
                          hint="name the dataset's classes (--labels) like the model's, or use a model for this task")
    return lut


def classes_match(model_labels: dict[int, str], dataset_labels: dict[int, str]) -> bool:
    """Can the model's classes be scored against the dataset's (:func:`class_mapping` finds a match)?
    A nerve model on a lung dataset is False; on an unnamed single-class dataset True."""
    try:
        class_mapping({int(k): v for k, v in model_labels.items()}, {int(k): v for k, v in dataset_labels.items()})
    except ConfigError:
        return False
    return True


def rank_models_for(weights: Sequence[dict[str, Any]], dataset_labels: dict[int, str] | None) -> list[str]:
    """Model names from :func:`engine.checkpoint.list_weights` entries, those whose classes match
    ``dataset_labels`` first (then the others), each group in listing order; None = no dataset."""
    names = [w for w in weights if "error" not in w]
    if not dataset_labels:
        return [w["name"] for w in names]

    def ok(w: dict[str, Any]) -> bool:
        return classes_match(dict(enumerate(w.get("classes") or [])), dataset_labels)

    return [w["name"] for w in names if ok(w)] + [w["name"] for w in names if not ok(w)]


def _generic_name(name: str) -> bool:
    """Class names a layout invents when the data does not name its classes."""
    n = name.lower()
    return n == "foreground" or (n.startswith("class_") and n[6:].isdigit())


def training_cases(card: ModelCard | ClassifierCard, dataset: Dataset) -> set[str] | None:
    """Case ids of ``dataset`` that were in the model's training split, or None when ``dataset`` is not
    the model's training data (so no evaluated case can be a training case).

    The dataset counts as the model's own when its folder is the card's ``training.data`` (relative
    paths are resolved against the checkout), has the same folder name, or holds the card's
    validation cases. Training cases are ``split.train_case_ids`` when the card records them, else
    the dataset's labelled cases that are not validation cases (cards written before the field).
    """
    from engine.checkpoint import REPO_WEIGHTS

    tr = getattr(card, "training", None) or {}
    split = tr.get("split") or {}
    data = tr.get("data")
    if not data:
        return None
    root = Path(getattr(dataset, "root", "")).resolve()
    src = Path(str(data)).expanduser()
    src = (src if src.is_absolute() else (REPO_WEIGHTS.parent / src)).resolve()
    val = set(split.get("val_case_ids") or tr.get("val_case_ids") or [])
    ids = {c.case_id for c in dataset.cases}
    own = src == root or (src.name == root.name and (not val or val <= ids)) or (len(val) >= 5 and val <= ids)
    if not own:
        return None
    if split.get("train_case_ids") is not None:
        return set(split["train_case_ids"]) & ids
    if not val:  # no split recorded: every labelled case may have been seen
        return {c.case_id for c in dataset.cases if c.labelled}
    return {c.case_id for c in dataset.cases if c.labelled and c.case_id not in val}


def training_overlap(card: ModelCard | ClassifierCard, dataset: Dataset, case_ids: Sequence[str]) -> dict[str, Any]:
    """``{"n_cases", "case_ids", "basis"}``: which of ``case_ids`` were training cases of ``card``."""
    train = training_cases(card, dataset)
    if train is None:
        return {"n_cases": 0, "case_ids": [], "basis": "dataset is not the model's training data"}
    hit = [c for c in case_ids if c in train]
    split = ((card.training or {}).get("split") or {})
    basis = ("card split.train_case_ids" if split.get("train_case_ids") is not None else
             "labelled cases of the training dataset minus the card's validation cases")
    return {"n_cases": len(hit), "case_ids": hit, "basis": basis}


def eval_key(card: ModelCard, dataset: Dataset, config: EvalConfig, case_ids: Sequence[str],
             gate: dict[str, Any] | None = None, gate_sha: str = "") -> str:
    """Cache key of an evaluation: weights hash, the dataset's classes and options, each case's image
    and mask source with the files' size and mtime (an in-place edit invalidates), settings, gate."""
    h = hashlib.sha1()
    h.update((card.tensors_sha256 or card.name).encode())
    if gate:
        h.update(json.dumps({**gate, "sha": gate_sha}, sort_keys=True).encode())
    h.update(json.dumps(card.postprocess.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(json.dumps({str(k): v for k, v in dataset.labels.items()}, sort_keys=True).encode())
    h.update(json.dumps(getattr(dataset, "options", None) or {}, sort_keys=True, default=str).encode())
    for cid in case_ids:
        c = dataset.case(cid)
        h.update(f"{cid}|{c.image_path}|{stamp_text(c.image_path)}|{json.dumps(c.mask.to_dict(), sort_keys=True)}|"
                 f"{stamp_text(c.mask.path)}|{c.mask_area}\n".encode())
    return h.hexdigest()[:16]


def eval_dir(dataset: Dataset, card: ModelCard, key: str) -> Path:
    """``<dataset workdir>/evals/<model name>-<key>``."""
    from engine.workspace import Workspace

    base = dataset.workdir or Workspace().dataset_dir(dataset.root)
    return Path(base) / "evals" / f"{safe_name(str(card.name))}-{key}"  # a card name is text from a file


def evaluate(predictor: Predictor, dataset: Dataset, config: EvalConfig | None = None,
             case_ids: Sequence[str] | None = None, progress: ProgressFn | None = None,
             out_dir: str | Path | None = None, use_cache: bool = True) -> EvalResult:
    """Predict and score labelled cases of ``dataset``.

    Args:
        predictor: an :class:`engine.inference.Predictor`.
        dataset: an :class:`engine.datasets.Dataset` (or manifest).
        config: :class:`EvalConfig`.
        case_ids: subset to evaluate (default: every labelled case).
        out_dir: where to write results; None = the cache folder in the dataset workspace.
        use_cache: return a previous identical evaluation from ``out_dir``/cache without recomputing.

    Returns:
        :class:`EvalResult`; ``summary`` has ``mean_dice``, ``mean_iou``, ``per_class`` (name → mean Dice),
        ``n_cases``, ``empty_policy``, ``dice_gt_empty``/``dice_gt_nonempty``, ``presence`` metrics,
        ``settings``, ``timing``.
    """
    import pandas as pd

    from engine.inference import Prediction
    from engine.io import write_mask_png
    from engine.metrics import MetricAccumulator, presence_metrics
    from engine.postprocess import tune_postprocess

    config = config or EvalConfig()
    report = as_progress(progress)
    card = predictor.card
    if case_ids is None:
        case_ids = [c.case_id for c in dataset.cases if c.labelled]
    else:
        case_ids = list(case_ids)
        unl = [cid for cid in case_ids if not dataset.case(cid).labelled]
        if unl:
            raise ConfigError(f"{len(unl)} case(s) have no ground truth, e.g. {unl[0]}",
                              hint="evaluate labelled cases only")
    if not case_ids:
        raise ConfigError(f"dataset {dataset.root} has no labelled cases to evaluate",
                          hint="add masks, or pick another dataset")
    gate = getattr(predictor, "gate_info", None)
    gate_clf = getattr(predictor, "gate", None)
    key = eval_key(card, dataset, config, case_ids, gate, gate_clf.card.tensors_sha256 if gate_clf else "")
    folder = Path(out_dir) if out_dir else eval_dir(dataset, card, key)
    if use_cache:
        cached = load_eval(folder, expect_key=key)
        if cached is not None:
            return cached
    lut = class_mapping(card.labels, dataset.labels)
    post = config.post or card.postprocess
    acc = MetricAccumulator(dataset.num_classes, dataset.labels, empty_policy=config.empty_policy,
                            surface=config.surface)
    acc_ungated = (MetricAccumulator(dataset.num_classes, dataset.labels, empty_policy=config.empty_policy)
                   if gate else None)
    rows: list[dict[str, Any]] = []
    sweep_probs: list[np.ndarray] = []
    sweep_gts: list[np.ndarray] = []
    sweep_pres: list[float | None] = []
    bad: list[dict[str, str]] = []
    t0 = time.perf_counter()
    pred_dir = folder / "pred"
    n_sweep = config.sweep_max_images if config.sweep else 0
    sweep_every = max(1, int(np.ceil(len(case_ids) / n_sweep))) if n_sweep else 0
    predict_progress = scaled(report, 0.0, 0.9 if n_sweep else 1.0)
    for i, (case, result) in enumerate(predictor.predict_cases(dataset, case_ids, post=post, progress=predict_progress,
                                                                        tta=config.tta)):
        if isinstance(result, WorkbenchError):
            bad.append({"case_id": case.case_id, "error": str(result)})
            continue
        assert isinstance(result, Prediction)
        try:
            gt = dataset.load_mask(case)
        except WorkbenchError as exc:
            bad.append({"case_id": case.case_id, "error": str(exc)})
            continue
        pred = lut[result.mask]
        px_spacing = _spacing(case.meta.get("pixel_spacing_mm"))
        acc.add(case.case_id, pred, gt, spacing=px_spacing if config.surface else None)
        fg_probs = result.probs[1:]
        row: dict[str, Any] = {
            "case_id": case.case_id, "group_id": case.group_id, "split": case.split,
            "gt_area": int(np.count_nonzero(gt)), "pred_area": int(np.count_nonzero(pred)),
            "gt_present": bool(np.any(gt)), "pred_present": bool(np.any(pred)),
            "presence_prob": result.presence,
            "max_prob": float(fg_probs.max()) if fg_probs.size else 0.0}
        if px_spacing is not None:
            mm2 = float(px_spacing[0]) * float(px_spacing[1])
            row["gt_area_mm2"], row["pred_area_mm2"] = row["gt_area"] * mm2, row["pred_area"] * mm2
        if gate:
            assert acc_ungated is not None  # built whenever there is a gate
            ungated = lut[predictor.ungated_mask(result, post)]
            acc_ungated.add(case.case_id, ungated, gt)
            row.update(gate_prob=result.gate, gated=bool(result.gated),
                       pred_present_ungated=bool(np.any(ungated)))
        if config.rand or config.warping:
            from engine.metrics import rand_error, warping_error

            if config.rand:
                row["rand_error"] = rand_error(pred > 0, gt > 0)
            if config.warping:
                row["warping_error"] = warping_error(pred > 0, gt > 0)
        rows.append(row)
        if config.save_predictions:
            write_mask_png(pred_dir / f"{safe_name(case.case_id)}.png", pred)
        if sweep_every and i % sweep_every == 0 and len(sweep_probs) < n_sweep:
            mapped = _map_probs(result.probs, lut, dataset.num_classes)
            sweep_probs.append(mapped.astype(np.float16))
            sweep_gts.append(gt)
            sweep_pres.append(result.gate if gate else result.presence)
    t_pred = time.perf_counter() - t0
    if not rows:
        raise WorkbenchError(f"no case of {dataset.root} could be evaluated ({len(bad)} failed)",
                             hint=bad[0]["error"] if bad else "check the dataset")
    per_case = acc.per_case().set_index("case_id")
    per_class = acc.per_image()
    df = pd.DataFrame(rows).set_index("case_id")
    df["dice"] = per_case["dice_mean_fg"]
    df["pixel_error"] = per_case["pixel_error"]
    for name in [dataset.labels[k] for k in sorted(dataset.labels) if k != 0]:
        sub = per_class[per_class["class_name"] == name].set_index("case_id")
        df[f"dice_{name}"] = sub["dice"]
        df[f"iou_{name}"] = sub["iou"]
        if config.surface:
            df[f"hd95_{name}"] = sub["hd95"]
            df[f"assd_{name}"] = sub["assd"]
    df = df.reset_index()
    summ = acc.summary()
    classes = summ["classes"]
    if gate:
        scores = df["gate_prob"].astype(float)
        presence = presence_metrics(df["gt_present"].astype(int).to_numpy(), scores.to_numpy(),
                                    threshold=float(gate["threshold"]))
        presence["score"] = f"presence classifier {gate['weights']}"
    else:
        scores = df["presence_prob"].where(df["presence_prob"].notna(), df["max_prob"]).astype(float)
        presence = presence_metrics(df["gt_present"].astype(int).to_numpy(), scores.to_numpy(),
                                    threshold=post.presence_threshold or 0.5)
        presence["score"] = "presence head" if card.spec.presence_head else "max foreground probability"
    ungated_summary = None
    if acc_ungated is not None:
        us = acc_ungated.summary()
        ungated_summary = {"mean_dice": us["mean_foreground"]["dice"], "mean_iou": us["mean_foreground"]["iou"],
                           "per_class": {n: v["dice"] for n, v in us["classes"].items()},
                           "dice_gt_empty": {n: v["dice_gt_empty"] for n, v in us["classes"].items()},
                           "dice_gt_nonempty": {n: v["dice_gt_nonempty"] for n, v in us["classes"].items()},
                           "n_gated": int(df["gated"].sum())}
    overlap = training_overlap(card, dataset, list(df["case_id"]))
    train_ids = set(overlap["case_ids"])
    df["in_training"] = df["case_id"].isin(train_ids)
    extra: dict[str, Any] = {}
    for col in ("rand_error", "warping_error"):
        if col in df:
            extra[f"mean_{col}"] = float(df[col].astype(float).mean(skipna=True))
    if "gt_area_mm2" in df:
        extra["area_units"] = "mm² where DICOM PixelSpacing is known (gt_area_mm2, pred_area_mm2), else pixels"
        extra["n_cases_with_spacing"] = int(df["gt_area_mm2"].notna().sum())
    sweep_df = None
    t1 = time.perf_counter()
    if sweep_probs:
        res = tune_postprocess(sweep_probs, sweep_gts, sweep_pres if (card.spec.presence_head or gate) else None,
                               TuneGrid(), empty_policy=config.empty_policy,
                               progress=scaled(report, 0.9, 1.0))
        sweep_df = pd.DataFrame(res.table)
        sweep_best = {"config": res.best.to_dict(), "score": res.best_score, "baseline": res.baseline_score,
                      "n_images": res.n_images}
    else:
        sweep_best = None
    t_sweep = time.perf_counter() - t1
    summary = {
        "version": EVAL_VERSION,
        "key": key,
        "model": card.name,
        "dataset": str(dataset.root),
        "layout": dataset.layout,
        "n_cases": int(len(df)),
        "n_counted": {name: v["n_counted"] for name, v in classes.items()},
        "n_failed": len(bad),
        "failed": bad[:50],
        "empty_policy": config.empty_policy,
        "empty_policy_rule": summ["empty_policy_rule"],
        "mean_dice": summ["mean_foreground"]["dice"],
        "mean_iou": summ["mean_foreground"]["iou"],
        "per_class": {name: v["dice"] for name, v in classes.items()},
        "per_class_iou": {name: v["iou"] for name, v in classes.items()},
        "dice_gt_empty": {name: v["dice_gt_empty"] for name, v in classes.items()},
        "dice_gt_nonempty": {name: v["dice_gt_nonempty"] for name, v in classes.items()},
        "n_gt_empty": {name: v["n_gt_empty"] for name, v in classes.items()},
        "n_gt_nonempty": {name: v["n_gt_nonempty"] for name, v in classes.items()},
        "metrics": summ,
        "presence": presence,
        "gate": gate,
        "ungated": ungated_summary,
        "training_overlap": overlap,
        **extra,
        "sweep_best": sweep_best,
        "settings": {**config.to_dict(), "post": post.to_dict(), "weights_sha256": card.tensors_sha256,
                     "class_map": {card.labels[m]: dataset.labels.get(int(lut[m]), "background")
                                   for m in card.labels if m != 0}},
        "timing": {"predict_and_score_s": round(t_pred, 3), "sweep_s": round(t_sweep, 3),
                   "per_case_s": round(t_pred / max(1, len(df)), 4)},
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "per_image.csv", df.to_csv(index=False))
    if sweep_df is not None:
        atomic_write_text(folder / "sweep.csv", sweep_df.to_csv(index=False))
    atomic_write_json(folder / "summary.json", summary)
    return EvalResult(summary, df, sweep_df, folder)


def _spacing(value: Any) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm from a case's ``pixel_spacing_mm`` (one or two numbers), or None."""
    if value is None:
        return None
    try:
        vals = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (TypeError, ValueError):
        return None
    if not vals or any(not np.isfinite(v) or v <= 0 for v in vals):
        return None
    return (vals[0], vals[-1])


def _map_probs(probs: np.ndarray, lut: np.ndarray, k_out: int) -> np.ndarray:
    """Sum model-class probabilities into dataset classes (unmatched → background)."""
    out = np.zeros((k_out,) + probs.shape[1:], np.float32)
    for mid in range(probs.shape[0]):
        out[int(lut[mid]) if mid else 0] += probs[mid]
    return out


def prediction_path(folder: Path, case_id: str) -> Path:
    """Where :func:`evaluate` saved a case's predicted mask."""
    return Path(folder) / "pred" / f"{safe_name(case_id)}.png"


def load_eval(folder: str | Path, expect_key: str | None = None) -> EvalResult | None:
    """Read an evaluation folder back (None when absent, incomplete, or for another key)."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / "summary.json").exists() or not (folder / "per_image.csv").exists():
        return None
    try:
        summary = read_json(folder / "summary.json")
    except WorkbenchError:
        return None
    if summary.get("version") != EVAL_VERSION or (expect_key and summary.get("key") != expect_key):
        return None
    df = pd.read_csv(folder / "per_image.csv", dtype={"case_id": str, "group_id": str})
    sweep = pd.read_csv(folder / "sweep.csv") if (folder / "sweep.csv").exists() else None
    return EvalResult(summary, df, sweep, folder)


def list_evals(dataset: Dataset) -> list[dict[str, Any]]:
    """Cached evaluations of a dataset (newest first): folder, model, mean Dice, n cases."""
    from engine.workspace import Workspace

    base = Path(dataset.workdir or Workspace().dataset_dir(dataset.root)) / "evals"
    out = []
    if base.is_dir():
        for f in base.iterdir():
            try:
                s = read_json(f / "summary.json")
            except WorkbenchError:
                continue
            out.append({"folder": str(f), "model": s.get("model"), "mean_dice": s.get("mean_dice"),
                        "n_cases": s.get("n_cases"), "empty_policy": s.get("empty_policy"),
                        "mtime": (f / "summary.json").stat().st_mtime})
    return sorted(out, key=lambda d: -d["mtime"])
