"""Retrain with corrections: fine-tune a model on the corrected dataset, keeping its split.

The loop a reviewer closes: decisions and corrected mask versions in the review store →
:func:`corrected_manifest` (the manifest of decisions + latest mask versions, written into the
dataset's workspace under a content digest, so the same review state always gives the same
file) → :func:`finetune_config` (the parent's own training config, initialised from its
weights, with a folds file that keeps the parent's held-out cases held out) →
:func:`start_retrain` (a background job of :mod:`engine.jobs`: progress, cancel, exported to
``<workspace>/models/<name>`` so every model picker lists it).

The split: the parent card's ``training.split.val_case_ids`` stay the validation cases, plus any
corrected-dataset case of the same group (subject/patient), so no held-out subject leaks into
training; cases dropped by the review simply disappear from both sides. The new card's
``training.lineage`` records the parent model (name, weights hash), the corrected manifest and
its digest, and the numbers of decisions and corrected mask versions it contains.

Example:
    >>> job, plan = start_retrain(ds, store, "nerve-unet", epochs=3)        # doctest: +SKIP
    >>> plan.lineage["manifest_digest"][:8], job.run_dir.name                 # doctest: +SKIP
    ('3f2a9c1e', 'nerve-unet-ft-3f2a9c-20260101-120000')
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from engine.errors import ConfigError, WorkbenchError
from engine.workspace import Workspace

if TYPE_CHECKING:
    from engine.checkpoint import ModelCard
    from engine.datasets.base import Case, Dataset
    from engine.dedup.conflicts import ConflictReport
    from engine.store import ReviewStore
    from engine.training import TrainConfig

__all__ = ["CorrectedManifest", "RetrainPlan", "corrected_manifest", "manifest_digest", "finetune_config",
           "plan_retrain", "start_retrain", "held_out_ids"]


@dataclass(frozen=True)
class CorrectedManifest:
    """A corrected-dataset manifest written by :func:`corrected_manifest`.

    Attributes:
        path: the manifest JSON (``<dataset workdir>/manifests/corrected-<digest12>.json``).
        digest: sha256 of the kept cases' ids, images and mask sources and the dropped cases.
        info: :func:`engine.curation.build_manifest`'s info.
        n_decisions: decisions in force in the store; decisions: their counts by value.
        n_mask_versions: cases whose latest mask version is a correction (used by the manifest).
        dropped: ``[(case_id, reason)]``.
    """

    path: Path
    digest: str
    info: dict[str, Any]
    n_decisions: int
    decisions: dict[str, int]
    n_mask_versions: int
    dropped: list[tuple[str, str]] = field(default_factory=list)


def manifest_digest(cases: Sequence[Case], dropped: list[tuple[str, str]]) -> str:
    """sha256 hex of the cases' ``(case_id, image_path, mask source)`` and the dropped ids.

    Corrected and union masks are content-addressed files, so the digest changes exactly when
    the corrected dataset does."""
    h = hashlib.sha256()
    for c in cases:
        h.update(json.dumps([c.case_id, str(c.image_path), c.mask.to_dict(), bool(c.labelled)],
                            sort_keys=True, default=str).encode())
        h.update(b"\n")
    h.update(json.dumps(sorted(cid for cid, _ in dropped)).encode())
    return h.hexdigest()


def corrected_manifest(ds: Dataset, store: ReviewStore | None,
                       report: ConflictReport | Mapping[str, Any] | str | Path | None = None, policy: str = "none",
                       out_dir: str | Path | None = None) -> CorrectedManifest:
    """Build the manifest of the current corrected dataset (decisions + latest mask versions).

    Args:
        ds: the reviewed dataset (needs a workspace folder unless ``out_dir`` is given).
        store: its review store.
        report: the conflicts report (only needed by ``policy="drop-empty"``).
        policy: ``none`` (decisions only, the default) or ``drop-empty``.
        out_dir: folder for the manifest (default ``<ds.workdir>/manifests``).

    Returns:
        :class:`CorrectedManifest`; an identical review state reuses the same file.
    """
    from engine.curation.cleaning import build_manifest
    from engine.datasets import write_manifest

    cases, dropped, info = build_manifest(ds, store, report, policy)
    digest = manifest_digest(cases, dropped)
    if out_dir is None:
        workdir = getattr(ds, "workdir", None)
        if workdir is None:
            raise ConfigError("the dataset has no workspace folder for the corrected manifest",
                              hint="open the dataset with a workspace, or pass out_dir")
        out_dir = Path(workdir) / "manifests"
    path = Path(out_dir) / f"corrected-{digest[:12]}.json"
    decisions = store.decisions() if store is not None else {}
    n_versions = len(store.corrected_masks()) if store is not None else 0
    info = {**info, "digest": digest, "n_mask_versions": n_versions}
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(path, ds, cases, dropped, info)
    return CorrectedManifest(path.resolve(), digest, info, len(decisions),
                             dict(Counter(d.decision for d in decisions.values())), n_versions, list(dropped))


class ModelRecord(Protocol):
    """What the split rules and the impact report read of a model: a :class:`ModelCard`, or the
    record of a model known only by its predictions (:class:`engine.impact.PredictionsOnly`)."""

    @property
    def name(self) -> str: ...

    @property
    def tensors_sha256(self) -> str: ...

    @property
    def training(self) -> dict[str, Any]: ...


def held_out_ids(card: ModelRecord) -> list[str]:
    """The parent card's held-out (validation) case ids; [] when the card records none."""
    tr = getattr(card, "training", None) or {}
    split = tr.get("split") or {}
    return [str(c) for c in (split.get("val_case_ids") or tr.get("val_case_ids") or [])]


def _folds_keeping(card: ModelCard, manifest_path: Path,
                   workspace: Workspace | None = None) -> tuple[dict[str, int], dict[str, Any]]:
    """Folds (0 = train, 1 = held out) for the manifest's labelled cases keeping ``card``'s split."""
    from engine.datasets import open_dataset

    val = set(held_out_ids(card))
    if not val:
        raise ConfigError(f"the card of {card.name} records no held-out cases, so its split cannot be kept",
                          hint="retrain from a model trained by this workbench (its card has "
                               "training.split.val_case_ids), or train a new model on the manifest")
    mds = open_dataset(manifest_path, workspace=workspace)
    labelled = mds.labelled_cases()
    val_groups = {c.group_id for c in labelled if c.case_id in val}
    folds = {c.case_id: int(c.case_id in val or c.group_id in val_groups) for c in labelled}
    n_val = sum(folds.values())
    if n_val == 0 or n_val == len(folds):
        raise ConfigError(f"keeping {card.name}'s split leaves {len(folds) - n_val} training and {n_val} held-out "
                          "cases in the corrected dataset", path=manifest_path,
                          hint="the review dropped every case of one side; undo some drops")
    info = {"parent_held_out": len(val), "held_out_kept": len(val & set(folds)),
            "held_out_dropped": len(val - set(folds)), "added_by_group": n_val - len(val & set(folds))}
    return folds, info


def finetune_config(parent: str | Path, manifest: CorrectedManifest, *, name: str | None = None,
                    epochs: int = 5, lr: float | None = None, workspace: Workspace | None = None,
                    lineage: dict[str, Any] | None = None, **overrides: Any):
    """The :class:`~engine.training.TrainConfig` that fine-tunes ``parent`` on ``manifest``.

    Starts from the parent's own training config (architecture, preprocessing, loss,
    augmentation...; the card's spec when the card has no config), with ``data`` = the manifest,
    a folds file keeping the parent's held-out cases held out, ``init_weights`` = the parent's
    folder and ``lr`` = the parent's lr / 10 unless given. ``overrides`` replace any other field.

    Raises:
        ConfigError: the parent has no recorded split, or keeping it leaves one side empty.
    """
    from engine.checkpoint import read_card, resolve_weights
    from engine.splits import SplitSpec, save_folds
    from engine.training import TrainConfig

    folder = resolve_weights(parent, workspace)
    card = read_card(folder)
    base = None
    cfg_dict = (card.training or {}).get("config")
    if isinstance(cfg_dict, dict):
        try:
            base = TrainConfig.from_dict(cfg_dict)
        except WorkbenchError:
            base = None
    if base is None:
        base = TrainConfig(model=card.spec, preprocess=card.preprocess, postprocess=card.postprocess)
    folds, split_info = _folds_keeping(card, manifest.path, workspace)
    folds_path = manifest.path.with_name(manifest.path.stem + f"-folds-{_safe(card.name)}.json")
    spec = SplitSpec(k=2, seed=0, val_fold=1, stratify=False)
    save_folds(folds_path, folds, spec)
    lin = {
        "parent_model": card.name, "parent_sha256": card.tensors_sha256, "parent_folder": str(folder),
        "manifest": str(manifest.path), "manifest_digest": manifest.digest,
        "n_decisions": manifest.n_decisions, "decisions": manifest.decisions,
        "n_mask_versions": manifest.n_mask_versions, "n_dropped": len(manifest.dropped),
        "mask_overrides": manifest.info.get("mask_overrides", {}),
        "split": {"kept_from": f"{card.name} training.split.val_case_ids", **split_info},
        **(lineage or {}),
    }
    fields = dict(data=str(manifest.path), layout=None, dataset_options=None, folds_file=str(folds_path),
                  split=spec, init_weights=str(folder), lineage=lin, model=card.spec, task="segment",
                  name=name or f"{card.name}-ft", epochs=int(epochs),
                  lr=float(lr) if lr is not None else base.lr / 10, out=None, export=True,
                  description=(f"Fine-tuned from {card.name} on the corrected dataset (manifest "
                               f"{manifest.digest[:12]}: {manifest.n_decisions} decision(s), "
                               f"{manifest.n_mask_versions} corrected mask(s)), same held-out cases."))
    fields.update(overrides)
    return base.replace(**fields), card


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]


def _free_name(base: str, workspace: Workspace) -> str:
    from engine.checkpoint import CARD_FILE, REPO_WEIGHTS

    def taken(n: str) -> bool:
        return (REPO_WEIGHTS / n / CARD_FILE).is_file() or (workspace.root / "models" / n).exists()

    name = base[:72]
    i = 2
    while taken(name):
        name = f"{base[:68]}-{i}"
        i += 1
    return name


@dataclass(frozen=True)
class RetrainPlan:
    """What :func:`start_retrain` launched: the manifest, the config and the parent's card."""

    manifest: CorrectedManifest
    config: TrainConfig
    parent: ModelCard

    @property
    def lineage(self) -> dict[str, Any]:
        return dict(self.config.lineage or {})


def plan_retrain(ds: Dataset, store: ReviewStore | None, parent: str | Path,
                 report: ConflictReport | Mapping[str, Any] | str | Path | None = None, *, name: str | None = None,
                 epochs: int = 5, lr: float | None = None, workspace: Workspace | str | Path | None = None,
                 **overrides: Any) -> RetrainPlan:
    """Manifest + fine-tune config for ``parent`` on the current corrected ``ds`` (nothing started)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    man = corrected_manifest(ds, store, report)
    from engine.checkpoint import read_card, resolve_weights

    pname = read_card(resolve_weights(parent, ws)).name
    default = _free_name(f"{_safe(pname)}-ft-{man.digest[:6]}", ws) if name is None else name
    cfg, card = finetune_config(parent, man, name=default, epochs=epochs, lr=lr, workspace=ws,
                                lineage={"dataset": str(ds.root)}, **overrides)
    return RetrainPlan(man, cfg, card)


def start_retrain(ds: Dataset, store: ReviewStore | None, parent: str | Path,
                  report: ConflictReport | Mapping[str, Any] | str | Path | None = None, *, name: str | None = None,
                  epochs: int = 5, lr: float | None = None, workspace: Workspace | str | Path | None = None,
                  **overrides: Any):
    """Start the fine-tuning job (:func:`engine.jobs.start_training`); returns ``(Job, RetrainPlan)``.

    The job exports the best model to ``<workspace>/models/<name>`` when it ends, so the model
    pickers list it; :func:`engine.jobs.job_status` / :func:`engine.jobs.cancel` watch and stop it.
    """
    from engine.jobs import start_training

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    plan = plan_retrain(ds, store, parent, report, name=name, epochs=epochs, lr=lr, workspace=ws, **overrides)
    job = start_training(plan.config, ws, export=True)
    return job, plan
