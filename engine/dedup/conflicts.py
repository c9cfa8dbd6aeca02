"""Find near-duplicate images and their contradictory masks: :func:`find_conflicts`.

Pipeline (each stage timed in ``report.timing``):

1. **fingerprints** — decode each image once (thread pool), thumb at the SSIM size, local-
   structure descriptor, perceptual hash; cached per dataset so warm runs read no image
   (:mod:`engine.dedup.fingerprint`).
2. **search** — k nearest neighbours by descriptor cosine within each subject group
   (``scope="group"``) or across the dataset (``"global"``), above a similarity floor;
   exact blocked matrix products, or faiss/hnswlib when installed and a scope is huge
   (:mod:`engine.dedup.search`). No all-pairs SSIM.
3. **ssim** — scikit-image-equal SSIM on the candidates only, vectorised over pairs
   (:mod:`engine.dedup.ssim`); pairs at or above ``ssim_threshold`` are near-duplicates.
4. **masks** — load the masks of verified pairs: category, Dice, areas, severity
   (:mod:`engine.dedup.scoring`); union-find merges pairs into near-duplicate groups.
5. **ceiling** — the label-noise ceiling per group and for the dataset.
6. **leakage** — groups split across cross-validation folds (:mod:`engine.dedup.leakage`).

The case study ran all-pairs SSIM at reduced resolution and silently dropped the empty image
of each conflicting pair; here every pair is reported, ordered for review by severity, and
nothing is dropped unless a reviewer (or an explicit policy) says so
(:func:`engine.curation.build_manifest`).

Example:
    >>> from engine.datasets import open_dataset
    >>> ds = open_dataset("demo_data/nerve")                                  # doctest: +SKIP
    >>> rep = find_conflicts(ds, ConflictConfig(scope="group", ssim_threshold=0.99))  # doctest: +SKIP
    >>> rep.pairs[0]["category"], rep.ceiling["dataset"]                      # doctest: +SKIP
    ('conflict', 0.996)
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from engine.config import JsonConfig
from engine.errors import ConfigError, ReadError, WorkbenchError, unknown_name
from engine.fsutil import atomic_write_json, read_json
from engine.parallel import parallel_map
from engine.progress import ProgressFn, scaled

if TYPE_CHECKING:
    from engine.datasets.base import Case, Dataset
    from engine.dedup.maskcache import MaskCache

REPORT_FORMAT = "segwb-conflicts"
REPORT_VERSION = 1
LATEST_NAME = "conflicts.json"
SCOPES = ("group", "global")


@dataclass(frozen=True)
class ConflictConfig(JsonConfig):
    """Options of :func:`find_conflicts`.

    Attributes:
        scope: ``group`` (pairs only within one subject/patient) or ``global`` (whole dataset).
        ssim_threshold: SSIM at or above which two images are near-duplicates.
        ssim_size: (height, width) the images are resized to for SSIM (default 64×80).
        fp_dim: descriptor dimension (random projection of the 7×7 local structure; 0 = none).
        candidate_k: neighbours per image passed to SSIM (the top ones above the floor).
        candidate_floor: minimum descriptor cosine for a candidate; None = automatic,
            ``clip(ssim_threshold − 0.3, 0.2, 0.9)`` (0.69 at the default 0.99). Calibration:
            on the 5,640-image phantom, every pair with SSIM ≥ 0.8 had cosine ≥ 0.77 and every
            pair ≥ 0.7 had ≥ 0.58 (planted twins ≥ 0.9997); the real Kaggle twin 2_5/2_13
            (SSIM 0.967) has 0.98. So the automatic floor keeps a margin ≥ 0.19 below what
            pairs at the threshold reach.
        flat_texture: images with less local texture (std) are paired by brightness instead.
        disagree_dice: both masks non-empty and Dice below this → ``disagree``.
        use_cache: reuse/update the fingerprint cache in the dataset's workspace folder.
        ann: nearest-neighbour backend: ``auto``, ``exact``, ``faiss``, ``hnswlib``.
        ann_min_size: ``auto`` uses an installed ANN library from this many images per scope.
        block_mb: memory per block of the exact search.
        workers: image-decoding threads (0 = automatic).
        folds_k, folds_seed: the grouped k-fold split used for the leakage report.
        ceiling_max_members: member masks tried as candidates per group in the ceiling.
    """

    scope: str = "group"
    ssim_threshold: float = 0.99
    ssim_size: tuple[int, int] = (64, 80)
    fp_dim: int = 256
    candidate_k: int = 8
    candidate_floor: float | None = None
    flat_texture: float = 0.01
    disagree_dice: float = 0.5
    use_cache: bool = True
    ann: str = "auto"
    ann_min_size: int = 100_000
    block_mb: float = 64.0
    workers: int = 0
    folds_k: int = 5
    folds_seed: int = 0
    ceiling_max_members: int = 64

    def __post_init__(self) -> None:
        from engine.dedup.search import BACKENDS

        if self.scope not in SCOPES:
            raise unknown_name("duplicate-search scope", self.scope, SCOPES)
        if not 0.0 < float(self.ssim_threshold) <= 1.0:
            raise ConfigError(f"ssim_threshold must be in (0, 1], got {self.ssim_threshold}", hint="e.g. 0.99")
        if len(self.ssim_size) != 2 or min(int(v) for v in self.ssim_size) < 7:
            raise ConfigError(f"ssim_size must be two sizes ≥ 7 (the SSIM window), got {self.ssim_size}",
                              hint="e.g. 64x80")
        if int(self.candidate_k) < 1:
            raise ConfigError(f"candidate_k must be ≥ 1, got {self.candidate_k}", hint="e.g. 8")
        if self.candidate_floor is not None and not -1.0 <= float(self.candidate_floor) <= 1.0:
            raise ConfigError(f"candidate_floor must be in [-1, 1], got {self.candidate_floor}", hint="e.g. 0.5")
        if not 0.0 <= float(self.disagree_dice) <= 1.0:
            raise ConfigError(f"disagree_dice must be in [0, 1], got {self.disagree_dice}", hint="e.g. 0.5")
        if self.ann not in BACKENDS:
            raise unknown_name("nearest-neighbour backend", self.ann, BACKENDS)
        if int(self.fp_dim) < 0 or float(self.block_mb) <= 0 or int(self.workers) < 0:
            raise ConfigError("fp_dim and workers must be ≥ 0 and block_mb > 0",
                              hint="use the defaults unless you know why")


def effective_floor(cfg: ConflictConfig) -> float:
    """The candidate floor used: ``cfg.candidate_floor`` or ``clip(threshold − 0.3, 0.2, 0.9)``."""
    if cfg.candidate_floor is not None:
        return float(cfg.candidate_floor)
    return float(np.clip(float(cfg.ssim_threshold) - 0.3, 0.2, 0.9))


@dataclass
class ConflictReport:
    """Result of :func:`find_conflicts` (JSON via :meth:`to_dict` / :meth:`save`).

    Attributes:
        pairs: verified near-duplicate pairs, most severe first; each a dict with ``a``, ``b``
            (case ids, ``a < b``), ``ssim``, ``category``, ``mask_dice``, ``area_a``, ``area_b``,
            ``area_ratio``, ``severity``, ``group`` (near-duplicate group id), ``subjects``,
            ``fp_similarity``, ``phash_distance``.
        groups: near-duplicate groups (union-find over pairs): ``id``, ``members``, ``size``,
            ``categories`` (counts), ``ceiling``, ``best_mask``, ``max_severity``, ``subjects``.
        ceiling: label-noise ceiling (see :mod:`engine.dedup.scoring`).
        leakage: groups spanning several folds (see :mod:`engine.dedup.leakage`).
        timing: seconds per stage. stats: counts, backend, cache use. config: the options.
        dataset: root, layout, number of cases. bad_files: unreadable images.
    """

    pairs: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    ceiling: dict[str, Any]
    leakage: dict[str, Any]
    timing: dict[str, float]
    stats: dict[str, Any]
    config: dict[str, Any]
    dataset: dict[str, Any]
    bad_files: list[dict[str, str]] = field(default_factory=list)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "created": self.created,
                "dataset": self.dataset, "config": self.config, "stats": self.stats, "timing": self.timing,
                "ceiling": self.ceiling, "leakage": self.leakage, "groups": self.groups, "pairs": self.pairs,
                "bad_files": self.bad_files}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | Path | None = None) -> "ConflictReport":
        if not isinstance(data, Mapping) or data.get("format") != REPORT_FORMAT or "pairs" not in data:
            raise ReadError("not a conflicts report", path=path,
                            hint="write one with `python -m engine conflicts DATASET --json FILE`")
        if int(data.get("version", 0)) > REPORT_VERSION:
            raise ReadError(f"conflicts report version {data.get('version')} is newer than this program",
                            path=path, hint="upgrade the workbench or recompute the report")
        return cls(pairs=list(data["pairs"]), groups=list(data.get("groups", [])),
                   ceiling=dict(data.get("ceiling", {})), leakage=dict(data.get("leakage", {})),
                   timing=dict(data.get("timing", {})), stats=dict(data.get("stats", {})),
                   config=dict(data.get("config", {})), dataset=dict(data.get("dataset", {})),
                   bad_files=list(data.get("bad_files", [])), created=str(data.get("created", "")))

    def save(self, path: str | Path, indent: int | None = 1) -> Path:
        """Write the report as JSON atomically (not fsynced: a rescan recreates it, and a damaged
        copy is not loaded)."""
        atomic_write_json(path, self.to_dict(), indent=indent, durable=False)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "ConflictReport":
        return cls.from_dict(read_json(path), path)

    def pair_index(self) -> dict[tuple[str, str], dict[str, Any]]:
        """``{(a, b): pair}`` with ``a < b``."""
        return {(p["a"], p["b"]): p for p in self.pairs}

    def summary_lines(self) -> list[str]:
        """Human-readable summary (the CLI prints it)."""
        cats = self.stats.get("categories", {})
        c = self.ceiling
        lines = [
            f"images      {self.stats.get('n_images', 0)} fingerprinted "
            f"({self.stats.get('cache_hits', 0)} from cache), "
            f"{len(self.bad_files)} unreadable",
            f"search      scope={self.config.get('scope')}, {self.stats.get('n_candidates', 0)} candidate pairs "
            f"({self.stats.get('backend')})",
            f"verified    {len(self.pairs)} pairs with SSIM ≥ {self.config.get('ssim_threshold')} at "
            f"{'x'.join(str(v) for v in self.config.get('ssim_size', []))}, in {len(self.groups)} groups",
            "categories  " + ", ".join(f"{k} {cats.get(k, 0)}" for k in ("conflict", "disagree", "agree",
                                                                        "agree_empty", "unlabelled")),
        ]
        if c.get("n_labelled"):
            mean_aff = c.get("mean_affected")
            lines.append(f"ceiling     {c['n_affected']} affected cases; best possible mean Dice on them "
                         f"{mean_aff:.4f}" if mean_aff is not None else "ceiling     no affected cases")
            lines.append(f"            dataset-wide ceiling {c['dataset']:.4f} over {c['n_labelled']} labelled cases "
                         f"(label noise costs {100 * (1 - c['dataset']):.2f} Dice points)")
        lk = self.leakage
        if lk.get("available"):
            lines.append(f"leakage     {lk['n_groups_split']} groups split across folds "
                         f"({lk['n_cases_in_split_groups']} cases; {lk.get('source')})")
        else:
            lines.append(f"leakage     not computed: {lk.get('reason', 'no folds')}")
        t = self.timing
        lines.append("timing      " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
        return lines


def latest_report_path(ds: Dataset) -> Path | None:
    """Where the latest report of a dataset is kept (``workdir/conflicts.json``), or None."""
    workdir = getattr(ds, "workdir", None)
    return Path(workdir) / LATEST_NAME if workdir is not None else None


def load_latest_report(ds: Dataset) -> ConflictReport | None:
    """The report saved by the last :func:`find_conflicts` on this dataset, or None."""
    path = latest_report_path(ds)
    if path is None or not path.exists():
        return None
    try:
        return ConflictReport.load(path)
    except ReadError:
        return None


def find_conflicts(ds: Dataset, config: ConflictConfig | None = None, progress: ProgressFn | None = None, *,
                   folds: Mapping[str, int] | None = None, folds_source: str | None = None,
                   save_latest: bool = True) -> ConflictReport:
    """Find near-duplicate images, score their masks, and report ceiling and leakage.

    Args:
        ds: an :class:`engine.datasets.Dataset`.
        config: options (default :class:`ConflictConfig`).
        progress: ``(done, total, message)`` callback.
        folds: ``{case_id: fold}`` for the leakage report (default: grouped k-fold).
        folds_source: description of ``folds`` for the report.
        save_latest: also write the report to ``ds.workdir/conflicts.json`` (for the review page).

    Returns:
        :class:`ConflictReport`.

    Example:
        >>> rep = find_conflicts(ds, ConflictConfig(ssim_threshold=0.95))    # doctest: +SKIP
        >>> [(p["a"], p["b"], p["category"]) for p in rep.pairs][:1]         # doctest: +SKIP
        [('2_13', '2_5', 'agree_empty')]
    """
    from engine.dedup.fingerprint import compute_fingerprints
    from engine.dedup.leakage import leakage_report
    from engine.dedup.maskcache import CandidateCache, MaskCache, PairCache
    from engine.dedup.scoring import CATEGORIES
    from engine.dedup.search import search_candidates
    from engine.dedup.ssim import ssim_pairs_threaded
    from engine.parallel import limit_blas

    cfg = config or ConflictConfig()
    timing: dict[str, float] = {}
    t_start = time.perf_counter()
    size = (int(cfg.ssim_size[0]), int(cfg.ssim_size[1]))

    # 1. fingerprints
    t = time.perf_counter()
    fps = compute_fingerprints(ds, size, cfg.fp_dim, use_cache=cfg.use_cache, workers=cfg.workers,
                               progress=scaled(progress, 0.0, 0.85))
    timing["fingerprints"] = time.perf_counter() - t
    n = len(fps.case_ids)
    cases = [ds.case(c) for c in fps.case_ids]

    # 2. candidate search
    t = time.perf_counter()
    if cfg.scope == "group":
        groups_of: dict[str, list[int]] = {}
        for r, c in enumerate(cases):
            groups_of.setdefault(c.group_id, []).append(r)
        scopes = [np.asarray(v, np.int64) for v in groups_of.values() if len(v) > 1]
    else:
        scopes = [np.arange(n, dtype=np.int64)] if n > 1 else []
    floor = effective_floor(cfg)
    ccache = CandidateCache(fps.folder if cfg.use_cache else None, cfg.scope, size)
    ckey = ccache.key(fps, scopes, (cfg.candidate_k, floor, cfg.ann, cfg.ann_min_size, cfg.flat_texture))
    cand = ccache.load(ckey)
    cand_cached = cand is not None
    if cand is None:
        cand = search_candidates(fps.fp, scopes, k=cfg.candidate_k, floor=floor, backend=cfg.ann,
                                 ann_min_size=cfg.ann_min_size, block_mb=cfg.block_mb, texture=fps.texture,
                                 mean=fps.mean, flat_texture=cfg.flat_texture)
        ccache.save(ckey, cand)
    timing["search"] = time.perf_counter() - t
    if progress:
        scaled(progress, 0.85, 0.9)(1, 1, f"{cand.i.size} candidate pairs")

    # 3. SSIM on candidates (pairs of unchanged files come from the pair cache)
    t = time.perf_counter()
    pcache = PairCache(fps.folder if cfg.use_cache else None, size)
    assert fps.keys is not None
    ssim = pcache.lookup(fps.keys[cand.i], fps.keys[cand.j])
    miss = np.flatnonzero(np.isnan(ssim))
    i_cached = cand.i.size - miss.size
    if miss.size:
        ssim[miss] = ssim_pairs_threaded(fps.thumbs, cand.i[miss], cand.j[miss], data_range=1.0, workers=cfg.workers)
        pcache.add(fps.keys[cand.i[miss]], fps.keys[cand.j[miss]], ssim[miss])
    pcache.save(live_keys=set((fps.cache_keys if fps.cache_keys is not None else fps.keys).tolist()))
    ok = ssim >= cfg.ssim_threshold
    vi, vj, vs, vsim = cand.i[ok], cand.j[ok], ssim[ok], cand.sim[ok]
    timing["ssim"] = time.perf_counter() - t
    if progress:
        scaled(progress, 0.9, 0.95)(1, 1, f"{vi.size} near-duplicate pairs")

    # 4. masks of verified pairs, 5. groups and ceiling (small matrix products: one BLAS thread)
    with limit_blas(1):
        t = time.perf_counter()
        involved = sorted(set(vi.tolist()) | set(vj.tolist()))
        mcache = MaskCache(fps.folder if cfg.use_cache else None, _options_key(ds))
        masks = _load_masks(ds, [cases[r] for r in involved], cfg.workers, mcache)
        mcache.save()
        mask_of = {r: masks[cases[r].case_id] for r in involved}
        pair_rows, uf = _score_pairs(ds, cfg, cases, fps, mask_of, vi, vj, vs, vsim)
        timing["masks"] = time.perf_counter() - t
        t = time.perf_counter()
        groups_out, ceiling = _groups_and_ceiling(cfg, cases, uf, involved, mask_of, pair_rows)
        timing["ceiling"] = time.perf_counter() - t

    # 6. leakage
    t = time.perf_counter()
    lab_cases = [c for c in ds.cases if c.labelled]
    dup_members = [g["members"] for g in groups_out]
    args = ([c.case_id for c in lab_cases], [c.group_id for c in lab_cases], [c.has_mask for c in lab_cases],
            dup_members)
    if folds is not None:
        leak = leakage_report(*args, folds=folds, source=folds_source or "user folds")
    elif all(len(g["subjects"]) == 1 for g in groups_out):
        # every group lies inside one subject, and grouped folds never split a subject: no leak
        # is possible, so the (scikit-learn) split is not even computed
        leak = {"available": True, "k": cfg.folds_k, "n_groups_split": 0, "n_cases_in_split_groups": 0,
                "groups": [], "source": f"subject-grouped k-fold (k={cfg.folds_k}, seed={cfg.folds_seed})",
                "note": "every near-duplicate group lies inside one subject, so subject-grouped folds cannot "
                        "split it; run with scope=global to find cross-subject duplicates"}
    else:
        leak = leakage_report(*args, k=cfg.folds_k, seed=cfg.folds_seed)
    timing["leakage"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - t_start
    timing = {k: round(v, 4) for k, v in timing.items()}
    if progress:
        progress(1000, 1000, "done")

    cat_counts = {k: sum(1 for p in pair_rows if p["category"] == k) for k in CATEGORIES}
    stats = {"n_cases": len(ds.cases), "n_images": n, "n_scopes": len(scopes), "n_candidates": int(cand.i.size),
             "n_verified": len(pair_rows), "n_groups": len(groups_out), "backend": cand.backend,
             "n_textureless": cand.n_flat, "categories": cat_counts, "cache_hits": fps.stats.get("hits", 0),
             "cache_misses": fps.stats.get("misses", 0), "read_seconds": fps.stats.get("read_seconds"),
             "ref_area_fraction": round(_ref_area_fraction(ds), 6), "candidate_floor": round(floor, 6),
             "ssim_cached": int(i_cached), "masks_cached": int(mcache.hits), "candidates_cached": cand_cached,
             "max_candidate_ssim_below_threshold": round(float(ssim[~ok].max()), 6) if (~ok).any() else None}
    report = ConflictReport(
        pairs=pair_rows, groups=groups_out, ceiling=ceiling, leakage=leak, timing=timing, stats=stats,
        config=cfg.to_dict(),
        dataset={"root": str(ds.root), "layout": ds.layout, "n_cases": len(ds.cases)},
        bad_files=[{"case_id": c, "reason": r} for c, r in fps.bad],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if save_latest:
        path = latest_report_path(ds)
        if path is not None:
            try:
                report.save(path, indent=None)
            except OSError:
                pass  # a read-only workspace: the caller still gets the report
    return report


def _ref_area_fraction(ds: Dataset) -> float:
    """Median foreground fraction of the non-empty labelled masks (0.01 when there are none)."""
    fracs = [c.mask_area / float(c.height * c.width) for c in ds.cases
             if c.labelled and c.has_mask and c.height and c.width and c.mask_area > 0]
    if not fracs:
        return 0.01
    v = np.sort(np.asarray(fracs, np.float64))  # median without np.median (it imports numpy.ma)
    m = v.size // 2
    return float(v[m]) if v.size % 2 else float(0.5 * (v[m - 1] + v[m]))


def _score_pairs(ds: Dataset, cfg: ConflictConfig, cases: list[Case], fps: Any, mask_of: dict[int, Any],
                 vi: np.ndarray, vj: np.ndarray, vs: np.ndarray, vsim: np.ndarray
                 ) -> tuple[list[dict[str, Any]], Any]:
    """One JSON row per verified pair (``a < b``) and the union-find of the pairs."""
    from engine.dedup.fingerprint import hamming64
    from engine.dedup.scoring import UnionFind, categorize, mask_dice, severity

    ref_frac = _ref_area_fraction(ds)
    uf = UnionFind(len(cases))
    rows: list[dict[str, Any]] = []
    for a_row, b_row, s_val, f_val in zip(vi.tolist(), vj.tolist(), vs.tolist(), vsim.tolist()):
        ca, cb = cases[a_row], cases[b_row]
        if ca.case_id > cb.case_id:
            ca, cb, a_row, b_row = cb, ca, b_row, a_row
        uf.union(a_row, b_row)
        ma, mb = mask_of[a_row], mask_of[b_row]
        area_a = ma.area if ma is not None else None
        area_b = mb.area if mb is not None else None
        dice = mask_dice(ma, mb) if ma is not None and mb is not None else None
        cat = categorize(None if ma is None else ma.area > 0, None if mb is None else mb.area > 0, dice,
                         cfg.disagree_dice)
        frac = max(ma.area / float(ma.shape[0] * ma.shape[1]) if ma is not None else 0.0,
                   mb.area / float(mb.shape[0] * mb.shape[1]) if mb is not None else 0.0)
        ratio = None
        if area_a is not None and area_b is not None:
            ratio = 1.0 if max(area_a, area_b) == 0 else min(area_a, area_b) / max(area_a, area_b)
        rows.append({
            "a": ca.case_id, "b": cb.case_id, "ssim": round(float(s_val), 6), "category": cat,
            "mask_dice": None if dice is None else round(dice, 6), "area_a": area_a, "area_b": area_b,
            "area_ratio": None if ratio is None else round(ratio, 6),
            "severity": round(severity(cat, dice, float(s_val), cfg.ssim_threshold, frac, ref_frac), 6),
            "subjects": [ca.group_id, cb.group_id], "fp_similarity": round(float(f_val), 6),
            "phash_distance": int(hamming64(fps.phash[a_row], fps.phash[b_row])),
            "_rows": (a_row, b_row)})
    return rows, uf


def _groups_and_ceiling(cfg: ConflictConfig, cases: list[Case], uf: Any, involved: list[int],
                        mask_of: dict[int, Any], pair_rows: list[dict[str, Any]]
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Near-duplicate groups (most severe first, ids ``dupNNNN``) and the label-noise ceiling.

    Also gives every pair row its ``group`` id and sorts the rows by severity.
    """
    from engine.dedup.scoring import CATEGORIES, group_ceiling

    comp = uf.groups(involved)
    gid_of_row = {r: g for g, members in enumerate(comp) for r in members}
    by_group: dict[int, list[dict[str, Any]]] = {}
    for p in pair_rows:
        by_group.setdefault(gid_of_row[p["_rows"][0]], []).append(p)
    n_labelled = sum(1 for c in cases if c.labelled)
    affected = 0
    affected_total = 0.0
    rows: list[dict[str, Any]] = []
    for g, members in enumerate(comp):
        lab = [r for r in members if mask_of[r] is not None]
        ceil, n_lab, best, _ = group_ceiling([mask_of[r] for r in lab], cfg.ceiling_max_members)
        if best.startswith("member:"):
            best = f"mask of {cases[lab[int(best.split(':')[1])]].case_id}"
        if n_lab and ceil < 1.0 - 1e-9:
            affected += n_lab
            affected_total += ceil * n_lab
        gp = by_group.get(g, [])
        cats = {k: sum(1 for p in gp if p["category"] == k) for k in CATEGORIES}
        rows.append({"members": sorted(cases[r].case_id for r in members), "size": len(members),
                     "categories": {k: v for k, v in cats.items() if v}, "ceiling": round(ceil, 6),
                     "n_labelled": n_lab, "best_mask": best,
                     "max_severity": max((p["severity"] for p in gp), default=0.0),
                     "subjects": sorted({cases[r].group_id for r in members})})
    order = sorted(range(len(rows)), key=lambda g: (-rows[g]["max_severity"], rows[g]["members"][0]))
    new_id = {old: f"dup{new + 1:04d}" for new, old in enumerate(order)}
    groups_out = [{"id": new_id[old], **rows[old]} for old in order]
    for p in pair_rows:
        p["group"] = new_id[gid_of_row[p.pop("_rows")[0]]]
    pair_rows.sort(key=lambda p: (-p["severity"], -p["ssim"], p["a"], p["b"]))
    ceiling = {
        "n_labelled": n_labelled,
        "n_affected": affected,
        "n_groups_affected": sum(1 for g in groups_out if g["ceiling"] < 1.0 - 1e-9 and g["n_labelled"]),
        "mean_affected": round(affected_total / affected, 6) if affected else None,
        "dataset": round((n_labelled - affected + affected_total) / n_labelled, 6) if n_labelled else None,
        "unresolved_pairs": {k: sum(1 for p in pair_rows if p["category"] == k) for k in ("conflict", "disagree")},
        "definition": ("within a near-duplicate group a model outputs one mask for every member; ceiling = best "
                       "mean Kaggle Dice of one mask over candidates {each member's mask, empty, union, "
                       "intersection, majority}; affected = members of groups whose ceiling is below 1; "
                       "unaffected labelled cases count as 1"),
    }
    return groups_out, ceiling


def _options_key(ds: Dataset) -> str:
    lut_arr = getattr(ds, "label_lut", None)
    lut = lut_arr.tolist() if lut_arr is not None else None
    return json.dumps({"options": ds.options, "lut": lut, "root": str(ds.root)}, sort_keys=True, default=str)


#: masks to read before forked workers pay (each is ~0.4 ms of mostly Python work)
MASK_PROCESS_MIN = 256


def _load_masks(ds: Dataset, cases: list[Case], workers: int, cache: MaskCache) -> dict[str, np.ndarray | None]:
    """Masks of ``cases`` as :class:`CroppedMask` (None when unlabelled or unreadable); cached first."""

    def fresh(c: Case) -> tuple[str, Any, dict[str, Any] | None]:
        if not c.labelled:
            return c.case_id, None, None
        try:
            return (c.case_id, *cache.load_entry(ds, c))
        except WorkbenchError:
            return c.case_id, None, None

    # a cached entry decodes from memory (its source unchanged, so labelled and readable)
    out = {c.case_id: cache.get_or_load(ds, c) for c in cases if cache.has(c)}
    rest = [c for c in cases if c.case_id not in out]
    # mostly Python per mask: forked workers for a cold scan's hundreds of masks, else threads
    for case_id, cm, entry in parallel_map(fresh, rest, workers=workers or 4, processes=MASK_PROCESS_MIN):
        out[case_id] = cm
        if entry is not None:
            cache.put(case_id, entry)
    return out
