"""Data preparation for the metrics dashboard: evaluations, slices, sweeps, training runs.

Pure pandas/numpy over what :func:`engine.evaluation.evaluate` and :mod:`engine.training`
write; the page only plots the results.

- :func:`find_evaluations`: the cached evaluations of a dataset (model, policy, TTA, size, date).
- :func:`headline`: the summary numbers shown at the top (mean Dice/IoU under the stated empty
  policy, split by empty and non-empty ground truth).
- :func:`per_class_table`, :func:`worst_cases`, :func:`dice_by_truth`.
- :func:`join_meta` + :func:`slice_metrics`: metrics per DICOM sex / age band / view position /
  split / group.
- :func:`sweep_gates` + :func:`sweep_matrix`: the threshold × minimum-area grid of the sweep.
- :func:`list_runs`, :func:`load_history`, :func:`preview_frames`: training runs.

Example:
    >>> res = load_eval(find_evaluations(ds)[0]["folder"])                      # doctest: +SKIP
    >>> headline(res.summary)["mean_dice"]                                       # doctest: +SKIP
    >>> slice_metrics(join_meta(res.per_image, ds.to_frame()), "sex")           # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, WorkbenchError

if TYPE_CHECKING:
    import pandas as pd

    from engine.datasets.base import Dataset

__all__ = ["evals_root", "find_evaluations", "headline", "per_class_table", "worst_cases", "dice_by_truth",
           "join_meta", "slice_columns", "slice_metrics", "sweep_gates", "sweep_matrix", "list_runs",
           "load_history", "history_series", "preview_frames", "run_card"]


# ----------------------------------------------------------------------------- evaluations

def evals_root(ds: Dataset) -> Path:
    """``<dataset workdir>/evals`` (the same folder :func:`engine.evaluation.eval_dir` writes to)."""
    from engine.workspace import Workspace

    base = getattr(ds, "workdir", None) or Workspace().dataset_dir(ds.root)
    return Path(base) / "evals"


def find_evaluations(ds: Dataset) -> list[dict[str, Any]]:
    """Cached evaluations of ``ds``, newest first.

    Returns:
        dicts with ``folder``, ``model``, ``mean_dice``, ``mean_iou``, ``n_cases``, ``empty_policy``,
        ``tta``, ``sweep`` (bool), ``mtime`` and a one-line ``label`` for pickers.
    """
    import datetime as _dt

    from engine.fsutil import read_json

    root = evals_root(ds)
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for f in root.iterdir():
        sp = f / "summary.json"
        if not sp.is_file():
            continue
        try:
            s = read_json(sp)
        except WorkbenchError:
            continue
        settings = s.get("settings") or {}
        mtime = sp.stat().st_mtime
        e = {"folder": str(f), "model": s.get("model"), "mean_dice": s.get("mean_dice"),
             "mean_iou": s.get("mean_iou"), "n_cases": s.get("n_cases"), "empty_policy": s.get("empty_policy"),
             "tta": settings.get("tta", "none"), "sweep": (f / "sweep.csv").is_file(), "mtime": mtime}
        when = _dt.datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M")
        md = e["mean_dice"]
        ov = s.get("training_overlap") or {}
        e["n_training_cases"] = int(ov.get("n_cases") or 0)
        e["gate"] = (s.get("gate") or {}).get("weights")
        tags = ((f" · INCLUDES {e['n_training_cases']} TRAINING CASES" if e["n_training_cases"] else
                 (" · held-out" if ov else "")) + (f" · gate {e['gate']}" if e["gate"] else ""))
        e["label"] = (f"{e['model']} · {e['empty_policy']} · TTA {e['tta']} · {e['n_cases']} cases · "
                      f"Dice {md:.3f}{tags} · {when}" if isinstance(md, (int, float)) else
                      f"{e['model']} · {e['empty_policy']} · TTA {e['tta']}{tags} · {when}")
        out.append(e)
    return sorted(out, key=lambda d: -d["mtime"])


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Top-line numbers of an evaluation summary.

    Returns:
        ``mean_dice``, ``mean_iou``, ``policy``, ``rule``, ``n_cases``, ``n_failed`` and, averaged over
        foreground classes, ``dice_gt_empty``/``dice_gt_nonempty`` with the image counts
        ``n_gt_empty``/``n_gt_nonempty`` (of the first class: every class is scored on every image).
    """
    def mean_of(d: Any) -> float:
        vals = [_num(v) for v in (d or {}).values()]
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def first(d: Any) -> int:
        vals = list((d or {}).values())
        return int(vals[0]) if vals else 0

    return {
        "mean_dice": _num(summary.get("mean_dice")),
        "mean_iou": _num(summary.get("mean_iou")),
        "policy": summary.get("empty_policy", "kaggle"),
        "rule": summary.get("empty_policy_rule", ""),
        "n_cases": int(summary.get("n_cases") or 0),
        "n_failed": int(summary.get("n_failed") or 0),
        "dice_gt_empty": mean_of(summary.get("dice_gt_empty")),
        "dice_gt_nonempty": mean_of(summary.get("dice_gt_nonempty")),
        "n_gt_empty": first(summary.get("n_gt_empty")),
        "n_gt_nonempty": first(summary.get("n_gt_nonempty")),
    }


#: Columns of :func:`per_class_table` (summary key → column title).
_CLASS_COLUMNS: dict[str, str] = {
    "dice": "Dice", "iou": "IoU", "precision": "precision", "recall": "recall", "specificity": "specificity",
    "dice_gt_empty": "Dice (GT empty)", "dice_gt_nonempty": "Dice (GT non-empty)", "dice_global": "pooled Dice",
    "hd95": "HD95", "assd": "ASSD", "n_counted": "images counted", "n_gt_empty": "GT empty",
    "n_gt_nonempty": "GT non-empty",
}


def per_class_table(summary: dict[str, Any]) -> "pd.DataFrame":
    """One row per foreground class from ``summary["metrics"]["classes"]`` (NaN where undefined)."""
    import pandas as pd

    classes = ((summary.get("metrics") or {}).get("classes")) or {}
    rows = []
    for name, c in classes.items():
        row: dict[str, Any] = {"class": name}
        for k, title in _CLASS_COLUMNS.items():
            if k in ("hd95", "assd") and not (summary.get("metrics") or {}).get("surface"):
                continue
            row[title] = c.get(k)
        rows.append(row)
    if not rows:  # older summaries: per_class only
        for name, d in (summary.get("per_class") or {}).items():
            rows.append({"class": name, "Dice": d, "IoU": (summary.get("per_class_iou") or {}).get(name)})
    df = pd.DataFrame(rows)
    for col in df.columns[1:]:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def worst_cases(per_image: "pd.DataFrame", n: int = 12, metric: str = "dice",
                only_gt_nonempty: bool = False) -> "pd.DataFrame":
    """The ``n`` lowest-scoring cases (NaN scores are not "worst": they are left out).

    Ties are broken by larger ground-truth area first (a missed big structure is worse), then case id.
    """
    if metric not in per_image.columns:
        raise ConfigError(f"no column {metric!r} in the per-image table",
                          hint=f"use one of: {', '.join(map(str, per_image.columns))}")
    df = per_image[per_image[metric].notna()]
    if only_gt_nonempty and "gt_present" in df.columns:
        df = df[df["gt_present"].astype(bool)]
    keys = [metric] + (["gt_area"] if "gt_area" in df.columns else []) + ["case_id"]
    asc = [True] + ([False] if "gt_area" in df.columns else []) + [True]
    return df.sort_values(keys, ascending=asc, kind="stable").head(int(n)).reset_index(drop=True)


def dice_by_truth(per_image: "pd.DataFrame", metric: str = "dice") -> "pd.DataFrame":
    """``case_id, value, truth`` with truth ``GT empty`` / ``GT non-empty`` (for histograms/boxes)."""
    import pandas as pd

    truth = np.where(per_image.get("gt_present", pd.Series(True, index=per_image.index)).astype(bool),
                     "GT non-empty", "GT empty")
    return pd.DataFrame({"case_id": per_image["case_id"].astype(str), "value": pd.to_numeric(per_image[metric],
                         errors="coerce"), "truth": truth})


# ----------------------------------------------------------------------------- slices

def join_meta(per_image: "pd.DataFrame", frame: "pd.DataFrame") -> "pd.DataFrame":
    """Per-image metrics joined with the case index (DICOM sex/age/view, split, area) on ``case_id``.

    Adds ``age_band`` (20-year bands, ``impossible``, ``(missing)``) when the index has ages.
    Columns that exist in both keep the per-image value (the evaluation's view of the case).
    """
    from engine.eda import age_band

    meta = frame.copy()
    meta["case_id"] = meta["case_id"].astype(str)
    if "age_years" in meta.columns or "age_flag" in meta.columns:
        meta["age_band"] = age_band(meta)
    left = per_image.copy()
    left["case_id"] = left["case_id"].astype(str)
    extra = [c for c in meta.columns if c not in left.columns or c == "case_id"]
    return left.merge(meta[extra], on="case_id", how="left")


#: Slicing columns offered by the dashboard, in order, with their titles.
SLICES: dict[str, str] = {"sex": "DICOM sex", "age_band": "age band", "view_position": "view position",
                          "in_training": "in the model's training cases",
                          "split": "the dataset's own split (its folders, not the model's)",
                          "group_id": "group (subject / patient)"}


def slice_columns(joined: "pd.DataFrame") -> dict[str, str]:
    """The :data:`SLICES` present in ``joined`` with at least one non-missing value."""
    return {k: v for k, v in SLICES.items() if k in joined.columns and joined[k].notna().any()}


def slice_metrics(joined: "pd.DataFrame", by: str, metric: str = "dice") -> "pd.DataFrame":
    """Metrics per value of ``by``.

    Returns:
        DataFrame ``<by>, n, mean, median, n_gt_nonempty, mean (GT non-empty), mean (GT empty),
        detected`` where ``detected`` = fraction of GT-non-empty images with a non-empty prediction
        (NaN when none). Missing values of ``by`` form their own ``(missing)`` row. Sorted by ``by``.
    """
    import pandas as pd

    from engine.eda import MISSING

    if by not in joined.columns:
        raise ConfigError(f"cannot slice by {by!r}: not a column of the joined table",
                          hint=f"use one of: {', '.join(slice_columns(joined)) or 'none available'}")
    d = pd.DataFrame({
        "key": joined[by].astype(object).where(joined[by].notna(), MISSING).astype(str),
        "v": pd.to_numeric(joined[metric], errors="coerce"),
        "gt": joined["gt_present"].astype(bool) if "gt_present" in joined else True,
        "pred": joined["pred_present"].astype(bool) if "pred_present" in joined else False,
    })
    rows = []
    for key, g in d.groupby("key", sort=True):
        pos = g[g["gt"]]
        neg = g[~g["gt"]]
        rows.append({by: key, "n": int(len(g)), "mean": g["v"].mean(), "median": g["v"].median(),
                     "n_gt_nonempty": int(len(pos)),
                     "mean (GT non-empty)": pos["v"].mean() if len(pos) else np.nan,
                     "mean (GT empty)": neg["v"].mean() if len(neg) else np.nan,
                     "detected": float(pos["pred"].mean()) if len(pos) else np.nan})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- sweep

def _gate_label(row: Any) -> str:
    pt, tt, ta = row.get("presence_threshold"), row.get("triplet_top"), row.get("triplet_min_area")
    if pt is not None and not (isinstance(pt, float) and math.isnan(pt)):
        return f"presence ≥ {float(pt):g}"
    if tt is not None and not (isinstance(tt, float) and math.isnan(tt)):
        return f"triplet top {float(tt):g}, area {int(ta)}"
    return "no gate"


def _with_gates(sweep: "pd.DataFrame") -> "pd.DataFrame":
    s = sweep.copy()
    s["gate"] = [_gate_label(r) for r in s.to_dict("records")]
    if "keep_largest" not in s.columns:
        s["keep_largest"] = 0
    return s


def sweep_gates(sweep: "pd.DataFrame") -> list[str]:
    """The gate variants of a sweep table (``no gate`` first), for a picker."""
    gates = list(dict.fromkeys(_with_gates(sweep)["gate"]))
    return sorted(gates, key=lambda g: (g != "no gate", not g.startswith("presence"),
                                        [float(x) for x in re.findall(r"\d+(?:\.\d+)?", g)]))


def sweep_matrix(sweep: "pd.DataFrame", gate: str = "no gate", keep_largest: int = 0,
                 baseline: tuple[float, int] = (0.5, 0)) -> dict[str, Any]:
    """Mean Dice over threshold × min_area for one gate variant.

    Returns:
        ``matrix`` (DataFrame: index threshold, columns min_area, values score), ``best`` (dict:
        threshold, min_area, score, and the whole-table best ``overall`` row), ``baseline`` (dict for
        the ``baseline`` setting or None when it is not in the grid).
    """
    if sweep is None or len(sweep) == 0:
        raise ConfigError("this evaluation has no post-processing sweep",
                          hint="re-run the evaluation with the sweep switched on")
    s = _with_gates(sweep)
    sub = s[(s["gate"] == gate) & (s["keep_largest"].fillna(0).astype(int) == int(keep_largest))]
    if sub.empty:
        raise ConfigError(f"no sweep rows for gate {gate!r}", hint=f"use one of: {', '.join(sweep_gates(sweep))}")
    mat = sub.pivot_table(index="threshold", columns="min_area", values="score", aggfunc="max").sort_index()
    mat = mat[sorted(mat.columns)]
    i = int(np.nanargmax(sub["score"].to_numpy())) if sub["score"].notna().any() else 0
    b = sub.iloc[i]
    j = int(np.nanargmax(s["score"].to_numpy())) if s["score"].notna().any() else 0
    o = s.iloc[j]
    best = {"threshold": float(b["threshold"]), "min_area": int(b["min_area"]), "score": float(b["score"]),
            "overall": {"gate": o["gate"], "threshold": float(o["threshold"]), "min_area": int(o["min_area"]),
                        "keep_largest": int(o["keep_largest"]), "score": float(o["score"])}}
    bl = None
    t0, a0 = baseline
    if any(np.isclose(mat.index.to_numpy(dtype=float), t0)) and a0 in mat.columns:
        ti = mat.index[np.isclose(mat.index.to_numpy(dtype=float), t0)][0]
        bl = {"threshold": float(ti), "min_area": int(a0), "score": float(mat.loc[ti, a0])}
    return {"matrix": mat, "best": best, "baseline": bl}


# ----------------------------------------------------------------------------- training runs

def list_runs(runs_root: str | Path) -> list[dict[str, Any]]:
    """Training run folders under ``runs_root`` (``<workspace>/runs``), newest first.

    A run is a folder with ``history.json``, ``history.csv`` or ``status.json``. Returns dicts with
    ``name``, ``path``, ``mtime``, ``state`` (from ``status.json``, else ``unknown``), ``epochs``
    (records in the history), ``has_preview``.
    """

    root = Path(runs_root)
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if not d.is_dir():
            continue
        files = [d / n for n in ("history.json", "history.csv", "status.json")]
        present = [f for f in files if f.is_file()]
        if not present:
            continue
        state, epochs = "unknown", None
        if (d / "status.json").is_file():
            from engine.jobs import job_status

            try:
                state = str(job_status(d, log_lines=0).get("state", "unknown"))  # "died" when the process is gone
            except WorkbenchError:
                state = "unreadable status"
        try:
            epochs = len(load_history(d))
        except WorkbenchError:
            epochs = None
        out.append({"name": d.name, "path": str(d), "mtime": max(f.stat().st_mtime for f in present),
                    "state": state, "epochs": epochs,
                    "has_preview": (d / "preview").is_dir() and any((d / "preview").glob("epoch_*.png"))})
    return sorted(out, key=lambda r: -r["mtime"])


def load_history(run_dir: str | Path) -> "pd.DataFrame":
    """A run's per-epoch records (``history.json``, else ``history.csv``) as a DataFrame sorted by epoch.

    Raises:
        ReadError: the file exists but is not a list of records / not CSV.
    """
    import pandas as pd

    from engine.errors import ReadError
    from engine.fsutil import read_json

    d = Path(run_dir)
    if (d / "history.json").is_file():
        data = read_json(d / "history.json")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ReadError("history.json is not a list of per-epoch records", path=d / "history.json",
                            hint="the run may be from another program; delete the file or pick another run")
        df = pd.DataFrame(data)
    elif (d / "history.csv").is_file():
        try:
            df = pd.read_csv(d / "history.csv")
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise ReadError(f"history.csv cannot be read ({exc})", path=d / "history.csv",
                            hint="delete the file or pick another run") from None
    else:
        return pd.DataFrame(columns=["epoch"])
    if "epoch" not in df.columns:
        df.insert(0, "epoch", np.arange(1, len(df) + 1))
    for c in df.columns:
        if df[c].dtype == object:
            conv = pd.to_numeric(df[c], errors="coerce")
            if conv.notna().sum() == df[c].notna().sum():
                df[c] = conv
    return df.sort_values("epoch", kind="stable").reset_index(drop=True)


def history_series(history: "pd.DataFrame") -> dict[str, list[str]]:
    """Which history columns go in which plot: ``loss`` (train/val losses), ``metrics`` (val Dice, IoU,
    per-class Dice, presence AUC), ``lr``. Only columns present with some value are listed."""
    def have(c: str) -> bool:
        return c in history.columns and history[c].notna().any()

    loss = [c for c in history.columns if (c.endswith("loss") or c.endswith("_loss")) and have(c)]
    loss.sort(key=lambda c: (c != "train_loss", c))
    metrics = [c for c in ("val_dice", "val_iou") if have(c)]
    metrics += sorted(c for c in history.columns if re.fullmatch(r"dice_.+", c) and have(c))
    metrics += [c for c in ("presence_auc", "val_auc", "val_accuracy") if have(c)]
    lr = [c for c in history.columns if (c == "lr" or c.startswith("lr_")) and have(c)]
    return {"loss": loss, "metrics": metrics, "lr": lr}


def preview_frames(run_dir: str | Path) -> dict[str, Any]:
    """``{"frames": [(epoch, path), ...] sorted by epoch, "gif": path or None}`` of ``run_dir/preview``."""
    folder = Path(run_dir) / "preview"
    frames: list[tuple[int, Path]] = []
    if folder.is_dir():
        for p in folder.glob("epoch_*.png"):
            m = re.fullmatch(r"epoch_(\d+)\.png", p.name)
            if m:
                frames.append((int(m.group(1)), p))
    frames.sort()
    gif = folder / "evolution.gif"
    return {"frames": frames, "gif": gif if gif.is_file() else None}


def run_card(run_dir: str | Path) -> dict[str, Any] | None:
    """The best (else last) model card of a run as a dict (``training``, ``metrics``...), or None."""
    from engine.fsutil import read_json

    for sub in ("best", "last"):
        p = Path(run_dir) / sub / "card.json"
        if p.is_file():
            try:
                return dict(read_json(p))
            except WorkbenchError:
                return None
    return None
