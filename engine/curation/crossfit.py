"""Honest probabilities for the label-error finder: out-of-fold cross-fitting and shipped models.

A label can only be judged by a model that did not learn it. This module gives, for every
labelled case of a dataset, probabilities from such a model and says which one
(:attr:`CaseProbs.provenance`):

- **Out-of-fold (cross-fitting).** :func:`run_crossfit` trains ``k`` models of one architecture
  (:class:`CrossFitConfig`) on the dataset's grouped folds (:func:`engine.splits.grouped_kfold`,
  subjects never split): fold model ``f`` trains on every fold but ``f``, so its predictions for
  the cases of fold ``f`` are honest. The *last* epoch is kept (no epoch is chosen on the
  held-out fold's labels, which are the labels under suspicion). Models are cached under
  ``<dataset workspace>/crossfit/<key>/fold-<f>/last`` where the key is a digest of the config,
  the folds and the images (case ids, groups, image file stamps). Masks are not part of the key:
  a corrected mask does not retrain anything (the one model that scores the case never saw it);
  :attr:`CrossFit.stale_masks` lists the cases whose mask changed since training.
  :func:`start_crossfit_job` runs the same thing in a background process (``python -m engine
  crossfit``) whose progress :func:`engine.jobs.job_status` reads (folds as "epochs").
- **Shipped models.** A model card lists its training cases (``training.split.train_case_ids``,
  :func:`engine.evaluation.training_cases`); its probabilities are honest for every other case.
  Cases in its training set are marked *not honest* unless a cross-fit covers them.

Every model predicts each case **once** (one pass per model; the k fold models also give the
fold-model disagreement at no extra training cost). Probabilities are cached per model digest
and image stamp at the model's input resolution (float16, compressed), so a rerun — or a re-score
after a mask correction — runs no model at all. Test-time augmentation is off by default (it
would double the cost, over the +10 % budget); when asked for, only views the model's training
augmentation used are allowed (:func:`allowed_tta`: a horizontal flip when the card's
``augment.hflip > 0``; never a vertical flip the model did not train on).

Example:
    >>> probs = honest_probabilities(ds, weights=["lung-cxr"], folds=5)       # doctest: +SKIP
    >>> cp = probs.case("MCUCXR_0001_0")                                      # doctest: +SKIP
    >>> cp.probs.shape, cp.honest, cp.provenance                              # doctest: +SKIP
    ((2, 512, 512), True, 'out-of-fold: k=5 cross-fit of unet_classic, fold 3')
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from engine.augment import AugmentConfig, Preprocess
from engine.config import JsonConfig
from engine.errors import ConfigError, WorkbenchError
from engine.fsutil import atomic_path, atomic_write_json, file_stamp, read_json_dict, safe_child
from engine.models import ModelSpec
from engine.progress import ProgressFn, as_progress, scaled

if TYPE_CHECKING:
    from engine.checkpoint import ModelCard
    from engine.datasets import Dataset
    from engine.jobs import Job
    from engine.workspace import Workspace

__all__ = ["CrossFitConfig", "CrossFit", "ModelSource", "CaseProbs", "ProbabilitySet", "crossfit_folder",
           "load_crossfit", "run_crossfit", "start_crossfit_job", "crossfit_status", "allowed_tta",
           "shipped_source", "fold_sources", "honest_probabilities", "dataset_digest", "mask_digest",
           "CROSSFIT_FILE"]

#: The description of a finished cross-fit in its folder.
CROSSFIT_FILE = "crossfit.json"
CROSSFIT_FORMAT = "segwb-crossfit"
CROSSFIT_VERSION = 1


def _default_spec() -> ModelSpec:
    return ModelSpec(arch="unet_classic", base_channels=8)


@dataclass(frozen=True)
class CrossFitConfig(JsonConfig):
    """How the k fold models are trained (one architecture, the dataset's grouped folds).

    Attributes:
        k: number of folds (>= 2, at most the number of groups).
        seed: fold shuffle seed and training seed.
        model: the architecture (``num_classes`` is set from the dataset).
        preprocess: model input (stored in each fold model's card).
        augment: training augmentation; it also decides which TTA views are allowed.
        epochs: epochs per fold model (the last epoch's weights are kept).
        batch_size, lr, loss: optimisation (AdamW, cosine schedule).
        device: ``auto``/``cpu``/``cuda``.

    Example:
        >>> cfg = CrossFitConfig(k=3, epochs=2)
        >>> CrossFitConfig.from_json(cfg.to_json()) == cfg
        True
    """

    k: int = 5
    seed: int = 0
    model: ModelSpec = field(default_factory=_default_spec)
    preprocess: Preprocess = Preprocess(size=(128, 128))
    augment: AugmentConfig = AugmentConfig.preset("light")
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    loss: str = "bce_dice"
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.augment, str):
            object.__setattr__(self, "augment", AugmentConfig.preset(self.augment))
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ConfigError(f"cross-fitting needs k >= 2 folds, got {self.k!r}", hint="use e.g. --folds 5")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be a whole number >= 1, got {self.epochs!r}")

    @classmethod
    def from_card(cls, card: ModelCard, k: int = 5, *, epochs: int | None = None,
                  size: tuple[int, int] | None = None, seed: int = 0, device: str = "auto") -> "CrossFitConfig":
        """Cross-fit the architecture of a model card: its spec, preprocessing and training
        augmentation (``training.config``), its epochs unless ``epochs`` is given, its input
        size unless ``size`` is given."""
        tcfg = dict((card.training or {}).get("config") or {})
        aug = tcfg.get("augment")
        augment = (AugmentConfig.from_dict(aug) if isinstance(aug, dict)
                   else AugmentConfig.preset(str(aug)) if isinstance(aug, str) else AugmentConfig.preset("light"))
        pre = card.preprocess if size is None else card.preprocess.replace(size=(int(size[0]), int(size[1])))
        spec = card.spec.replace(pretrained=None)
        return cls(k=int(k), seed=int(seed), model=spec, preprocess=pre, augment=augment,
                   epochs=int(epochs or tcfg.get("epochs") or 20), batch_size=int(tcfg.get("batch_size") or 8),
                   lr=float(tcfg.get("lr") or 2e-3), loss=str(tcfg.get("loss") or "bce_dice"), device=device)

    def describe(self) -> str:
        """``unet_classic (8 ch), 128x128, 20 epochs``."""
        width = f" ({self.model.base_channels} ch)" if self.model.base_channels else ""
        enc = f" {self.model.encoder}" if self.model.encoder else ""
        return (f"{self.model.arch}{enc}{width}, {self.preprocess.size[0]}x{self.preprocess.size[1]}, "
                f"{self.epochs} epochs")


# ------------------------------------------------------------------------------------------ digests

def _sha(text: str, n: int = 16) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def mask_digest(mask: np.ndarray) -> str:
    """A short content digest of a label map (uint8 (H,W)): a mask version's identity in caches."""
    m = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    h = hashlib.sha1(m.tobytes())
    h.update(str(m.shape).encode())
    return h.hexdigest()[:16]


def _image_stamp(path: str) -> str:
    try:
        size, mtime = file_stamp(Path(path))
    except OSError:
        return "missing"
    return f"{size}-{mtime}"


def dataset_digest(dataset: Dataset, case_ids: Sequence[str] | None = None) -> str:
    """Digest of a dataset's images and grouping: case ids, group ids and image file stamps
    (size, mtime) of ``case_ids`` (default: the labelled cases). Masks are not part of it."""
    ids = sorted(case_ids if case_ids is not None else [c.case_id for c in dataset.labelled_cases()])
    rows = []
    for cid in ids:
        c = dataset.case(cid)
        rows.append(f"{cid}\t{c.group_id}\t{_image_stamp(c.image_path)}")
    return _sha("\n".join(rows))


def _workdir(dataset: Dataset) -> Path:
    if dataset.workdir is not None:
        return Path(dataset.workdir)
    from engine.workspace import Workspace

    src = getattr(dataset, "manifest_path", None) or dataset.root
    return Workspace().dataset_dir(src)


# ------------------------------------------------------------------------------------------ cross-fit

@dataclass(frozen=True)
class CrossFit:
    """A finished cross-fit.

    Attributes:
        folder: ``<dataset workspace>/crossfit/<key>``.
        config: the :class:`CrossFitConfig`.
        folds: ``{case_id: fold}`` of the labelled cases at training time.
        model_dirs: fold ``f``'s weights folder (``card.json`` + ``model.safetensors``), by fold.
        masks: ``{case_id: mask digest}`` of the labels the fold models trained on.
        seconds: training wall time per fold (as recorded when it ran).
        stale_masks: cases whose current mask differs from the one trained on (filled by
            :func:`load_crossfit` when given current digests).
    """

    folder: Path
    config: CrossFitConfig
    folds: dict[str, int]
    model_dirs: tuple[Path, ...]
    masks: dict[str, str]
    seconds: tuple[float, ...]
    stale_masks: tuple[str, ...] = ()


def _split_folds(dataset: Dataset, config: CrossFitConfig) -> dict[str, int]:
    from engine.splits import grouped_kfold

    cases = dataset.labelled_cases()
    if len(cases) < config.k:
        raise ConfigError(f"the dataset has {len(cases)} labelled case(s): too few for {config.k} folds",
                          hint="label more cases or use fewer folds")
    return grouped_kfold([c.case_id for c in cases], [c.group_id for c in cases],
                         [bool(c.has_mask) for c in cases], k=config.k, seed=config.seed)


def crossfit_folder(dataset: Dataset, config: CrossFitConfig) -> Path:
    """Where the fold models of ``config`` on ``dataset`` live (not created)."""
    key = _sha(json.dumps({"config": config.to_dict(), "images": dataset_digest(dataset)}, sort_keys=True))
    return _workdir(dataset) / "crossfit" / key


def _fold_model_dir(folder: Path, fold: int) -> Path:
    return folder / f"fold-{fold}" / "last"


def _fold_done(folder: Path, fold: int) -> bool:
    run = folder / f"fold-{fold}"
    status = read_json_dict(run / "status.json")
    return status.get("state") == "finished" and (_fold_model_dir(folder, fold) / "card.json").is_file()


def load_crossfit(dataset: Dataset, config: CrossFitConfig,
                  current_masks: Mapping[str, str] | None = None) -> CrossFit | None:
    """The finished cross-fit of ``config`` on ``dataset``, or None when it is missing or incomplete.

    ``current_masks`` (``{case_id: mask digest}``) fills :attr:`CrossFit.stale_masks`.
    """
    folder = crossfit_folder(dataset, config)
    doc = read_json_dict(folder / CROSSFIT_FILE)
    if doc.get("format") != CROSSFIT_FORMAT or doc.get("state") != "finished":
        return None
    if not all(_fold_done(folder, f) for f in range(config.k)):
        return None
    masks = {str(k): str(v) for k, v in (doc.get("masks") or {}).items()}
    stale = tuple(sorted(c for c, d in (current_masks or {}).items() if c in masks and masks[c] != d))
    return CrossFit(folder, config, {str(k): int(v) for k, v in doc["folds"].items()},
                    tuple(_fold_model_dir(folder, f) for f in range(config.k)), masks,
                    tuple(float(s) for s in doc.get("seconds") or ()), stale)


def _write_training_manifest(dataset: Dataset, folder: Path) -> tuple[Path, dict[str, str]]:
    """The labelled cases as they are now (in-memory corrections included) as a manifest the
    training process reads; returns its path and the mask digest of every case."""
    from engine.datasets.manifest import write_manifest

    cases = dataset.labelled_cases()
    masks: dict[str, str] = {}
    for c in cases:
        try:
            masks[c.case_id] = mask_digest(dataset.load_mask(c))
        except WorkbenchError:
            masks[c.case_id] = "unreadable"
    path = folder / "data.json"
    write_manifest(path, dataset, cases, info={"purpose": "cross-fitting for the label-error finder"})
    return path, masks


def run_crossfit(dataset: Dataset, config: CrossFitConfig, progress: ProgressFn | None = None,
                 status_dir: Path | None = None) -> CrossFit:
    """Train the missing fold models of ``config`` on ``dataset`` (finished folds are kept).

    Args:
        dataset: the dataset; its labelled cases are split into ``config.k`` grouped folds.
        config: the :class:`CrossFitConfig`.
        progress: ``(done, total, message)`` over all optimizer steps of the folds still to train.
        status_dir: also keep ``status.json`` there for :func:`engine.jobs.job_status` (folds shown
            as epochs); a ``CANCEL`` file there stops the run after the current step.

    Returns:
        the :class:`CrossFit`.

    Raises:
        ConfigError: too few cases or groups for ``k`` folds, or a bad model config.
        WorkbenchError: a fold's training failed or was cancelled.

    Example:
        >>> cf = run_crossfit(ds, CrossFitConfig(k=5, epochs=20))     # doctest: +SKIP
        >>> len(cf.model_dirs)                                         # doctest: +SKIP
        5
    """
    from engine.splits import SplitSpec, save_folds
    from engine.training import TrainConfig, train
    from engine.training.runlog import RunLog

    report = as_progress(progress)
    folder = crossfit_folder(dataset, config)
    folder.mkdir(parents=True, exist_ok=True)
    old = read_json_dict(folder / CROSSFIT_FILE)
    folds = ({str(k): int(v) for k, v in old["folds"].items()} if old.get("folds") else _split_folds(dataset, config))
    folds_file = folder / "folds.json"
    spec = SplitSpec(k=config.k, seed=config.seed)
    save_folds(folds_file, folds, spec)
    data_path, masks = ((folder / "data.json"), {str(k): str(v) for k, v in (old.get("masks") or {}).items()})
    if not data_path.is_file() or not masks:
        data_path, masks = _write_training_manifest(dataset, folder)
    todo = [f for f in range(config.k) if not _fold_done(folder, f)]
    seconds = list(old.get("seconds") or [0.0] * config.k)
    seconds += [0.0] * (config.k - len(seconds))
    doc: dict[str, Any] = {"format": CROSSFIT_FORMAT, "version": CROSSFIT_VERSION, "state": "running",
                           "config": config.to_dict(), "images": dataset_digest(dataset), "folds": folds,
                           "masks": masks, "seconds": seconds, "dataset": str(dataset.root)}
    atomic_write_json(folder / CROSSFIT_FILE, doc, durable=False)
    n_cases = len(folds)
    steps_fold = max(1, -(-int(round(n_cases * (config.k - 1) / config.k)) // config.batch_size)) * config.epochs
    log = RunLog(status_dir, config.k, steps_fold, interval=2.0,
                 base={"name": f"cross-fit {config.model.arch} k={config.k}", "task": "crossfit"},
                 enabled=status_dir is not None) if status_dir is not None else None
    if log is not None:
        log.clear_cancel()
        log.update(force=True, state="running", epoch=0, message=f"cross-fitting {len(todo)} fold(s)")
    total = max(1, len(todo) * steps_fold)
    for i, f in enumerate(todo):
        run_dir = folder / f"fold-{f}"
        if run_dir.exists():  # an unfinished earlier try: start the fold again
            import shutil

            shutil.rmtree(run_dir)

        fold_progress = _fold_reporter(report, log, i, f, run_dir, steps_fold, total, config.k)
        tcfg = TrainConfig(data=str(data_path), model=config.model, preprocess=config.preprocess,
                           augment=config.augment, loss=config.loss, optimizer="adamw", lr=config.lr,
                           scheduler="cosine", epochs=config.epochs, batch_size=config.batch_size,
                           early_stopping_patience=0, seed=config.seed, split=spec.replace(val_fold=f),
                           folds_file=str(folds_file), device=config.device, name=f"crossfit-fold{f}",
                           out=str(run_dir), export=False, preview_count=0, max_val_batches=2,
                           status_interval=5.0, num_workers=0,
                           description=f"cross-fit fold {f} of {config.k} for the label-error finder")
        t0 = time.perf_counter()
        result = train(tcfg, progress=fold_progress)
        seconds[f] = round(time.perf_counter() - t0, 2)
        if result.state != "finished" or not (_fold_model_dir(folder, f) / "card.json").is_file():
            doc.update(state=result.state, seconds=seconds)
            atomic_write_json(folder / CROSSFIT_FILE, doc, durable=False)
            if log is not None:
                log.update(force=True, state="cancelled" if result.state == "cancelled" else "failed",
                           message=f"fold {f + 1}/{config.k} {result.state}")
            raise WorkbenchError(f"cross-fitting stopped: fold {f + 1} of {config.k} ended {result.state}",
                                 path=run_dir, hint="run it again to train the remaining folds")
        doc.update(seconds=seconds)
        atomic_write_json(folder / CROSSFIT_FILE, doc, durable=False)
    doc.update(state="finished", seconds=seconds)
    atomic_write_json(folder / CROSSFIT_FILE, doc, durable=False)
    if log is not None:
        log.update(force=True, state="finished", epoch=config.k, step=steps_fold,
                   message=f"cross-fit finished: {config.k} fold models")
    report(total, total, "cross-fit finished")
    out = load_crossfit(dataset, config)
    assert out is not None  # every fold was just checked
    return out


def _fold_reporter(report: ProgressFn, log: Any, i: int, f: int, run_dir: Path, steps_fold: int, all_steps: int,
                   k: int) -> ProgressFn:
    """The progress callback of fold ``f`` (the ``i``-th to train): the overall bar, the job's
    ``status.json``, and a cancel request passed on to the fold's training run."""

    def fold_progress(done: int, total: int, message: str = "") -> None:
        # training reports reading/preprocessing first, then optimizer steps over the whole run
        step = int(round(steps_fold * done / total)) if total and message.startswith("epoch") else 0
        report(i * steps_fold + min(step, steps_fold), all_steps, f"fold {f + 1}/{k}: {message}")
        if log is not None:
            log.update(state="running", epoch=f + 1, step=min(step, steps_fold), message=f"fold {f + 1}/{k}: {message}")
            if log.cancel_requested():
                (run_dir / "CANCEL").write_text("cancel\n")

    return fold_progress


def start_crossfit_job(dataset_path: str | Path, config: CrossFitConfig, *,
                       options: Mapping[str, Any] | None = None, layout: str | None = None,
                       workspace: Workspace | str | Path | None = None, python: str | None = None) -> Job:
    """Run :func:`run_crossfit` in a background process (``python -m engine crossfit``) and return at once.

    Progress and cancellation use :mod:`engine.jobs`: ``job_status(job.run_dir)`` (folds are its
    "epochs") and ``cancel(job.run_dir)``. The job folder is the cross-fit's own folder, so any
    session finds it again with :func:`crossfit_status`.

    Raises:
        ConfigError: the dataset cannot be opened, or the process cannot start.
    """
    from engine.datasets import open_dataset
    from engine.jobs import JOB_FILE, LOG_FILE, REPO, Job
    from engine.workspace import Workspace

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ds = open_dataset(dataset_path, layout, options=dict(options or {}), workspace=ws)
    folder = crossfit_folder(ds, config)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / "crossfit-config.json"
    config.save(cfg_path)
    cmd = [python or sys.executable, "-m", "engine", "--workspace", str(ws.root), "crossfit", str(dataset_path),
           "--config", str(cfg_path), "--status-dir", str(folder), "--quiet",
           "--options", json.dumps(dict(options or {}))] + (["--layout", layout] if layout else [])
    env = dict(os.environ)
    env["SEGWB_WORKSPACE"] = str(ws.root)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    atomic_write_json(folder / "status.json", {"state": "starting", "epoch": 0, "epochs": config.k, "step": 0,
                                               "steps_per_epoch": 0, "message": "starting", "task": "crossfit",
                                               "name": f"cross-fit {config.model.arch} k={config.k}"})
    with open(folder / LOG_FILE, "ab") as log:
        try:
            proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise ConfigError(f"cannot start the cross-fit process ({exc})", path=folder,
                              hint="check the Python interpreter and the repository path") from None
    import datetime as _dt

    atomic_write_json(folder / JOB_FILE, {
        "pid": proc.pid, "command": cmd, "launched": time.time(), "name": "crossfit",
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "workspace": str(ws.root), "log": str(folder / LOG_FILE), "cancel_requested": None, "cancel_grace": None})
    return Job(folder, proc.pid, "crossfit", tuple(cmd))


def crossfit_status(dataset: Dataset, config: CrossFitConfig) -> dict[str, Any]:
    """:func:`engine.jobs.job_status` of the cross-fit's folder (state ``unknown`` when never started;
    ``finished`` when every fold model is there)."""
    from engine.jobs import job_status

    folder = crossfit_folder(dataset, config)
    if load_crossfit(dataset, config) is not None:
        return {"state": "finished", "active": False, "fraction": 1.0, "run_dir": str(folder),
                "message": f"{config.k} fold models ready"}
    return job_status(folder, log_lines=0) if folder.is_dir() else {
        "state": "unknown", "active": False, "fraction": 0.0, "run_dir": str(folder), "message": "not started"}


# ------------------------------------------------------------------------------------------ models → probabilities

def allowed_tta(card: ModelCard) -> tuple[str, ...]:
    """TTA modes (:data:`engine.inference.TTA_MODES`) whose views the model trained on.

    ``none`` always; ``flip`` (horizontal) when the card's ``training.config.augment.hflip > 0``;
    ``flip4`` (horizontal, vertical and both) only when ``vflip > 0`` as well. A card without a
    training config allows ``none`` only.

    Example:
        >>> from engine.checkpoint import ModelCard
        >>> card = ModelCard(name="m", spec=ModelSpec(arch="unet_classic"), labels={0: "bg", 1: "fg"},
        ...                  training={"config": {"augment": {"hflip": 0.5, "vflip": 0.0}}})
        >>> allowed_tta(card)
        ('none', 'flip')
    """
    aug = ((card.training or {}).get("config") or {}).get("augment")
    if isinstance(aug, str):
        try:
            aug = AugmentConfig.preset(aug).to_dict()
        except ConfigError:
            aug = None
    if not isinstance(aug, dict):
        return ("none",)
    h, v = float(aug.get("hflip") or 0.0), float(aug.get("vflip") or 0.0)
    return ("none",) + (("flip",) if h > 0 else ()) + (("flip4",) if h > 0 and v > 0 else ())


@dataclass(frozen=True)
class ModelSource:
    """One model that gives probabilities for a dataset.

    Attributes:
        name: shown in provenance (``lung-cxr``, ``cross-fit fold 3``).
        folder: its weights folder.
        card: its card.
        digest: tensors digest (cache key).
        kind: ``shipped`` or ``fold``.
        fold: the fold it did not train on (``kind="fold"``), else None.
        trained_on: case ids of this dataset it trained on (None: it did not train on this dataset).
        tta: TTA mode used (``none`` unless asked for and allowed by the card).
    """

    name: str
    folder: Path
    card: ModelCard
    digest: str
    kind: str
    fold: int | None = None
    trained_on: frozenset[str] | None = None
    tta: str = "none"


def _tensors_digest(folder: Path, card: ModelCard) -> str:
    if card.tensors_sha256:
        return str(card.tensors_sha256)[:16]
    from engine.checkpoint import WEIGHTS_FILE

    h = hashlib.sha1()
    with open(folder / WEIGHTS_FILE, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _pick_tta(card: ModelCard, tta: bool | str) -> str:
    if tta is False or tta == "none":
        return "none"
    want = "flip" if tta is True else str(tta)
    allowed = allowed_tta(card)
    if want not in allowed:
        raise ConfigError(f"TTA '{want}' uses views model {card.name} did not train on (allowed: "
                          f"{', '.join(allowed)})", hint="use a view its training augmentation had, or no TTA")
    return want


def shipped_source(name_or_dir: str | Path, dataset: Dataset, tta: bool | str = False) -> ModelSource:
    """A shipped (or exported) model as a probability source; its training cases on ``dataset``
    come from its card (:func:`engine.evaluation.training_cases`).

    Raises:
        CheckpointError: unknown weights (the hint lists where they were looked for).
        ConfigError: the model's classes do not match the dataset's, or a TTA it did not train for.
    """
    from engine.checkpoint import read_card, resolve_weights
    from engine.evaluation import class_mapping, training_cases

    folder = resolve_weights(name_or_dir)
    card = read_card(folder)
    class_mapping(card.labels, dataset.labels)  # raises when nothing matches
    train = training_cases(card, dataset)
    return ModelSource(card.name or folder.name, folder, card, _tensors_digest(folder, card), "shipped", None,
                       None if train is None else frozenset(train), _pick_tta(card, tta))


def fold_sources(cf: CrossFit, tta: bool | str = False) -> list[ModelSource]:
    """The fold models of a cross-fit as probability sources (fold ``f`` trained on every other fold)."""
    from engine.checkpoint import read_card

    out = []
    for f, folder in enumerate(cf.model_dirs):
        card = read_card(folder)
        trained = frozenset(c for c, g in cf.folds.items() if g != f)
        out.append(ModelSource(f"cross-fit fold {f}", folder, card, _tensors_digest(folder, card), "fold", f,
                               trained, _pick_tta(card, tta)))
    return out


@dataclass
class CaseProbs:
    """The probabilities a case is judged with.

    Attributes:
        probs: float32 (K,H,W) softmax probabilities of the dataset's K classes at the image size
            (the mean over the honest sources).
        honest: True when every model averaged into ``probs`` did not train on the case.
        provenance: which model(s), in words (``out-of-fold: k=5 cross-fit of unet_classic, fold 3``).
        fold_std: float32 (K,H,W) standard deviation of the k fold models' probabilities (the
            fold-model disagreement), or None without a cross-fit.
        sources: names of the models averaged.
    """

    probs: np.ndarray
    honest: bool
    provenance: str
    fold_std: np.ndarray | None = None
    sources: tuple[str, ...] = ()


class ProbabilitySet:
    """Probabilities of every labelled case of a dataset from a set of models (see module doc).

    Built by :func:`honest_probabilities`. Predictions are made once per model (cached on disk);
    :meth:`case` restores one case to its image size on demand.

    Attributes:
        sources: the :class:`ModelSource` list.
        folds: ``{case_id: fold}`` of the cross-fit (empty without one).
        crossfit: the :class:`CrossFit` or None.
        digest: identity of the probabilities (models, TTA, folds): the key of score caches.
        seconds: ``predict`` (model passes) and ``cached`` (cases read back from the cache).
    """

    def __init__(self, dataset: Dataset, sources: Sequence[ModelSource], small: Mapping[str, Mapping[str, np.ndarray]],
                 crossfit: CrossFit | None = None, seconds: Mapping[str, float] | None = None):
        from engine.evaluation import class_mapping

        self.dataset = dataset
        self.sources = list(sources)
        self.crossfit = crossfit
        self.folds = dict(crossfit.folds) if crossfit is not None else {}
        self._small = small
        self._luts = {s.digest: class_mapping(s.card.labels, dataset.labels) for s in self.sources}
        self.seconds = dict(seconds or {})
        parts = [f"{s.kind}:{s.digest}:{s.tta}:{s.fold}" for s in self.sources]
        parts.append(json.dumps(self.folds, sort_keys=True))
        self.digest = _sha("|".join(parts))

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.dataset.labelled_cases() if all(c.case_id in self._small.get(s.digest, {})
                                                                         for s in self.sources)]

    def _restored(self, src: ModelSource, case_id: str) -> np.ndarray:
        c = self.dataset.case(case_id)
        small = np.asarray(self._small[src.digest][case_id], dtype=np.float32)
        from engine.augment import restore_size

        p = restore_size(small, (int(c.height), int(c.width)), src.card.preprocess)
        lut = self._luts[src.digest]
        k_out = self.dataset.num_classes
        out = np.zeros((k_out,) + p.shape[1:], np.float32)
        for mid in range(p.shape[0]):
            out[int(lut[mid]) if mid < len(lut) else 0] += p[mid]
        return out

    def honest_sources(self, case_id: str) -> list[ModelSource]:
        """The sources that did not train on ``case_id`` (the out-of-fold model counts once)."""
        out = [s for s in self.sources if s.trained_on is None or case_id not in s.trained_on]
        return out

    def case(self, case_id: str) -> CaseProbs:
        """The :class:`CaseProbs` of one case (see :class:`CaseProbs` for shapes)."""
        folds = [s for s in self.sources if s.kind == "fold"]
        honest = self.honest_sources(case_id)
        use = honest or self.sources
        restored = {s.digest: self._restored(s, case_id) for s in self.sources
                    if s in use or (s.kind == "fold" and len(folds) > 1)}
        probs = np.mean([restored[s.digest] for s in use], axis=0).astype(np.float32)
        fold_std = (np.std([restored[s.digest] for s in folds], axis=0).astype(np.float32)
                    if len(folds) > 1 else None)
        return CaseProbs(probs, bool(honest), self.provenance(case_id), fold_std, tuple(s.name for s in use))

    def provenance(self, case_id: str) -> str:
        """Which models judge ``case_id``, in words; says *not honest* when every one trained on it."""
        honest = self.honest_sources(case_id)
        parts = []
        for s in honest:
            if s.kind == "fold" and case_id in self.folds:
                cfg = self.crossfit.config if self.crossfit is not None else None
                what = f"k={cfg.k} cross-fit of {cfg.model.arch}" if cfg is not None else "cross-fit"
                parts.append(f"out-of-fold: {what}, fold {s.fold}")
            elif s.kind == "fold":
                parts.append(f"cross-fit {s.name} (case added after the cross-fit, in no fold)")
            elif s.trained_on is None:
                parts.append(f"shipped model {s.name}, not trained on this dataset")
            else:
                parts.append(f"shipped model {s.name}, case not in its training set")
        if honest:
            return "; ".join(dict.fromkeys(parts))
        names = ", ".join(s.name for s in self.sources)
        return f"in the training set of {names}: not honest (cross-fit with --folds K for honest scores)"

    def describe(self) -> dict[str, Any]:
        """JSON-safe description: sources, folds, digest, timings."""
        return {"digest": self.digest, "seconds": self.seconds,
                "crossfit": None if self.crossfit is None else {
                    "folder": str(self.crossfit.folder), "config": self.crossfit.config.to_dict(),
                    "k": self.crossfit.config.k, "seconds": list(self.crossfit.seconds),
                    "stale_masks": list(self.crossfit.stale_masks)},
                "sources": [{"name": s.name, "kind": s.kind, "fold": s.fold, "digest": s.digest, "tta": s.tta,
                             "folder": str(s.folder),
                             "n_trained_on": None if s.trained_on is None else len(s.trained_on)}
                            for s in self.sources]}


def _cache_dir(dataset: Dataset, src: ModelSource) -> Path:
    return _workdir(dataset) / "suspects" / "probs" / f"{src.digest}-{src.tta}"


def _read_cached(path: Path, stamp: str) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["stamp"]) != stamp:
                return None
            return np.asarray(z["probs"])
    except (OSError, ValueError, KeyError):
        return None


def _predict_sources(dataset: Dataset, sources: Sequence[ModelSource], case_ids: Sequence[str], *, device: str,
                     use_cache: bool, progress: ProgressFn | None) -> tuple[dict[str, dict[str, np.ndarray]],
                                                                           dict[str, float]]:
    """``{source digest: {case_id: float16 (K_model,h,w)}}``: each model predicts each case once;
    preprocessed inputs are shared by models with the same preprocessing."""
    import torch

    from engine.augment import preprocess_image
    from engine.checkpoint import load_checkpoint
    from engine.inference import Predictor

    report = as_progress(progress)
    out: dict[str, dict[str, np.ndarray]] = {s.digest: {} for s in sources}
    todo: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    stamps = {cid: _image_stamp(dataset.case(cid).image_path) for cid in case_ids}
    for s in sources:
        folder = _cache_dir(dataset, s)
        for cid in case_ids:
            got = _read_cached(safe_child(folder, cid, ".npz"), stamps[cid]) if use_cache else None
            if got is None:
                todo.setdefault(s.digest, []).append(cid)
            else:
                out[s.digest][cid] = got
    t_cached = time.perf_counter() - t0
    n_total = sum(len(v) for v in todo.values())
    done = 0
    t1 = time.perf_counter()
    inputs: dict[str, dict[str, np.ndarray]] = {}
    for s in sources:
        ids = todo.get(s.digest) or []
        if not ids:
            continue
        model, card = load_checkpoint(s.folder, device="cpu")
        pred = Predictor(model, card, device=device, tta=s.tta, batch_size=8)
        pkey = card.preprocess.to_json(indent=None)
        cache = inputs.setdefault(pkey, {})
        folder = _cache_dir(dataset, s)
        for j in range(0, len(ids), pred.batch_size):
            chunk = ids[j:j + pred.batch_size]
            xs = []
            for cid in chunk:
                if cid not in cache:
                    try:
                        cache[cid] = preprocess_image(dataset.load_image_float(cid), card.preprocess)
                    except WorkbenchError:
                        cache[cid] = np.zeros((0,), np.float32)
                xs.append(cache[cid])
            good = [(cid, x) for cid, x in zip(chunk, xs) if x.size]
            by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
            for cid, x in good:
                by_shape.setdefault(tuple(x.shape), []).append((cid, x))
            for items in by_shape.values():
                batch = torch.from_numpy(np.stack([x for _, x in items]))
                if pred._needs_tiling(tuple(batch.shape[2:])):
                    probs_list = [pred.sliding_window(batch[i:i + 1], s.tta)[0].float().cpu().numpy()
                                  for i in range(len(items))]
                else:
                    pb, _ = pred.forward_batch(batch, s.tta)
                    probs_list = list(pb.float().cpu().numpy())
                for (cid, _), p in zip(items, probs_list):
                    small = p.astype(np.float16)
                    out[s.digest][cid] = small
                    if use_cache:
                        path = safe_child(folder, cid, ".npz")
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with atomic_path(path, durable=False) as tmp:
                            with open(tmp, "wb") as fh:
                                np.savez_compressed(fh, probs=small, stamp=np.array(stamps[cid]))
            done += len(chunk)
            report(done, n_total, f"predicting with {s.name}")
        del model, pred
    return out, {"predict": round(time.perf_counter() - t1, 3), "cached_read": round(t_cached, 3),
                 "n_predicted": float(n_total)}


def honest_probabilities(dataset: Dataset, weights: Sequence[str | Path] = (), *, folds: int | None = None,
                         crossfit_config: CrossFitConfig | None = None, train_missing: bool = True,
                         tta: bool | str = False, device: str = "auto", use_cache: bool = True,
                         progress: ProgressFn | None = None) -> ProbabilitySet:
    """Probabilities for every labelled case from models that did not train on it (where possible).

    Args:
        dataset: the dataset whose labels are judged.
        weights: shipped/exported models (names or folders); honest for the cases not in their
            card's training set.
        folds: cross-fit ``k`` fold models (of ``crossfit_config``, else of the first model's
            architecture via :meth:`CrossFitConfig.from_card`, else the default small U-Net).
        crossfit_config: the cross-fit settings (its ``k`` is replaced by ``folds`` when given).
        train_missing: train fold models that are not cached yet (False: raise instead).
        tta: False (default: one pass per model), True (horizontal flip, when every model trained
            with it) or a mode of :data:`engine.inference.TTA_MODES` allowed by :func:`allowed_tta`.
        device: inference (and cross-fit training) device.
        use_cache: reuse and keep per-case probabilities on disk.
        progress: ``(done, total, message)``.

    Returns:
        a :class:`ProbabilitySet`.

    Raises:
        ConfigError: neither weights nor folds; classes that do not match; a missing cross-fit
            with ``train_missing=False``.
        CheckpointError: unknown weights.
    """
    weights = [w for w in weights if str(w).strip()]
    if not weights and not folds and crossfit_config is None:
        raise ConfigError("no model to judge the labels with",
                          hint="pass --weights NAME (a shipped model) and/or --folds K (cross-fit k models)")
    shipped = [shipped_source(w, dataset, tta) for w in weights]
    cf: CrossFit | None = None
    want_cf = folds is not None or crossfit_config is not None
    if want_cf:
        cfg = crossfit_config
        if cfg is None:
            cfg = (CrossFitConfig.from_card(shipped[0].card, int(folds or 5), device=device) if shipped
                   else CrossFitConfig(k=int(folds or 5), device=device))
        elif folds is not None:
            cfg = cfg.replace(k=int(folds))
        cf = load_crossfit(dataset, cfg)
        if cf is None:
            if not train_missing:
                raise ConfigError(f"no finished {cfg.k}-fold cross-fit of {cfg.describe()} for this dataset",
                                  path=crossfit_folder(dataset, cfg),
                                  hint="run `python -m engine crossfit DATASET` (or the page's cross-fit job) first")
            cf = run_crossfit(dataset, cfg, progress=scaled(progress, 0.0, 0.9))
    sources = shipped + (fold_sources(cf, tta) if cf is not None else [])
    ids = [c.case_id for c in dataset.labelled_cases()]
    small, secs = _predict_sources(dataset, sources, ids, device=device, use_cache=use_cache,
                                   progress=scaled(progress, 0.9 if cf is not None else 0.0, 1.0))
    if cf is not None:
        current = {}
        for cid in cf.masks:
            if cid in dataset:
                try:
                    current[cid] = mask_digest(dataset.load_mask(cid))
                except WorkbenchError:
                    continue
        stale = tuple(sorted(c for c, d in current.items() if cf.masks.get(c) != d))
        cf = CrossFit(cf.folder, cf.config, cf.folds, cf.model_dirs, cf.masks, cf.seconds, stale)
    return ProbabilitySet(dataset, sources, small, cf, secs)

