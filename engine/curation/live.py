"""The corrected dataset as it stands now, and the label-noise ceiling kept live without a rescan.

:func:`corrected_dataset` is the dataset a reviewer has made so far: :func:`build_manifest`
(decisions + latest mask versions) as an in-memory :class:`engine.datasets.Dataset` (same
root, labels and workspace folder; nothing is written except content-addressed union masks).

:func:`live_ceiling` recomputes the label-noise ceiling of the latest conflicts report for
the corrected dataset *incrementally*: images do not change when labels are fixed, so the
near-duplicate pairs of a rescan are the report's pairs between kept cases; only groups that
lost a member or whose masks changed are rescored (:func:`engine.dedup.group_ceiling` on the
current masks), every other group keeps the ceiling the scan stored. The result has the same
keys and the same definition as ``ConflictReport.ceiling`` and equals what
``find_conflicts`` on the corrected dataset reports (up to the 6-decimal rounding of the
stored group ceilings), at the cost of loading the masks of the changed groups only.

Example:
    >>> live = live_ceiling(ds, store, load_latest_report(ds))         # doctest: +SKIP
    >>> live["dataset"], live["before"], live["n_groups_rescored"]      # doctest: +SKIP
    (0.9871, 0.9432, 3)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from engine.errors import WorkbenchError

if TYPE_CHECKING:
    from engine.datasets import Case, Dataset
    from engine.dedup import ConflictReport
    from engine.store import ReviewStore

__all__ = ["corrected_dataset", "live_ceiling", "touched_cases"]


def corrected_dataset(ds: Dataset, store: ReviewStore | None = None, report: ConflictReport | None = None,
                      policy: str = "none") -> tuple[Dataset, list[tuple[str, str]], dict[str, Any]]:
    """The dataset with the review applied, in memory.

    Args:
        ds: the reviewed :class:`engine.datasets.Dataset`.
        store: its review store (None: nothing applied).
        report: the conflicts report (for ``policy="drop-empty"`` and the manifest info).
        policy: manifest policy (``none`` = decisions and mask versions only).

    Returns:
        ``(dataset, dropped, info)``: a :class:`Dataset` of the kept cases (mask sources
        replaced by corrected/union/empty ones; same root, labels, options and workdir as
        ``ds``), ``[(case_id, reason)]`` and :func:`build_manifest`'s info.
    """
    from engine.curation.cleaning import build_manifest
    from engine.datasets.base import Dataset

    cases, dropped, info = build_manifest(ds, store, report, policy)
    out = Dataset(ds.root, ds.layout, cases, ds.labels, ds.bad_files, ds.notes, ds.options,
                  None if ds.label_lut is None else ds.label_lut.tolist(), ds.workdir)
    return out, dropped, info


def touched_cases(store: ReviewStore | None) -> dict[str, list[str]]:
    """``{case_id: [what a reviewer did]}``: members of decided pairs/groups and cases with a
    corrected mask version (the latest one), in the store's words."""
    out: dict[str, list[str]] = {}
    if store is None:
        return out
    for (kind, members), d in sorted(store.decisions().items(), key=lambda kv: kv[1].event_id):
        dropped = set(getattr(d, "dropped", ()) or ())
        for m in members:
            if kind == "pair":
                other = next((x for x in members if x != m), m)
                what = d.relative_to(m, other) if hasattr(d, "relative_to") else d.decision
                where = f"pair with {other}"
            else:
                what, where = d.decision, f"group of {len(members)}"
            fate = ", dropped" if m in dropped else ""
            out.setdefault(str(m), []).append(f"{what} by {d.reviewer} ({where}{fate})")
    for cid, mv in store.corrected_masks().items():
        out.setdefault(str(cid), []).append(f"mask v{mv.version} by {mv.author}")
    return out


def _mask_key(case: Case) -> str:
    import json

    return json.dumps(case.mask.to_dict(), sort_keys=True) if case.labelled else "unlabelled"


def live_ceiling(ds: Dataset, store: ReviewStore | None, report: ConflictReport, *,
                 corrected: Dataset | None = None) -> dict[str, Any]:
    """The label-noise ceiling of ``report`` after the current review, without a rescan.

    Args:
        ds: the reviewed dataset (the one ``report`` was computed on).
        store: its review store.
        report: a :class:`engine.dedup.ConflictReport` of ``ds``.
        corrected: a :func:`corrected_dataset` result's dataset, when the caller has one already.

    Returns:
        ``report.ceiling``'s keys (``dataset``, ``n_labelled``, ``n_affected``,
        ``n_groups_affected``, ``mean_affected``, ``unresolved_pairs``, ``definition``) for the
        corrected dataset, plus ``before`` (the report's dataset-wide ceiling),
        ``n_groups_rescored``, ``n_groups`` and ``seconds``.
    """
    from engine.dedup.conflicts import ConflictConfig
    from engine.dedup.scoring import group_ceiling

    t0 = time.perf_counter()
    if corrected is None:
        corrected = corrected_dataset(ds, store, report)[0]
    try:
        max_members = int(ConflictConfig.from_dict(dict(report.config or {})).ceiling_max_members)
    except (WorkbenchError, TypeError, ValueError):
        max_members = ConflictConfig().ceiling_max_members
    kept = {c.case_id: c for c in corrected.cases}
    orig = {c.case_id: c for c in ds.cases}
    changed = {cid for cid, c in kept.items() if cid in orig and _mask_key(c) != _mask_key(orig[cid])}

    # near-duplicate groups of a rescan: connected components of the report's pairs between kept cases
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in report.pairs:
        a, b = str(p["a"]), str(p["b"])
        if a in kept and b in kept:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    comps: dict[str, list[str]] = {}
    for x in list(parent):
        comps.setdefault(find(x), []).append(x)

    stored = {frozenset(g["members"]): g for g in report.groups}
    n_labelled = sum(1 for c in corrected.cases if c.labelled)
    affected, total, n_groups_aff, rescored = 0, 0.0, 0, 0
    for members in comps.values():
        g = stored.get(frozenset(members))
        if g is not None and not (set(members) & changed):
            ceil, n_lab = float(g["ceiling"]), int(g["n_labelled"])
        else:
            rescored += 1
            masks = []
            for m in sorted(members):
                c = kept[m]
                if not c.labelled:
                    continue
                try:
                    masks.append(corrected.load_mask(c))
                except WorkbenchError:
                    continue
            ceil, n_lab, _, _ = group_ceiling(masks, max_members)
        if n_lab and ceil < 1.0 - 1e-9:
            affected += n_lab
            total += ceil * n_lab
            n_groups_aff += 1

    unresolved = {"conflict": 0, "disagree": 0}
    decisions = store.decisions() if store is not None else {}
    from engine.curation.queue import current_decision

    for p in report.pairs:
        cat = p.get("category")
        if cat in unresolved and str(p["a"]) in kept and str(p["b"]) in kept:
            d = current_decision(decisions, str(p["a"]), str(p["b"]))
            if d is None and not ({str(p["a"]), str(p["b"])} & changed):
                unresolved[cat] += 1
    before = (report.ceiling or {}).get("dataset")
    return {
        "n_labelled": n_labelled,
        "n_affected": affected,
        "n_groups_affected": n_groups_aff,
        "mean_affected": round(total / affected, 6) if affected else None,
        "dataset": round((n_labelled - affected + total) / n_labelled, 6) if n_labelled else None,
        "unresolved_pairs": unresolved,
        "definition": (report.ceiling or {}).get("definition", ""),
        "before": before,
        "n_groups": len(comps),
        "n_groups_rescored": rescored,
        "n_cases_changed": len(changed),
        "n_cases_dropped": len(orig) - len(kept),
        "seconds": round(time.perf_counter() - t0, 4),
    }
