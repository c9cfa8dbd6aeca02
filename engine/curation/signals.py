"""Model signals for the suspicion queue: model-vs-model disagreement and flip-TTA uncertainty.

:func:`engine.curation.case_queue` ranks cases by what points at a wrong label; besides review
states, near-duplicate conflicts and model-vs-ground-truth Dice it takes two model-only signals
computed here:

- :func:`model_disagreement` — ``1 − mean pairwise foreground Dice`` of 2–3 evaluated models'
  saved predictions (:func:`engine.compare.compare_models`; no model is run). Where strong models
  disagree, the image is hard or its label is doubtful.
- :func:`tta_uncertainty` — the model's own uncertainty: the image is predicted in four flipped
  views (none, horizontal, vertical, both; flipped back), and the score is
  ``2 × mean over the foreground region of the per-pixel standard deviation`` of the foreground
  probability across the views, in [0, 1] (the region: pixels any view calls foreground; no
  region → 0). A model that is sure gives the same answer however the image is flipped.

Both return ``{case_id: score in [0, 1]}`` (NaN-free; cases that could not be scored are left out).

Example:
    >>> unc = tta_uncertainty(Predictor.from_weights("nerve-unet"), ds, ds.case_ids[:50])  # doctest: +SKIP
    >>> q = case_queue(ds, store, report, ev, uncertainty=unc)                           # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from engine.errors import WorkbenchError
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from engine.datasets import Dataset
    from engine.evaluation import EvalResult
    from engine.inference import Predictor

__all__ = ["model_disagreement", "tta_uncertainty", "flip_views_uncertainty", "FLIP_VIEWS", "save_signals",
           "load_signals", "SIGNALS_FILE"]

#: Flip views (numpy axes of a (C,H,W) image) whose predictions are compared.
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def model_disagreement(dataset: Dataset, eval_results: Mapping[str, EvalResult],
                       case_ids: Sequence[str] | None = None) -> dict[str, float]:
    """``{case_id: 1 − mean pairwise Dice}`` of 2–3 models' saved predictions (see module doc)."""
    from engine.compare import compare_models

    df = compare_models(dataset, eval_results, case_ids)
    out: dict[str, float] = {}
    for cid, v in zip(df["case_id"].astype(str).tolist(), df["disagreement"].tolist()):
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[cid] = round(min(max(f, 0.0), 1.0), 6)
    return out


def flip_views_uncertainty(fg_views: np.ndarray) -> float:
    """The uncertainty score of foreground probabilities ``(V,H,W)`` from V views (already
    flipped back): ``2 × mean std`` over pixels where any view is >= 0.5; 0 when there are none."""
    fg = np.asarray(fg_views, dtype=np.float32)
    region = (fg >= 0.5).any(axis=0)
    if not region.any():
        return 0.0
    std = fg.std(axis=0)
    return float(min(1.0, 2.0 * float(std[region].mean())))


def tta_uncertainty(predictor: Predictor, dataset: Dataset, case_ids: Sequence[str] | None = None,
                    progress: ProgressFn | None = None) -> dict[str, float]:
    """``{case_id: flip-TTA uncertainty}`` of ``predictor`` on ``case_ids`` (default: all cases).

    Runs the model ``len(FLIP_VIEWS)`` times per image (no TTA inside each run). Unreadable
    images are skipped.
    """
    report = as_progress(progress)
    ids = [c.case_id for c in dataset.cases] if case_ids is None else [str(c) for c in case_ids]
    out: dict[str, float] = {}
    for i, cid in enumerate(ids):
        report(i, len(ids), f"flip-TTA uncertainty {cid}")
        try:
            img = dataset.load_image_float(cid)
        except WorkbenchError:
            continue
        views = [np.ascontiguousarray(np.flip(img, axis) if axis else img) for axis in FLIP_VIEWS]
        preds = predictor.predict_many(views, post=None, tta="none", _probs_only=True)
        fg = []
        for axis, pred in zip(FLIP_VIEWS, preds):
            p = np.asarray(pred.probs, dtype=np.float32)
            p = np.flip(p, axis) if axis else p
            fg.append(1.0 - p[0])
        out[cid] = round(flip_views_uncertainty(np.stack(fg)), 6)
    report(len(ids), len(ids), "flip-TTA uncertainty done")
    return out


SIGNALS_FILE = "queue_signals.json"


def save_signals(ds: Dataset, signals: Mapping[str, Any]) -> Path:
    """Keep computed queue signals (``disagreement``, ``uncertainty`` maps plus ``models``) in the
    dataset's workspace folder (``queue_signals.json``, atomic), so the queue uses them after a reload."""
    from engine.fsutil import atomic_write_json

    if ds.workdir is None:
        from engine.errors import ConfigError

        raise ConfigError("the dataset has no workspace folder for queue signals",
                          hint="open the dataset with a workspace")
    path = Path(ds.workdir) / SIGNALS_FILE
    atomic_write_json(path, dict(signals))
    return path


def load_signals(ds: Dataset) -> dict[str, Any]:
    """The signals saved by :func:`save_signals` (``{}`` when none or unreadable)."""
    from engine.fsutil import read_json_dict

    if ds.workdir is None:
        return {}
    return read_json_dict(Path(ds.workdir) / SIGNALS_FILE)
