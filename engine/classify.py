"""Image-level presence classifier for the two-stage pipeline (classifier gates the segmenter).

Trained by the same loop as the segmenters (``python -m engine train --task classify ...`` or
``train(TrainConfig(task="classify", classifier=ClassifierSpec("densenet121")))``) on the same data
pipeline, with target = "mask non-empty", :class:`engine.losses.PresenceLoss` (BCE with
``pos_weight`` = negatives / positives of the training cases, the inverse-frequency weighting of
the pneumothorax study) and validation ROC AUC / AP / sensitivity / specificity from
:func:`engine.metrics.presence_metrics`; the best epoch is chosen by ROC AUC.

Saved as ``model.safetensors`` + ``classifier.json`` (a :class:`~engine.checkpoint.ClassifierCard`:
name, classifier spec, preprocessing, threshold, metrics, training) by the same checkpoint code as
the segmenters (:mod:`engine.checkpoint`, ``kind="classify"``): same search path, hashing, strict
loading and listing. Classifier folders have no ``card.json``, so they never appear in the
segmentation model pickers.

Example:
    >>> clf = ClassifierPredictor.from_weights("nerve-presence")       # doctest: +SKIP
    >>> p = clf.predict_proba(img)        # img float32 (C,H,W) in [0,1] → P(structure present)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from engine.augment import normalize_image
from engine.checkpoint import (
    CLASSIFIER_CARD,
    ClassifierCard,
    list_weights,
    load_checkpoint,
    resolve_weights,
    save_checkpoint,
)
from engine.errors import ConfigError
from engine.progress import ProgressFn
from engine.training.prepare import is_synthetic

if TYPE_CHECKING:
    from engine.datasets.base import Dataset

__all__ = ["ClassifierCard", "ClassifyTask", "ClassifierPredictor", "save_classifier", "load_classifier",
           "resolve_classifier", "list_classifier_weights", "CLASSIFIER_CARD"]

def save_classifier(folder: str | Path, model: Any, card: ClassifierCard) -> Path:
    """:func:`engine.checkpoint.save_checkpoint` for a classifier (``classifier.json``)."""
    return save_checkpoint(folder, model, card)


def resolve_classifier(name_or_dir: str | Path, workspace: Any = None) -> Path:
    """Folder of a classifier name or path (:func:`engine.checkpoint.resolve_weights`, kind ``classify``)."""
    return resolve_weights(name_or_dir, workspace, kind="classify")


def list_classifier_weights(workspace: Any = None) -> list[dict[str, Any]]:
    """Every classifier folder in the search path (:func:`engine.checkpoint.list_weights`, kind ``classify``)."""
    return list_weights(workspace, kind="classify")


def load_classifier(name_or_dir: str | Path, device: str = "cpu", workspace: Any = None):
    """Rebuild a classifier from its card and load its tensors (eval mode):
    :func:`engine.checkpoint.load_checkpoint` with kind ``classify``.

    Returns:
        ``(PresenceClassifier, ClassifierCard)``.

    Raises:
        CheckpointError: missing/corrupt files or a card that does not match the tensors.

    Example:
        >>> model, card = load_classifier("nerve-presence")      # doctest: +SKIP
    """
    return load_checkpoint(name_or_dir, device=device, workspace=workspace, kind="classify")


class ClassifierPredictor:
    """Classifier + card → presence probabilities.

    Example:
        >>> clf = ClassifierPredictor.from_weights("nerve-presence", device="cpu")   # doctest: +SKIP
        >>> clf.predict_proba(np.zeros((1, 420, 580), np.float32))                   # doctest: +SKIP
        0.07
    """

    def __init__(self, model: Any, card: ClassifierCard, device: str = "auto", batch_size: int = 16):
        from engine.preprocess import select_device

        self.device = select_device(device)
        self.model = model.eval().to(self.device)
        self.card = card
        self.threshold = float(card.threshold)
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_weights(cls, name_or_dir: str | Path, device: str = "auto", **kwargs: Any) -> "ClassifierPredictor":
        model, card = load_classifier(name_or_dir, device="cpu")
        return cls(model, card, device=device, **kwargs)

    def _prep(self, img: np.ndarray) -> np.ndarray:
        from engine.preprocess import model_input

        return model_input(img, self.card.preprocess)

    def predict_proba_many(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """float64 ``(N,)`` probabilities that the structure is present, for float32 (C,H,W) images."""
        return self.predict_proba_inputs([self._prep(im) for im in images])

    def predict_proba_inputs(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        """float64 ``(N,)`` probabilities for inputs already preprocessed by ``card.preprocess``."""
        import torch

        out = np.zeros(len(xs), np.float64)
        order = sorted(range(len(xs)), key=lambda i: xs[i].shape)
        with torch.inference_mode():
            for j in range(0, len(order), self.batch_size):
                idx = order[j:j + self.batch_size]
                shapes = {xs[i].shape for i in idx}
                groups = [[i for i in idx if xs[i].shape == s] for s in shapes]
                for g in groups:
                    x = torch.from_numpy(np.stack([xs[i] for i in g])).to(self.device)
                    p = torch.sigmoid(self.model(x).float()).reshape(-1).cpu().numpy()
                    out[g] = p
        return out

    def predict_proba(self, img: np.ndarray) -> float:
        """P(structure present) for one float32 ``(C,H,W)`` image in [0, 1]."""
        return float(self.predict_proba_many([img])[0])

    def predict(self, img: np.ndarray) -> bool:
        """``predict_proba(img) >= card.threshold``."""
        return self.predict_proba(img) >= self.threshold


def evaluate_classifier(clf: ClassifierPredictor, dataset: Dataset, case_ids: Sequence[str] | None = None,
                        threshold: float | None = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Presence metrics of a classifier on labelled cases (truth = "the mask is non-empty").

    Returns :func:`engine.metrics.presence_metrics` (ROC AUC, AP, sensitivity, specificity, PPV,
    NPV, confusion matrix, curves) plus ``n_failed``/``failed`` (unreadable cases are skipped) and
    ``scores``: ``{case_id: P(present)}``.
    """
    from engine.errors import WorkbenchError
    from engine.metrics import presence_metrics
    from engine.progress import as_progress

    report = as_progress(progress)
    ids = list(case_ids) if case_ids is not None else [c.case_id for c in dataset.cases if c.labelled]
    scores: dict[str, float] = {}
    truth: list[bool] = []
    failed: list[dict[str, str]] = []
    for i, cid in enumerate(ids):
        case = dataset.case(cid)
        try:
            p = clf.predict_proba(dataset.load_image_float(case))
        except WorkbenchError as exc:
            failed.append({"case_id": cid, "error": str(exc)})
            continue
        scores[cid] = p
        truth.append(bool(case.has_mask))
        report(i + 1, len(ids), "classifying")
    if not scores:
        raise ConfigError("no case could be classified", path=getattr(dataset, "root", None),
                          hint=failed[0]["error"] if failed else "pick labelled cases")
    m = presence_metrics(truth, list(scores.values()), threshold=clf.threshold if threshold is None else threshold)
    m.update(n_failed=len(failed), failed=failed[:50], scores=scores)
    return m


# ----------------------------------------------------------------------------------- training task

class ClassifyTask:
    """Presence-classifier task for :func:`engine.training.train` (``config.task == "classify"``)."""

    kind = "classify"
    metric_name = "val_auc"
    card_file = CLASSIFIER_CARD

    def __init__(self, config: Any, *, main: bool, progress: ProgressFn | None = None):
        from engine.losses import PresenceLoss, presence_pos_weight
        from engine.progress import scaled
        from engine.training.data import CachedCase, SegTrainSet, build_cache
        from engine.training.prepare import cache_dir_for, open_training_data, split_cases

        if config.positive_only:
            raise ConfigError("positive_only is for the segmenter; a presence classifier needs empty images too",
                              hint="leave --positive-only off for --task classify")
        if config.patch_size is not None:
            raise ConfigError("patch_size is for segmentation; a classifier sees whole images",
                              hint="leave patch_size empty for --task classify")
        self.config = config
        self.dataset, cases = open_training_data(config)
        self.labels = dict(sorted(self.dataset.labels.items()))
        self.train_cases, self.val_cases, self.split = split_cases(config, cases)
        from engine.domain_profile import profile_dataset

        self.fingerprint = profile_dataset(self.dataset, [c.case_id for c in self.train_cases]) if main else {}
        disk = cache_dir_for(self.dataset) if config.cache_preprocessed else None
        self.train_items, skipped = build_cache(self.dataset, self.train_cases, config.preprocess,
                                                dtype=config.cache_dtype, disk_dir=disk,
                                                progress=scaled(progress, 0.0, 0.8 if main else 1.0, 1000))
        self.val_items: list[CachedCase] = []
        if main:
            self.val_items, sv = build_cache(self.dataset, self.val_cases, config.preprocess,
                                             dtype=config.cache_dtype, disk_dir=disk,
                                             progress=scaled(progress, 0.8, 1.0, 1000))
            skipped += sv
        self.skipped = skipped
        if not self.train_items:
            raise ConfigError("no training case could be read", path=config.data)
        self.split["n_skipped_unreadable"] = len(skipped)
        self.train_set = SegTrainSet(self.train_items, config.preprocess, config.augment, seed=config.seed)
        present = [it.has_mask for it in self.train_items]
        if all(present) or not any(present):
            raise ConfigError("a presence classifier needs training images with AND without a mask "
                              f"(here {sum(present)} of {len(present)} have one)", path=config.data,
                              hint="use a dataset with empty masks, or another validation fold")
        self.pos_weight = presence_pos_weight(present)
        self.criterion = PresenceLoss(self.pos_weight)

    def build_model(self):
        from engine.models import build_classifier

        return build_classifier(self.config.classifier)

    def loss(self, model: Any, batch: dict[str, Any], device: Any, autocast: Any, channels_last: bool) -> Any:
        import torch

        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        self.criterion.to(device)
        return self.criterion(logits, batch["present"].to(device, non_blocking=True))

    def bn_inputs(self, loader: Any, device: Any):
        for batch in loader:
            yield batch["image"].to(device)

    def validate(self, model: Any, device: Any, *, amp: bool, channels_last: bool,
                 max_batches: int | None = None) -> dict[str, Any]:
        import torch

        from engine.metrics import presence_metrics

        cfg = self.config
        model.eval()
        by_shape: dict[tuple[int, ...], list[Any]] = {}
        for it in self.val_items:
            by_shape.setdefault(tuple(it.image.shape), []).append(it)
        batches = [g[i:i + cfg.batch_size] for g in by_shape.values() for i in range(0, len(g), cfg.batch_size)]
        if max_batches is not None:
            batches = batches[:max_batches]
        amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
        scores, truth, loss_sum = [], [], 0.0
        crit = self.criterion.to(device)
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            for group in batches:
                x = torch.from_numpy(np.stack([normalize_image(it.image_float(), cfg.preprocess) for it in group]))
                x = x.to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = model(x).float().reshape(-1)
                y = torch.tensor([float(it.has_mask) for it in group], device=device)
                loss_sum += float(crit(logits, y)) * len(group)
                scores += torch.sigmoid(logits).cpu().tolist()
                truth += [bool(it.has_mask) for it in group]
        m = presence_metrics(truth, scores, threshold=cfg.classifier_threshold, curves=False)
        self._last = m
        return {"val_loss": loss_sum / max(1, len(scores)), "val_auc": float(m["roc_auc"]),
                "val_ap": float(m["average_precision"]), "val_sensitivity": float(m["sensitivity"]),
                "val_specificity": float(m["specificity"]), "val_accuracy": float(m["accuracy"]),
                "n_val": len(scores)}

    def card_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        m = dict(getattr(self, "_last", {}) or {})
        out = {k: record.get(k) for k in ("val_auc", "val_ap", "val_sensitivity", "val_specificity",
                                           "val_accuracy", "val_loss", "n_val", "epoch")}
        for k in ("confusion_matrix", "ppv", "npv", "f1", "threshold", "auc_reason", "n_positive", "n_negative"):
            if k in m:
                out[k] = m[k]
        return out

    def save(self, folder: Path, model: Any, metrics: dict[str, Any], training: dict[str, Any]) -> Path:
        cfg = self.config
        license_info = {k: v for k, v in (("license", cfg.license), ("attribution", cfg.attribution)) if v}
        fg = [v for k, v in sorted(self.labels.items()) if k != 0]
        card = ClassifierCard(name=cfg.name, classifier=cfg.classifier, preprocess=cfg.preprocess,
                              threshold=cfg.classifier_threshold, labels={0: "absent", 1: " or ".join(fg) or "present"},
                              description=cfg.description, training=training, metrics=metrics, license=license_info,
                              synthetic=is_synthetic(self.dataset), fingerprint=self.fingerprint)
        return save_checkpoint(folder, model, card)
