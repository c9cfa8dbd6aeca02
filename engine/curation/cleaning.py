"""Cleaning: apply review decisions (and optionally the case study's rule) to a dataset.

:func:`build_manifest` turns the review store's current state plus a conflicts report into
``(cases, dropped, info)`` for :func:`engine.datasets.manifest.save_manifest` (the manifest format,
reading and writing live in :mod:`engine.datasets.manifest`). The original dataset is
never touched: changed masks are PNGs in the store's ``masks/`` folder, referenced as
``MaskSource("file", path)``; emptied masks are ``MaskSource("empty")``.

Decisions (see :mod:`engine.store`):

===============  ===========================================================
``keep_a``       drop b          ``keep_b``     drop a
``union``        every member gets the union of the members' current masks
``both_empty``   every member gets an empty mask
``drop_both``    drop every member
``keep_both``, ``not_duplicate``, ``needs_expert``: keep as is
===============  ===========================================================

Rules: a drop wins over everything else (``keep_both`` on one pair means "do not drop because
of this pair", not "protect the case"); when a case gets several mask changes (a union, an
emptying, a corrected mask version from the mask editor) the most recent reviewer action wins.

Policies: ``none`` applies people's decisions only. ``drop-empty`` is the case study's rule — drop
the empty image of each ``conflict`` pair — applied as a *proposal*: it is skipped for a pair that
has an explicit decision (on the pair or on a group containing both), and for a case whose mask
was corrected in the store.

Proposals recorded in the store (the rule applied in bulk on the Conflict review page,
:attr:`engine.store.Decision.is_proposal`) are not decisions until a person confirms them: policy
``none`` leaves them out (``info["n_unconfirmed_proposals"]`` counts them), ``drop-empty`` (or
``include_proposals=True``) applies them, and every drop they cause says "proposal … not confirmed"
and counts under ``dropped_by["proposal"]``, never as a reviewer's decision.

Example:
    >>> cases, dropped, info = build_manifest(ds, store, report, "drop-empty")   # doctest: +SKIP
    >>> write_manifest("clean.json", ds, cases, dropped, info)                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from engine.datasets.base import LABELS_CONVENTION
from engine.errors import ConfigError, unknown_name
from engine.store.records import pair_key

if TYPE_CHECKING:
    from engine.datasets import Case, Dataset, MaskSource
    from engine.dedup import ConflictReport
    from engine.store import ReviewStore

MANIFEST_POLICIES: tuple[str, ...] = ("none", "drop-empty")

_DROP_A = {"keep_b", "drop_both"}
_DROP_B = {"keep_a", "drop_both"}


def _pairs_of(conflicts: ConflictReport | Mapping[str, Any] | str | Path | None) -> tuple[list[dict[str, Any]], str]:
    from engine.dedup.conflicts import ConflictReport

    if conflicts is None:
        return [], "none"
    if isinstance(conflicts, ConflictReport):
        return list(conflicts.pairs), f"report of {conflicts.created or 'this run'}"
    if isinstance(conflicts, (str, Path)):
        return list(ConflictReport.load(conflicts).pairs), str(conflicts)
    if isinstance(conflicts, Mapping):
        return list(ConflictReport.from_dict(conflicts).pairs), "report dict"
    raise ConfigError(f"conflicts must be a ConflictReport, a dict or a path, got {type(conflicts).__name__}",
                      hint="pass the result of find_conflicts or a conflicts JSON file")


def build_manifest(ds: Dataset, store: ReviewStore | None = None,
                   conflicts: ConflictReport | Mapping[str, Any] | str | Path | None = None,
                   policy: str = "none", *, masks_dir: str | Path | None = None,
                   include_proposals: bool | None = None
                   ) -> tuple[list[Case], list[tuple[str, str]], dict[str, Any]]:
    """Apply review decisions (and a policy) to a dataset's cases.

    Args:
        ds: the :class:`engine.datasets.Dataset` that was reviewed.
        store: a :class:`engine.store.ReviewStore` (or None: no decisions).
        conflicts: a :class:`ConflictReport`, its dict, a path to its JSON, or None
            (needed by ``drop-empty``; None then means "the latest report of ``ds``").
        policy: ``none`` or ``drop-empty``.
        masks_dir: where union masks are written (default: the store's ``masks/``, else
            ``ds.workdir/masks``).
        include_proposals: apply unconfirmed proposals from the store (default: only with the
            ``drop-empty`` policy, whose rule made them).

    Returns:
        ``(cases, dropped, info)``: kept :class:`Case` records (mask sources replaced where
        decisions say so), ``[(case_id, reason)]``, and counts/provenance for the manifest.

    Raises:
        ConfigError: unknown policy, or ``drop-empty`` without any conflicts report.
    """
    from engine.datasets import MaskSource
    from engine.dedup.conflicts import load_latest_report

    if policy not in MANIFEST_POLICIES:
        raise unknown_name("manifest policy", policy, MANIFEST_POLICIES)
    if conflicts is None and policy == "drop-empty":
        conflicts = load_latest_report(ds)
        if conflicts is None:
            raise ConfigError("policy drop-empty needs a conflicts report",
                              hint="run `python -m engine conflicts DATASET` first, or pass --conflicts FILE")
    pairs, conflicts_source = _pairs_of(conflicts)
    decisions = store.decisions() if store is not None else {}
    corrected = store.corrected_masks() if store is not None else {}
    known = {c.case_id for c in ds.cases}

    drops: dict[str, str] = {}
    drop_kind: dict[str, str] = {}
    # case_id → (event_id, kind, MaskSource, area)
    overrides: dict[str, tuple[int, str, MaskSource, int]] = {}
    decided_pairs: set[tuple[str, str]] = set()
    decided_groups: list[set[str]] = []

    def drop(cid: str, reason: str, kind: str) -> None:
        if cid in known and cid not in drops:
            drops[cid] = reason
            drop_kind[cid] = kind

    def override(cid: str, event_id: int, kind: str, src: MaskSource, area: int) -> None:
        if cid in known and (cid not in overrides or overrides[cid][0] < event_id):
            overrides[cid] = (event_id, kind, src, area)

    for mv in corrected.values():
        assert store is not None  # corrected masks only come from a store
        path = store.mask_file(mv)
        override(mv.case_id, mv.event_id, "corrected",
                 MaskSource("file", str(path), convention=LABELS_CONVENTION), int(mv.area or 0))

    def current_mask(cid: str) -> np.ndarray:
        if cid in corrected:
            assert store is not None  # corrected masks only come from a store
            return store.load_mask_version(cid, corrected[cid].version)
        return ds.load_mask(cid)

    if include_proposals is None:
        include_proposals = policy == "drop-empty"
    n_unconfirmed = 0
    for (kind, members), d in sorted(decisions.items(), key=lambda kv: kv[1].event_id):
        if d.is_proposal:
            n_unconfirmed += 1
            if not include_proposals:
                continue
            who = f"proposal {d.decision} of the case-study rule (recorded by {d.reviewer}, not confirmed)"
            basis = "proposal"
        else:
            who = f"{d.decision} by {d.reviewer}" + (f" ({d.note})" if d.note else "")
            basis = "decision"
        members = tuple(m for m in members)
        if kind == "pair":
            decided_pairs.add((members[0], members[1]))
        else:
            decided_groups.append(set(members))
        where = f"pair ({members[0]}, {members[1]})" if kind == "pair" else f"group of {len(members)}"
        if kind == "pair" and d.decision in _DROP_A | _DROP_B:
            a, b = members
            if d.decision in _DROP_A:
                drop(a, f"review: {who} on {where}", basis)
            if d.decision in _DROP_B:
                drop(b, f"review: {who} on {where}", basis)
        elif d.decision == "drop_both":
            for m in members:
                drop(m, f"review: {who} on {where}", basis)
        elif d.decision == "both_empty":
            for m in members:
                override(m, d.event_id, "both_empty", MaskSource("empty"), 0)
        elif d.decision == "union":
            present = [m for m in members if m in known and ds.case(m).labelled]
            if not present:
                continue
            shapes = [current_mask(m) for m in present]
            union = shapes[0].copy()
            for other in shapes[1:]:
                if other.shape != union.shape:
                    from engine.dedup.scoring import resize_nearest

                    other = resize_nearest(other, union.shape)
                union = np.maximum(union, other)
            path = _write_union(union, store, masks_dir, ds)
            for m in present:
                override(m, d.event_id, "union", MaskSource("file", str(path), convention=LABELS_CONVENTION),
                         int(np.count_nonzero(union)))

    n_proposed = n_overridden = 0
    conflict_pairs = [p for p in pairs if p.get("category") == "conflict"]
    unresolved = 0
    for p in conflict_pairs:
        a, b = pair_key(p["a"], p["b"])
        explicit = (a, b) in decided_pairs or any(a in g and b in g for g in decided_groups)
        if not explicit:
            unresolved += 1
        if policy != "drop-empty":
            continue
        area_a, area_b = p.get("area_a"), p.get("area_b")
        if area_a is None or area_b is None:
            continue
        pa, pb = (str(p["a"]), str(p["b"]))
        empty, kept = (pa, pb) if area_a == 0 else (pb, pa)
        if explicit or empty in corrected:
            n_overridden += 1
            continue
        n_proposed += 1
        drop(empty, f"policy drop-empty: empty twin of {kept} (SSIM {float(p.get('ssim', 0)):.4f}, "
                    f"conflicting masks)", "policy")

    out_cases = []
    for c in ds.cases:
        if c.case_id in drops:
            continue
        if c.case_id in overrides:
            _, kind, src, area = overrides[c.case_id]
            meta = {**c.meta, "mask_origin": f"review:{kind}"}
            c = dataclasses.replace(c, mask=src, labelled=True, has_mask=area > 0, mask_area=area, meta=meta)
        out_cases.append(c)
    dropped = [(c.case_id, drops[c.case_id]) for c in ds.cases if c.case_id in drops]
    kinds = Counter(drop_kind.values())
    info = {
        "policy": policy,
        "store": str(store.path) if store is not None else None,
        "conflicts": conflicts_source,
        "n_input": len(ds.cases),
        "n_kept": len(out_cases),
        "n_dropped": len(dropped),
        "dropped_by": {"decision": kinds.get("decision", 0), "proposal": kinds.get("proposal", 0),
                       "policy": kinds.get("policy", 0)},
        "mask_overrides": dict(Counter(kind for c, (_, kind, _, _) in overrides.items() if c not in drops)),
        "decisions": dict(Counter(d.decision for d in decisions.values() if not d.is_proposal)),
        "proposals": dict(Counter(d.decision for d in decisions.values() if d.is_proposal)),
        "n_unconfirmed_proposals": n_unconfirmed,
        "proposals_applied": bool(include_proposals),
        "n_conflict_pairs": len(conflict_pairs),
        "n_conflicts_without_decision": unresolved,
        "n_policy_proposals_applied": n_proposed,
        "n_policy_proposals_overridden": n_overridden,
    }
    return out_cases, dropped, info


def _write_union(mask: np.ndarray, store: ReviewStore | None, masks_dir: str | Path | None, ds: Dataset) -> Path:
    """Write a union mask as a content-addressed PNG; returns its absolute path."""
    from engine.io import write_mask_png
    from engine.store import mask_digest

    if masks_dir is None and store is not None:
        return store.write_mask_file(mask)[1]
    folder = Path(masks_dir) if masks_dir is not None else (Path(ds.workdir) / "masks" if ds.workdir else None)
    if folder is None:
        raise ConfigError("nowhere to write union masks", hint="pass masks_dir or a review store")
    path = folder / f"{mask_digest(mask)}.png"
    if not path.exists():
        write_mask_png(path, mask.astype(np.uint8))
    return path.resolve()
