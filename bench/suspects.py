"""Benchmark: the label-error finder vs cleanlab on planted label errors, same probabilities for all.

For each dataset (``montgomery`` = ``../shared/data/montgomery-lung``, ``usgra`` =
``../shared/data/usgra-nerve-vessel`` with classes nerve and vessel grouped by scan sequence,
``phantom`` = the synthetic nerve phantom of :mod:`engine.phantoms`, ``demo_data/nerve`` or
generated with seed 0), the bench

1. **plants** label errors into about 15 % of the labelled cases (seed ``--seed``, default 7),
   the seven kinds round-robin over the cases each kind applies to: ``eroded``, ``dilated``
   (by 4–10 % of the component's equivalent radius, at least 2 px: 4–10 px on a 512² lung),
   ``shifted`` (6–15 % of the foreground's equivalent radius, at least 3 px, random direction),
   ``dropped`` (one connected component of at least 10 % of the foreground removed: needs two or
   more components, so the one-nerve phantom has none), ``blob`` (a spurious ellipse of 5–25 % of
   the median component's area away from the structures), ``emptied`` and ``swapped`` (the mask of
   a case of another group). The magnitudes were fixed before the product was tuned. The
   corrupted masks and a manifest live under ``<workspace>/bench/suspects/`` (never in the
   repository); the phantom's own planted near-duplicate conflicts are left out first (they are
   label errors the bench did not plant);
2. trains a **k-fold cross-fit** (:mod:`engine.curation.crossfit`, a small U-Net on the corrupted
   labels, cached in the workspace, so reruns are fast) and predicts every case once per fold
   model: every ranker gets the same out-of-fold probabilities;
3. **ranks** the cases with (a) the product (:func:`engine.curation.suspects.find_suspects`),
   (b) the old case queue's model term (1 − mean foreground Dice of the out-of-fold prediction),
   (c) cleanlab ``segmentation.rank.get_label_quality_scores`` (softmin) and (d) cleanlab
   ``segmentation.filter.find_label_issues``, flagged pixels per image. cleanlab needs one array
   for the whole dataset, so it gets labels (nearest) and probabilities (bilinear) resized to the
   dataset's most common image size (identity for Montgomery and the phantom);
4. prints and saves **AP, precision at k (k = number planted) and recall at 2k**, per dataset and
   per kind (a kind's figures rank that kind's cases among the clean ones), the product's type
   accuracy, and the times.

**Calibration never sees the bench's truth.** The product fits its combination at run time on
its *own* planted corruptions (:func:`engine.curation.suspects.plant`, seed 20251, different
magnitudes from the bench's) of the dataset *as given* — the bench's corrupted labels included,
unknown to it — against the labels as given. Which cases the bench corrupted, and how, is only
used to score the rankings.

Run::

    python bench/suspects.py [--datasets montgomery usgra phantom] [--folds 5] [--seed 7]

cleanlab is AGPL and an optional bench-only extra (``pip install cleanlab``); without it the
cleanlab rows are skipped with a message. Writes ``bench/results/suspects.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Timer, load_avg, save_result  # noqa: E402

from engine.augment import AugmentConfig, Preprocess  # noqa: E402
from engine.curation.crossfit import CrossFitConfig  # noqa: E402
from engine.models import ModelSpec  # noqa: E402

DATA = REPO.parent / "shared" / "data"
KINDS = ("eroded", "dilated", "shifted", "dropped", "blob", "emptied", "swapped")
RANKERS = ("product", "dice_term", "cleanlab_softmin", "cleanlab_issues")
#: Bumped when the planting changes (new folder: new manifest, new cross-fit).
PLANT_VERSION = 2


@dataclass
class BenchSet:
    """One dataset of the bench and the cross-fit that judges it."""

    name: str
    path: Path
    options: dict[str, Any]
    crossfit: CrossFitConfig
    exclude_phantom_pairs: bool = False
    notes: list[str] = field(default_factory=list)


def bench_sets(folds: int, epochs: int | None) -> list[BenchSet]:
    def cf(size: int, width: int, aug: str, ep: int, pre: dict[str, Any] | None = None) -> CrossFitConfig:
        return CrossFitConfig(k=folds, seed=0, model=ModelSpec(arch="unet_classic", base_channels=width),
                              preprocess=Preprocess(size=(size, size), **(pre or {})),
                              augment=AugmentConfig.preset(aug), epochs=epochs or ep, batch_size=8, lr=2e-3,
                              device="cpu")

    phantom = REPO / "demo_data" / "nerve"
    return [
        BenchSet("montgomery", DATA / "montgomery-lung", {"label_names": ["lung"]},
                 cf(128, 8, "xray", 30, {"normalize": "standardize", "clahe": 2.0})),
        BenchSet("usgra", DATA / "usgra-nerve-vessel",
                 {"label_names": ["nerve", "vessel"], "group_regex": r"^(\d{3})\d$"},
                 cf(128, 8, "ultrasound", 30, {"normalize": "standardize"})),
        BenchSet("phantom", phantom, {}, cf(128, 8, "ultrasound", 20, {"normalize": "standardize"}),
                 exclude_phantom_pairs=True),
    ]


# ------------------------------------------------------------------------------------------ planting

def _eq_r(area: float) -> float:
    return math.sqrt(max(area, 1.0) / math.pi)


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def _translate(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    src = m[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def _components(m: np.ndarray) -> list[tuple[int, np.ndarray]]:
    from scipy import ndimage as ndi

    out = []
    for c in np.unique(m[m > 0]):
        lab, n = ndi.label(m == c, structure=np.ones((3, 3)))
        out += [(int(c), lab == i) for i in range(1, n + 1)]
    return out


def corrupt(m: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray) -> np.ndarray | None:
    """The bench's own corruption of a uint8 (H,W) label map (None when the kind does not apply)."""
    from scipy import ndimage as ndi

    fg = m > 0
    if kind != "blob" and not fg.any():
        return None
    comps = [(c, cm) for c, cm in _components(m) if cm.sum() >= 0.02 * max(1, fg.sum())]
    if kind in ("eroded", "dilated"):
        out = m.copy() if kind == "dilated" else np.zeros_like(m)
        for c in np.unique(m[fg]):
            cm = m == c
            r = max(2, int(round(rng.uniform(0.04, 0.10) * _eq_r(max(s.sum() for cc, s in comps if cc == c)))))
            if kind == "eroded":
                out[ndi.binary_erosion(cm, _disk(r))] = c
            else:
                out[ndi.binary_dilation(cm, _disk(r)) & (out == 0)] = c
        return out if out.any() and not np.array_equal(out, m) else None
    if kind == "shifted":
        d = max(3.0, rng.uniform(0.06, 0.15) * _eq_r(fg.sum()))
        a = rng.uniform(0, 2 * math.pi)
        return _translate(m, int(round(d * math.sin(a))), int(round(d * math.cos(a))))
    if kind == "dropped":
        big = [(c, cm) for c, cm in comps if cm.sum() >= 0.1 * fg.sum()]
        if len(big) < 2:
            return None
        c, cm = big[int(rng.integers(len(big)))]
        out = m.copy()
        out[cm] = 0
        return out
    if kind == "blob":
        h, w = m.shape
        if comps:
            c = comps[int(rng.integers(len(comps)))][0]
            ref = float(np.median([cm.sum() for _, cm in comps]))
        else:
            c, ref = 1, 0.02 * h * w
        area = max(30.0, rng.uniform(0.05, 0.25) * ref)
        ry = math.sqrt(area / math.pi) * rng.uniform(0.75, 1.33)
        rx = area / math.pi / ry
        near = ndi.binary_dilation(fg, iterations=5)
        yy, xx = np.ogrid[:h, :w]
        for _ in range(50):
            cy, cx = rng.uniform(ry + 2, h - ry - 2), rng.uniform(rx + 2, w - rx - 2)
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            if not (blob & near).any():
                out = m.copy()
                out[blob] = c
                return out
        return None
    if kind == "emptied":
        return np.zeros_like(m)
    if kind == "swapped":
        import cv2

        o = other if other.shape == m.shape else cv2.resize(other, (m.shape[1], m.shape[0]),
                                                             interpolation=cv2.INTER_NEAREST)
        return None if np.array_equal(o > 0, fg) else o.astype(np.uint8)
    raise ValueError(kind)


def plant_dataset(bs: BenchSet, work: Path, seed: int, fraction: float) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """Write corrupted masks + a manifest; returns ``(manifest, {case_id: kind}, info)``. Cached by seed."""

    from PIL import Image

    from engine.datasets import open_dataset
    from engine.datasets.base import Case, MaskSource
    from engine.datasets.manifest import write_manifest
    from engine.fsutil import atomic_write_json, read_json_dict, safe_child

    folder = work / bs.name / f"v{PLANT_VERSION}-seed{seed}"
    manifest = folder / "planted.json"
    truth_path = folder / "truth.json"
    done = read_json_dict(truth_path)
    if manifest.is_file() and done.get("fraction") == fraction:
        return manifest, dict(done["planted"]), dict(done["info"])
    ds = open_dataset(bs.path, options=bs.options)
    cases = ds.labelled_cases()
    excluded: list[str] = []
    if bs.exclude_phantom_pairs:
        from engine.phantoms import load_planted_pairs

        for p in load_planted_pairs(bs.path):
            if p["kind"] in ("conflict", "disagree"):
                excluded += [p["a"], p["b"]]
        cases = [c for c in cases if c.case_id not in set(excluded)]
    rng = np.random.default_rng(seed)
    n_plant = int(round(fraction * len(cases)))
    order = [cases[i] for i in rng.permutation(len(cases))]
    masks = {c.case_id: ds.load_mask(c) for c in cases}
    planted: dict[str, str] = {}
    new_masks: dict[str, np.ndarray] = {}
    k = 0
    skipped_kinds: set[str] = set()
    for kind_round in range(10 * len(KINDS)):
        if len(planted) >= n_plant or len(skipped_kinds) == len(KINDS):
            break
        kind = KINDS[kind_round % len(KINDS)]
        if kind in skipped_kinds:
            continue
        made = False
        for c in order[k:] + order[:k]:
            if c.case_id in planted:
                continue
            others = [o for o in cases if o.group_id != c.group_id and masks[o.case_id].any()]
            other = masks[others[int(rng.integers(len(others)))].case_id]
            bad = corrupt(masks[c.case_id], kind, rng, other)
            if bad is None:
                continue
            planted[c.case_id] = kind
            new_masks[c.case_id] = bad
            made = True
            k = (order.index(c) + 1) % len(order)
            break
        if not made:
            skipped_kinds.add(kind)
    out_cases = []
    mdir = folder / "masks"
    mdir.mkdir(parents=True, exist_ok=True)
    for c in cases:
        if c.case_id in new_masks:
            path = safe_child(mdir, c.case_id, ".png")
            Image.fromarray(new_masks[c.case_id]).save(path)
            m = new_masks[c.case_id]
            out_cases.append(Case(c.case_id, c.group_id, c.image_path, MaskSource("file", str(path), (), "labels"),
                                  True, bool(m.any()), int((m > 0).sum()), c.height, c.width, c.split, dict(c.meta)))
        else:
            out_cases.append(c)
    write_manifest(manifest, ds, out_cases, dropped=[(e, "phantom's own planted conflict") for e in excluded],
                   info={"bench": "suspects", "seed": seed})
    counts = {kd: sum(v == kd for v in planted.values()) for kd in KINDS}
    info = {"n_cases": len(cases), "n_planted": len(planted), "by_kind": counts, "n_excluded": len(excluded),
            "not_plantable": sorted(skipped_kinds)}
    atomic_write_json(truth_path, {"fraction": fraction, "planted": planted, "info": info})
    return manifest, planted, info


# ------------------------------------------------------------------------------------------ metrics

def ranking_metrics(ids: list[str], scores: dict[str, float], truth: dict[str, str]) -> dict[str, Any]:
    """AP, P@k (k = planted), R@2k overall and per kind (that kind vs the clean cases)."""
    from sklearn.metrics import average_precision_score

    def block(sel: list[str], positive: set[str]) -> dict[str, Any]:
        y = np.array([c in positive for c in sel], bool)
        s = np.array([scores[c] for c in sel], float)
        k = int(y.sum())
        if k == 0:
            return {"n": 0}
        order = np.argsort(-s, kind="stable")
        return {"n": k, "ap": round(float(average_precision_score(y, s)), 4),
                "p_at_k": round(float(y[order[:k]].mean()), 4),
                "r_at_2k": round(float(y[order[:2 * k]].sum() / k), 4)}

    out = {"all": block(ids, set(truth))}
    clean = [c for c in ids if c not in truth]
    for kind in KINDS:
        pos = {c for c, kd in truth.items() if kd == kind}
        out[kind] = block(clean + sorted(pos), pos) if pos else {"n": 0}
    return out


# ------------------------------------------------------------------------------------------ rankers

def dice_term(labels: dict[str, np.ndarray], probs: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """1 − mean foreground-class Dice of the argmax prediction (both empty = 1), the old queue's model term."""
    out = {}
    for cid, lab in labels.items():
        pred = probs[cid].argmax(0)
        ds = []
        for c in range(1, k):
            a, b = lab == c, pred == c
            den = int(a.sum() + b.sum())
            ds.append(1.0 if den == 0 else 2.0 * int((a & b).sum()) / den)
        out[cid] = 1.0 - float(np.mean(ds))
    return out


def cleanlab_rankers(labels: dict[str, np.ndarray], probs: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, float]],
                                                                                          dict[str, float], str]:
    """cleanlab's two segmentation rankers on one stacked array (resized to the most common size)."""
    try:
        from cleanlab.segmentation.filter import find_label_issues
        from cleanlab.segmentation.rank import get_label_quality_scores
    except ImportError:
        return {}, {}, "cleanlab is not installed (`pip install cleanlab`, AGPL, bench-only): its rows are skipped"
    from collections import Counter

    import cv2

    ids = list(labels)
    size = Counter(labels[c].shape for c in ids).most_common(1)[0][0]
    h, w = size

    def fit_l(a: np.ndarray) -> np.ndarray:
        return a if a.shape == size else cv2.resize(a, (w, h), interpolation=cv2.INTER_NEAREST)

    def fit_p(p: np.ndarray) -> np.ndarray:
        return p if p.shape[1:] == size else np.stack([cv2.resize(ch, (w, h), interpolation=cv2.INTER_LINEAR)
                                                       for ch in p])

    lab = np.stack([fit_l(labels[c]) for c in ids]).astype(np.int64)
    pp = np.stack([fit_p(probs[c]) for c in ids]).astype(np.float32)
    pp /= pp.sum(1, keepdims=True)
    secs: dict[str, float] = {}
    with Timer() as t:
        img_scores, _ = get_label_quality_scores(lab, pp, method="softmin", verbose=False)
    secs["cleanlab_softmin"] = round(t.seconds, 2)
    with Timer() as t:
        issues = find_label_issues(lab, pp, verbose=False)
    secs["cleanlab_issues"] = round(t.seconds, 2)
    soft = {c: -float(s) for c, s in zip(ids, img_scores)}
    cnt = {c: float(n) for c, n in zip(ids, issues.reshape(len(ids), -1).sum(1))}
    note = f"cleanlab {__import__('cleanlab').__version__} on {len(ids)} images at {h}x{w}"
    return {"cleanlab_softmin": soft, "cleanlab_issues": cnt}, secs, note


# ------------------------------------------------------------------------------------------ one dataset

def run_set(bs: BenchSet, work: Path, seed: int, fraction: float, quiet: bool) -> dict[str, Any]:
    from engine.curation.crossfit import honest_probabilities, load_crossfit
    from engine.curation.suspects import CORRUPTION_TYPE, SuspectConfig, find_suspects
    from engine.datasets import open_dataset
    from engine.workspace import Workspace

    manifest, truth, info = plant_dataset(bs, work, seed, fraction)
    ds = open_dataset(manifest, workspace=Workspace())
    cached = load_crossfit(ds, bs.crossfit) is not None
    progress = None
    if not quiet:
        def progress(done: int, total: int, message: str = "") -> None:
            if total and (done == total or done % max(1, total // 20) == 0):
                print(f"  [{bs.name}] {done}/{total} {message}", flush=True)
    with Timer() as t_probs:
        ps = honest_probabilities(ds, crossfit_config=bs.crossfit, device="cpu", progress=progress)
    if ps.crossfit is None or ps.crossfit.stale_masks:
        raise SystemExit(f"{bs.name}: the cached cross-fit was trained on other labels; delete {work / bs.name}")
    ids = ps.case_ids
    with Timer() as t_prod:
        rep = find_suspects(ds, ps, SuspectConfig(), use_cache=False, save=False)
    prod = {s.case_id: s.score for s in rep.cases}
    labels = {c: np.minimum(ds.load_mask(c), ds.num_classes - 1) for c in ids}
    probs = {c: ps.case(c).probs for c in ids}
    rankings: dict[str, dict[str, float]] = {"product": prod}
    secs: dict[str, float] = {"product": round(t_prod.seconds, 2)}
    with Timer() as t:
        rankings["dice_term"] = dice_term(labels, probs, ds.num_classes)
    secs["dice_term"] = round(t.seconds, 2)
    cl, cl_secs, cl_note = cleanlab_rankers(labels, probs)
    rankings.update(cl)
    secs.update(cl_secs)
    metrics = {name: ranking_metrics(ids, sc, truth) for name, sc in rankings.items()}
    typed = {kind: [rep.get(c).type for c, kd in truth.items() if kd == kind and rep.get(c) is not None]
             for kind in KINDS}
    type_acc = {kind: {"n": len(v), "correct": sum(t == CORRUPTION_TYPE[kind] for t in v),
                       "found_as": {t: v.count(t) for t in sorted(set(v))}} for kind, v in typed.items() if v}
    oof = dice_term(labels, probs, ds.num_classes)
    clean_dice = [1 - v for c, v in oof.items() if c not in truth]
    cfs = ps.crossfit
    return {
        "dataset": bs.name, "path": os.path.relpath(bs.path, REPO), "planting": info, "seed": seed,
        "crossfit": {"config": bs.crossfit.to_dict(), "describe": bs.crossfit.describe(), "cached": cached,
                     "train_seconds_per_fold": list(cfs.seconds) if cfs else None,
                     "train_seconds": round(sum(cfs.seconds), 1) if cfs else None,
                     "crossfit_and_predict_seconds": round(t_probs.seconds, 2), "predict": ps.seconds,
                     "oof_mean_dice_clean_cases": round(float(np.mean(clean_dice)), 4)},
        "n_cases": len(ids), "n_planted": len(truth), "metrics": metrics, "seconds": secs,
        "product_stats": rep.stats, "calibration": {k: rep.calibration[k] for k in (
            "features", "weights", "n_negative", "n_positive", "n_dropped", "kinds", "type_accuracy")},
        "type_accuracy": type_acc, "cleanlab": cl_note or None,
        "top": [{"case_id": s.case_id, "score": round(s.score, 4), "type": s.type, "planted": truth.get(s.case_id)}
                for s in rep.cases[:max(10, len(truth))]],
    }


def print_set(r: dict[str, Any]) -> None:
    cf = r["crossfit"]
    print(f"\n{r['dataset']}: {r['n_cases']} cases, {r['n_planted']} planted {r['planting']['by_kind']} "
          f"(not plantable: {', '.join(r['planting']['not_plantable']) or 'none'})")
    print(f"  probabilities: {cf['config']['k']}-fold cross-fit, {cf['describe']}; "
          f"train {cf['train_seconds']} s ({'cached' if cf['cached'] else 'trained now'}), "
          f"cross-fit + predict {cf['crossfit_and_predict_seconds']} s (predict {cf['predict']['predict']} s); "
          f"out-of-fold Dice on clean cases "
          f"{cf['oof_mean_dice_clean_cases']}")
    if r.get("cleanlab"):
        print(f"  {r['cleanlab']}")
    head = f"  {'ranker':<18}{'AP':>7}{'P@k':>7}{'R@2k':>7}{'s':>8}  " + " ".join(f"{k[:7]:>15}" for k in KINDS)
    print(head)
    print(f"  {'':<18}{'':>7}{'':>7}{'':>7}{'':>8}  " + " ".join(f"{'AP/P@k/R@2k':>15}" for _ in KINDS))
    for name, m in r["metrics"].items():
        a = m["all"]
        cells = []
        for k in KINDS:
            b = m[k]
            cells.append(f"{b['ap']:.2f}/{b['p_at_k']:.2f}/{b['r_at_2k']:.2f}".rjust(15) if b.get("n") else
                         f"{'n/a':>15}")
        print(f"  {name:<18}{a['ap']:>7.3f}{a['p_at_k']:>7.3f}{a['r_at_2k']:>7.3f}{r['seconds'].get(name, 0):>8.1f}  "
              + " ".join(cells))
    acc = r["type_accuracy"]
    print("  product type: " + ", ".join(f"{k} {v['correct']}/{v['n']}" for k, v in acc.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=["montgomery", "usgra", "phantom"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, help="epochs per fold model (default: per dataset)")
    ap.add_argument("--seed", type=int, default=7, help="planting seed")
    ap.add_argument("--fraction", type=float, default=0.15, help="fraction of cases corrupted")
    ap.add_argument("--threads", type=int, help="torch threads")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.workspace import Workspace

    work = Workspace().subdir("bench", "suspects")
    results: dict[str, Any] = {"datasets": {}, "load_before": load_avg(), "torch_threads": torch.get_num_threads(),
                               "calibration": "the product calibrates on its own plants (engine.curation.suspects."
                                              "plant, seed 20251) of the dataset as given; the bench's truth is "
                                              "used only to score the rankings"}
    for bs in bench_sets(args.folds, args.epochs):
        if bs.name not in args.datasets:
            continue
        if not bs.path.exists():
            msg = f"{bs.name}: {bs.path} not found; skipped"
            if bs.name == "phantom":
                msg += " (generate it with `python -m engine demo`)"
            print(msg)
            results["datasets"][bs.name] = {"skipped": msg}
            continue
        t0 = time.perf_counter()
        r = run_set(bs, work, args.seed, args.fraction, args.quiet)
        r["seconds_total"] = round(time.perf_counter() - t0, 1)
        results["datasets"][bs.name] = r
        print_set(r)
    results["load_after"] = load_avg()
    out = save_result("suspects", results, path=Path(args.out) if args.out else None)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
