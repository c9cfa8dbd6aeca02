"""What moved: a model before and after retraining on corrected labels, measured twice.

:func:`impact_report` predicts the same held-out cases with model A (before) and model B
(after, e.g. fine-tuned by :mod:`engine.retrain`) and scores both predictions against two
yardsticks:

- ``original`` — the dataset's ground truth as it was (every held-out case);
- ``corrected`` — the ground truth after the review (decisions + latest mask versions; cases
  the review dropped are not scored here).

Reading the two together separates "the model got better" (B − A on one yardstick) from "the
yardstick changed" (corrected − original for one model: the same predictions scored against
fixed labels). Per case: Dice of A and B on both yardsticks and their deltas, whether the
case's ground truth changed or it was dropped, and what reviewers did to it (decisions, mask
versions); ``movers`` are the cases whose Dice moved by at least ``mover_threshold`` on
either yardstick or between yardsticks, largest first, with ``touched`` marking the
corrected/decided ones. The label-noise ceiling is given before (the conflicts report) and
after (:func:`engine.curation.live.live_ceiling`) the review.

Held-out cases: the ``before`` card's ``training.split.val_case_ids`` that exist in the
dataset (a fine-tuned model from :mod:`engine.retrain` keeps them held out), or the
``after`` card's when the first has none; ``cases=`` overrides.

Example:
    >>> rep = impact_report(ds, "nerve-unet", "nerve-unet-ft-3f2a9c", store=store)   # doctest: +SKIP
    >>> rep["yardsticks"]["corrected"]["delta"]["mean_dice"]                          # doctest: +SKIP
    0.031
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from engine.errors import ConfigError
from engine.metrics import paired_bootstrap_ci
from engine.progress import ProgressFn, as_progress, scaled

if TYPE_CHECKING:
    from engine.checkpoint import ModelCard
    from engine.datasets.base import Dataset
    from engine.dedup.conflicts import ConflictReport
    from engine.inference import Predictor
    from engine.metrics import EmptyPolicy
    from engine.retrain import ModelRecord
    from engine.store import ReviewStore

__all__ = ["impact_report", "score_masks", "IMPACT_FORMAT", "impact_markdown"]

IMPACT_FORMAT = "segwb-impact"
YARDSTICKS = ("original", "corrected")



@dataclass(frozen=True)
class PredictionsOnly:
    """A model known only by its saved predictions (no card): its name, no weights digest, no
    training record, so its held-out cases cannot come from it (:class:`engine.retrain.ModelRecord`)."""

    name: str
    tensors_sha256: str = ""
    training: dict[str, Any] = field(default_factory=dict)

def score_masks(preds: dict[str, np.ndarray], gts: dict[str, np.ndarray], labels: dict[int, str],
                empty_policy: EmptyPolicy = "kaggle") -> dict[str, dict[str, float]]:
    """Per-case ``{"dice", "iou"}`` (mean over foreground classes counted under ``empty_policy``).

    Args:
        preds, gts: ``{case_id: uint8 (H,W) label map}`` in the dataset's class ids; only cases
            in both are scored.
    """
    from engine.metrics import MetricAccumulator

    ids = [c for c in preds if c in gts]
    if not ids:
        return {}
    acc = MetricAccumulator(len(labels), labels, empty_policy=empty_policy)
    for cid in ids:
        p, g = preds[cid], gts[cid]
        if p.shape != g.shape:
            from engine.dedup.scoring import resize_nearest

            p = resize_nearest(p, g.shape)
        acc.add(cid, p, g)
    df = acc.per_image()
    out: dict[str, dict[str, float]] = {}
    for cid, grp in df.groupby("case_id", sort=False):
        d = grp["dice"].to_numpy(dtype=np.float64)
        j = grp["iou"].to_numpy(dtype=np.float64)
        out[str(cid)] = {"dice": _nanmean(d), "iou": _nanmean(j)}
    return out


def _nanmean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _mean(vals: Sequence[float]) -> float | None:
    v = [x for x in vals if x is not None and math.isfinite(x)]
    return round(float(np.mean(v)), 6) if v else None


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 6)


def _predict(model: str, ds: Dataset, case_ids: list[str], device: str, progress: ProgressFn | None,
             workspace: Any) -> tuple[dict[str, np.ndarray], ModelCard, dict[str, Any]]:
    """Predicted label maps (dataset class ids) of ``case_ids`` via a cached :func:`evaluate`."""
    from engine.compare import read_prediction
    from engine.evaluation import EvalConfig, evaluate, prediction_path

    pred = _predictor(model, device, workspace)
    res = evaluate(pred, ds, EvalConfig(sweep=False, save_predictions=True, device=device), case_ids=case_ids,
                   progress=progress)
    assert res.folder is not None  # evaluate() always reports where it wrote
    out = {}
    for cid in case_ids:
        p = prediction_path(res.folder, cid)
        if p.is_file():
            out[cid] = read_prediction(p)
    return out, pred.card, {"folder": str(res.folder), "n_failed": int(res.summary.get("n_failed", 0) or 0)}


def _predictor(model: str, device: str, workspace: Any) -> Predictor:
    from engine.checkpoint import resolve_weights
    from engine.inference import Predictor

    return Predictor.from_weights(resolve_weights(model, workspace), device=device, gate=None)


def impact_report(ds: Dataset, before: str, after: str, store: ReviewStore | None = None,
                  report: ConflictReport | None = None, *,
                  cases: Sequence[str] | None = None, mover_threshold: float = 0.05,
                  empty_policy: EmptyPolicy = "kaggle",
                  device: str = "auto", workspace: Any = None, progress: ProgressFn | None = None,
                  predictions: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Before/after metrics of two models on the same held-out cases, on the original and the corrected GT.

    Args:
        ds: the reviewed dataset (original ground truth).
        before, after: model names or folders (A and B).
        store: the dataset's review store (None: nothing corrected; both yardsticks agree).
        report: its conflicts report (None: the latest one, if any) for the ceiling.
        cases: case ids to score instead of the held-out cases.
        mover_threshold: |Dice change| that makes a case a mover.
        empty_policy: ``kaggle`` (both empty = 1) or ``exclude``.
        device: for prediction. workspace: a :class:`engine.workspace.Workspace` to find models in.
        predictions: ``{"before": {case_id: mask}, "after": {...}}`` already predicted (dataset class
            ids); no model is loaded then, ``before``/``after`` are only labels and ``cases`` is required.

    Returns:
        JSON-ready dict: ``format``, ``dataset``, ``models`` (before/after names, weights hash,
        parent), ``cases`` (the scored ids, their ``source``, how many the review dropped),
        ``yardsticks`` (``original``/``corrected`` → ``before``/``after`` means of ``dice`` and
        ``iou``, ``n_cases``, ``delta``), ``yardstick_shift`` (corrected − original mean Dice, per
        model), ``per_case`` rows, ``movers``, ``touched_movers``, ``ceiling`` (before/after), ``review``
        counts, ``seconds``.

    Raises:
        ConfigError: no held-out cases known (pass ``cases``), or none labelled in ``ds``.
    """
    from engine.checkpoint import read_card, resolve_weights
    from engine.curation.live import corrected_dataset, live_ceiling, touched_cases

    t0 = time.perf_counter()
    rep_progress = as_progress(progress)
    card_a: ModelRecord
    card_b: ModelRecord
    if predictions is None:
        card_a = read_card(resolve_weights(before, workspace))
        card_b = read_card(resolve_weights(after, workspace))
    else:
        if cases is None:
            raise ConfigError("impact_report with given predictions needs the cases to score",
                              hint="pass cases=[...]")
        card_a, card_b = PredictionsOnly(str(before)), PredictionsOnly(str(after))
    if report is None:
        from engine.dedup.conflicts import load_latest_report

        report = load_latest_report(ds) if getattr(ds, "workdir", None) is not None else None
    labelled = {c.case_id for c in ds.cases if c.labelled}
    if cases is not None:
        ids = [str(c) for c in cases]
        source = "given"
    else:
        from engine.retrain import held_out_ids

        ids, source = held_out_ids(card_a), f"the cases {card_a.name} held out from its training (validation split)"
        if not ids:
            ids, source = (held_out_ids(card_b),
                           f"the cases {card_b.name} held out from its training (validation split)")
        if not ids:
            raise ConfigError(f"neither {card_a.name} nor {card_b.name} records held-out cases",
                              hint="pass the cases to score (--cases all, or a list)")
    missing = [c for c in ids if c not in labelled]
    ids = [c for c in ids if c in labelled]
    if not ids:
        raise ConfigError(f"none of the {len(missing)} held-out case(s) is a labelled case of {ds.root}",
                          hint="run the report on the dataset the models were trained on")

    cds, dropped, info = corrected_dataset(ds, store, report)
    kept = {c.case_id for c in cds.cases if c.labelled}
    ids_corr = [c for c in ids if c in kept]

    if predictions is None:
        preds_a, _, eval_a = _predict(before, ds, ids, device, scaled(rep_progress, 0.0, 0.45), workspace)
        preds_b, _, eval_b = _predict(after, ds, ids, device, scaled(rep_progress, 0.45, 0.9), workspace)
    else:
        preds_a = {c: np.asarray(m) for c, m in predictions["before"].items() if c in ids}
        preds_b = {c: np.asarray(m) for c, m in predictions["after"].items() if c in ids}
        eval_a = eval_b = {"folder": None, "n_failed": 0, "given": True}
    rep_progress(9, 10, "scoring against both yardsticks")
    gt_orig = {c: ds.load_mask(c) for c in ids}
    gt_corr = {c: cds.load_mask(c) for c in ids_corr}
    score = {("original", "before"): score_masks(preds_a, gt_orig, ds.labels, empty_policy),
             ("original", "after"): score_masks(preds_b, gt_orig, ds.labels, empty_policy),
             ("corrected", "before"): score_masks(preds_a, gt_corr, ds.labels, empty_policy),
             ("corrected", "after"): score_masks(preds_b, gt_corr, ds.labels, empty_policy)}
    touched = touched_cases(store)
    dropped_ids = {c for c, _ in dropped}

    rows = []
    for cid in ids:
        row: dict[str, Any] = {"case_id": cid, "group_id": ds.case(cid).group_id}
        for y in YARDSTICKS:
            a = score[(y, "before")].get(cid, {}).get("dice")
            b = score[(y, "after")].get(cid, {}).get("dice")
            row[f"dice_before_{y}"] = _r(a)
            row[f"dice_after_{y}"] = _r(b)
            row[f"delta_{y}"] = _delta(_r(a), _r(b))
        row["gt_changed"] = bool(cid in gt_corr and not np.array_equal(gt_corr[cid], gt_orig[cid]))
        row["dropped"] = cid in dropped_ids
        row["touched"] = touched.get(cid, [])
        moves = [abs(v) for v in (row["delta_original"], row["delta_corrected"],
                                  _delta(row["dice_after_original"], row["dice_after_corrected"]))
                 if v is not None]
        row["moved"] = round(max(moves), 6) if moves else 0.0
        rows.append(row)
    movers = sorted((r for r in rows if r["moved"] >= mover_threshold), key=lambda r: (-r["moved"], r["case_id"]))

    yard: dict[str, Any] = {}
    for y in YARDSTICKS:
        part: dict[str, Any] = {}
        for side in ("before", "after"):
            s = score[(y, side)]
            part[side] = {"mean_dice": _mean([v["dice"] for v in s.values()]),
                          "mean_iou": _mean([v["iou"] for v in s.values()]), "n_cases": len(s)}
        part["delta"] = {k: _delta(part["before"][k], part["after"][k]) for k in ("mean_dice", "mean_iou")}
        ci = paired_bootstrap_ci([r[f"dice_before_{y}"] for r in rows], [r[f"dice_after_{y}"] for r in rows])
        part["delta"]["mean_dice_ci95"] = None if ci is None else [round(ci[0], 6), round(ci[1], 6)]
        part["delta"]["within_noise"] = None if ci is None else bool(ci[0] <= 0.0 <= ci[1])
        yard[y] = part
    # the yardstick shift on the SAME cases (those scored on both): corrected − original, per model
    both = [r for r in rows if r["dice_before_corrected"] is not None]
    shift = {side: _delta(_mean([r[f"dice_{side}_original"] for r in both]),
                          _mean([r[f"dice_{side}_corrected"] for r in both])) for side in ("before", "after")}

    ceiling: dict[str, Any] = {"before": None, "after": None, "note": "no conflicts report: run a duplicate search"}
    if report is not None:
        live = live_ceiling(ds, store, report, corrected=cds)
        ceiling = {"before": (report.ceiling or {}).get("dataset"), "after": live["dataset"],
                   "n_affected_before": (report.ceiling or {}).get("n_affected"),
                   "n_affected_after": live["n_affected"],
                   "note": "dataset-wide label-noise ceiling: original ground truth vs after the review"}
    lineage = (card_b.training or {}).get("lineage") or {}
    return {
        "format": IMPACT_FORMAT, "version": 1,
        "dataset": str(ds.root),
        "models": {"before": {"name": card_a.name, "sha256": card_a.tensors_sha256, "eval": eval_a},
                   "after": {"name": card_b.name, "sha256": card_b.tensors_sha256, "eval": eval_b,
                             "parent": lineage.get("parent_model"),
                             "manifest_digest": lineage.get("manifest_digest")}},
        "cases": {"source": source, "n": len(ids), "n_not_labelled": len(missing),
                  "n_corrected_yardstick": len(ids_corr), "n_dropped_by_review": len(ids) - len(ids_corr),
                  "ids": ids},
        "empty_policy": empty_policy,
        "gate": "none: both segmenters are scored without a presence-classifier gate",
        "yardsticks": yard,
        "yardstick_shift": shift,
        "mover_threshold": mover_threshold,
        "per_case": rows,
        "movers": [r["case_id"] for r in movers],
        "touched_movers": [r["case_id"] for r in movers if r["touched"] or r["gt_changed"] or r["dropped"]],
        "ceiling": ceiling,
        "review": {"n_decisions": sum((info.get("decisions") or {}).values()),
                   "decisions": info.get("decisions", {}), "proposals": info.get("proposals", {}),
                   "n_unconfirmed_proposals": int(info.get("n_unconfirmed_proposals", 0)),
                   "n_mask_versions": len(store.corrected_masks()) if store is not None else 0,
                   "n_dropped": len(dropped),
                   "mask_overrides": info.get("mask_overrides", {}),
                   "n_held_out_touched": sum(1 for r in rows if r["touched"] or r["gt_changed"] or r["dropped"])},
        "seconds": round(time.perf_counter() - t0, 3),
    }


def impact_markdown(rep: dict[str, Any], top: int = 15) -> str:
    """A short human summary of :func:`impact_report` (for the CLI and the page)."""
    a, b = rep["models"]["before"]["name"], rep["models"]["after"]["name"]
    lines = [f"Impact of {b} vs {a} on {rep['cases']['n']} held-out case(s) ({rep['cases']['source']})"]
    for y in YARDSTICKS:
        part = rep["yardsticks"][y]
        lines.append(f"  {y:9s} GT: Dice {_f(part['before']['mean_dice'])} → {_f(part['after']['mean_dice'])} "
                     f"(Δ {_f(part['delta']['mean_dice'], signed=True)}) on {part['after']['n_cases']} case(s)")
    sh = rep["yardstick_shift"]
    lines.append(f"  yardstick change (corrected − original GT): {a} {_f(sh['before'], signed=True)}, "
                 f"{b} {_f(sh['after'], signed=True)}")
    c = rep["ceiling"]
    lines.append(f"  label-noise ceiling: {_f(c.get('before'))} → {_f(c.get('after'))}")
    rows = {r["case_id"]: r for r in rep["per_case"]}
    if rep["movers"]:
        lines.append(f"  movers (|ΔDice| ≥ {rep['mover_threshold']}): {len(rep['movers'])}, "
                     f"{len(rep['touched_movers'])} corrected/decided")
        for cid in rep["movers"][:top]:
            r = rows[cid]
            what = "; ".join(r["touched"]) or ("GT changed" if r["gt_changed"] else "")
            lines.append(f"    {cid}: original {_f(r['delta_original'], signed=True)}, corrected "
                         f"{_f(r['delta_corrected'], signed=True)}" + (f" — {what}" if what else ""))
    else:
        lines.append("  no case moved by the threshold")
    return "\n".join(lines)


def _f(v: Any, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{float(v):+.4f}" if signed else f"{float(v):.4f}"
