"""The segmentation task plugged into the training loop (:mod:`engine.training.loop`).

Validation (main process only) predicts every validation image with
:class:`engine.inference.Predictor` — the same code the app uses, so the validation Dice is what
inference gives — on the cached preprocessed inputs: whole images in batches, or the
overlap-tile sliding window when ``patch_size`` is set and an image is larger than the tile.
Metrics are computed **at the model-input resolution with the padding cropped away** (for
``resize`` that is the resized image; for ``letterbox``/``pad`` the image content only):
probabilities → :func:`engine.postprocess.postprocess` with ``config.postprocess`` →
:class:`engine.metrics.MetricAccumulator` against the preprocessed (nearest-neighbour) ground truth,
with ``config.val_empty_policy``. This avoids a resize per image per epoch; the figures at the
original resolution come from ``python -m engine evaluate`` on the saved model.

The validation loss is the training criterion applied to ``log(p)`` of the predicted (possibly
tile-blended) probabilities ``p``: since ``softmax(log p) = p``, this equals the loss of logits
that produce ``p``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from engine.errors import ConfigError
from engine.progress import ProgressFn
from engine.training.data import CachedCase, SegTrainSet, build_cache, weight_cache_for
from engine.training.prepare import cache_dir_for, is_synthetic, open_training_data, positive_only, split_cases

if TYPE_CHECKING:
    from engine.datasets.base import Case, Dataset

__all__ = ["SegTask"]


class SegTask:
    """Segmentation: model from ``config.model``, loss ``config.loss`` (+ presence BCE), Dice metric."""

    kind = "segment"
    metric_name = "val_dice"

    def __init__(self, config: Any, *, main: bool, progress: ProgressFn | None = None):
        from engine.losses import build_loss, combined_loss, presence_pos_weight
        from engine.progress import scaled

        self.dataset, cases = open_training_data(config)
        labels = dict(sorted(self.dataset.labels.items()))
        if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
            raise ConfigError(f"the dataset's label map {labels} is not 0..K-1 with K >= 2",
                              path=config.data, hint="fix the label names / class ids of the dataset")
        spec = config.model
        if spec.num_classes != len(labels):
            if not config.auto_classes:
                raise ConfigError(f"the model has num_classes={spec.num_classes} but the dataset has "
                                  f"{len(labels)} classes ({', '.join(labels.values())})",
                                  hint="use --classes auto or the dataset's class count")
            spec = spec.replace(num_classes=len(labels))
        self.config = config.replace(model=spec)
        self.labels = labels
        self.train_cases, self.val_cases, self.split = split_cases(self.config, cases)
        if config.positive_only:
            self.train_cases = positive_only(self.train_cases, self.split)
        self.fingerprint = _fingerprint(self.dataset, self.train_cases) if main else {}
        wcache = weight_cache_for(config.loss, config.loss_kwargs)
        disk = cache_dir_for(self.dataset) if config.cache_preprocessed else None
        self.train_items, skipped = build_cache(self.dataset, self.train_cases, config.preprocess,
                                                dtype=config.cache_dtype, weights=wcache, disk_dir=disk,
                                                progress=scaled(progress, 0.0, 0.8 if main else 1.0, 1000))
        self.val_items: list[CachedCase] = []
        if main:
            self.val_items, skipped_val = build_cache(self.dataset, self.val_cases, config.preprocess,
                                                      dtype=config.cache_dtype, weights=None, disk_dir=disk,
                                                      progress=scaled(progress, 0.8, 1.0, 1000))
            skipped += skipped_val
        self.skipped = skipped
        if not self.train_items:
            raise ConfigError("no training case could be read", path=config.data,
                              hint="see the skipped cases: " + "; ".join(r for _, r in skipped[:3]))
        self.split["n_skipped_unreadable"] = len(skipped)
        self.train_set = SegTrainSet(self.train_items, config.preprocess, config.augment, seed=config.seed,
                                     patch_size=config.patch_size, fg_oversample=config.foreground_oversample)
        present = [it.has_mask for it in self.train_items]
        self.pos_weight = presence_pos_weight(present)
        self.presence_weight = float(config.presence_loss_weight) if spec.presence_head else 0.0
        # a presence head that gets no loss has parameters without gradients (DDP must be told)
        self.find_unused_parameters = bool(spec.presence_head and self.presence_weight == 0)
        self.criterion = combined_loss(build_loss(config.loss, **(config.loss_kwargs or {})),
                                       presence_weight=self.presence_weight, pos_weight=self.pos_weight)
        self.preview_items = _pick_preview(self.val_items, config.preview_count)
        ids = {it.case_id for it in self.preview_items}
        self.val_items = self.preview_items + [it for it in self.val_items if it.case_id not in ids]
        self._card = None

    # -- model ---------------------------------------------------------------------------------
    def build_model(self):
        from engine.models import build_model

        net = build_model(self.config.model)
        pre = self.config.preprocess
        d = int(net.size_divisor)
        if self.config.patch_size is not None:
            bad = [s for s in self.config.patch_size if s % d]
            if bad:
                raise ConfigError(f"patch_size {self.config.patch_size} is not divisible by the model's {d}",
                                  hint=f"use multiples of {d}, "
                                       f"e.g. {tuple(max(d, s // d * d) for s in self.config.patch_size)}")
        elif pre.resize_policy != "pad" and any(s % d for s in pre.size):
            raise ConfigError(f"preprocess size {tuple(pre.size)} is not divisible by the model's {d}",
                              hint=f"use multiples of {d}, e.g. {tuple(max(d, s // d * d) for s in pre.size)}")
        elif pre.resize_policy == "pad" and pre.pad_multiple % d:
            raise ConfigError(f"pad_multiple {pre.pad_multiple} is not a multiple of the model's {d}",
                              hint=f"set preprocess.pad_multiple to {d} or a multiple of it")
        self.criterion.to("cpu")
        return net

    def card(self, metrics: dict[str, Any] | None = None, training: dict[str, Any] | None = None):
        from engine.checkpoint import ModelCard

        cfg = self.config
        license_info = {k: v for k, v in (("license", cfg.license), ("attribution", cfg.attribution)) if v}
        return ModelCard(name=cfg.name, spec=cfg.model, labels=self.labels, preprocess=cfg.preprocess,
                         postprocess=cfg.postprocess, tile=cfg.patch_size, description=cfg.description,
                         training=training or {}, metrics=metrics or {}, license=license_info,
                         synthetic=is_synthetic(self.dataset), fingerprint=self.fingerprint)

    def save(self, folder: Path, model: Any, metrics: dict[str, Any], training: dict[str, Any]) -> Path:
        from engine.checkpoint import save_checkpoint

        return save_checkpoint(folder, model, self.card(metrics, training))

    # -- steps ---------------------------------------------------------------------------------
    def loss(self, model: Any, batch: dict[str, Any], device: Any, autocast: Any,
             channels_last: bool) -> Any:
        import torch

        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["mask"].to(device, non_blocking=True).long()
        w = batch["weight"].to(device, non_blocking=True) if "weight" in batch else None
        with autocast():
            out = model(x)
        self.criterion.to(device)
        return self.criterion(out, y, present=batch["present"].to(device, non_blocking=True), weight_map=w)["loss"]

    def bn_inputs(self, loader: Any, device: Any):
        """Image batches for recomputing BatchNorm statistics (SWA)."""
        for batch in loader:
            yield batch["image"].to(device)

    # -- validation ------------------------------------------------------------------------------
    def validate(self, model: Any, device: Any, *, amp: bool, channels_last: bool,
                 max_batches: int | None = None) -> dict[str, Any]:
        """Predict the validation cases; return the epoch's validation record (see module docstring)."""
        import torch

        from engine.inference import Predictor
        from engine.metrics import MetricAccumulator, presence_metrics
        from engine.postprocess import postprocess

        cfg = self.config
        pred = Predictor(model, self.card(), device=str(device), amp=amp, tile=cfg.patch_size,
                         batch_size=cfg.batch_size, channels_last=channels_last)
        acc = MetricAccumulator(len(self.labels), self.labels, empty_policy=cfg.val_empty_policy)
        tile = cfg.patch_size
        # batches: same-shape images together, tiled images alone
        batches: list[list[CachedCase]] = []
        open_by_shape: dict[tuple[int, ...], list[CachedCase]] = {}
        for it in self.val_items:
            shape = tuple(it.image.shape)
            if tile and (shape[1] > tile[0] or shape[2] > tile[1]):
                batches.append([it])
                continue
            group = open_by_shape.setdefault(shape, [])
            group.append(it)
            if len(group) == cfg.batch_size:
                batches.append(group)
                open_by_shape[shape] = []
        batches += [g for g in open_by_shape.values() if g]
        if max_batches is not None:
            batches = batches[:max_batches]
        from engine.augment import normalize_image

        loss_sum, n_img = 0.0, 0
        scores: list[float] = []
        truth: list[bool] = []
        previews: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        preview_ids = {it.case_id for it in self.preview_items}
        crit = self.criterion.to(device)
        for group in batches:
            x = torch.from_numpy(np.stack([normalize_image(it.image_float(), cfg.preprocess) for it in group]))
            if len(group) == 1 and tile and (x.shape[2] > tile[0] or x.shape[3] > tile[1]):
                p, pr = pred.sliding_window(x)
                probs, pres = p[None], (pr.reshape(1) if pr is not None else None)
            else:
                probs, pres = pred.forward_batch(x)
            y = torch.from_numpy(np.stack([it.mask for it in group]).astype(np.int64)).to(probs.device)
            with torch.inference_mode():
                out = {"mask": torch.log(probs.float().clamp_min(1e-7))}
                if pres is not None:
                    pc = pres.float().clamp(1e-6, 1 - 1e-6)
                    out["presence"] = torch.log(pc / (1 - pc)).reshape(-1, 1)
                loss_sum += float(crit(out, y)["loss"]) * len(group)
            n_img += len(group)
            probs_np = probs.float().cpu().numpy()
            pres_np = pres.float().cpu().numpy() if pres is not None else None
            for k, it in enumerate(group):
                p_k = it.content(probs_np[k])
                presence = float(pres_np[k]) if pres_np is not None else None
                pm = postprocess(np.ascontiguousarray(p_k), cfg.postprocess, presence)
                gt = np.ascontiguousarray(it.content(it.mask))
                acc.add(it.case_id, pm, gt)
                if presence is not None:
                    scores.append(presence)
                    truth.append(bool(gt.any()))
                if it.case_id in preview_ids:
                    previews[it.case_id] = (it.content(it.image_float()), gt, pm)
        s = acc.summary()
        record: dict[str, Any] = {
            "val_loss": loss_sum / max(1, n_img),
            "val_dice": _f(s["mean_foreground"]["dice"]),
            "val_iou": _f(s["mean_foreground"]["iou"]),
        }
        for name, c in s["classes"].items():
            record[f"dice_{name}"] = _f(c["dice"])
        if self.config.model.presence_head:
            pm_ = presence_metrics(truth, scores, curves=False) if scores else {"roc_auc": float("nan")}
            record["presence_auc"] = _f(pm_["roc_auc"])
        record["n_val"] = int(s["n_images"])
        self._last_summary = s
        self._last_previews = [previews[it.case_id] for it in self.preview_items if it.case_id in previews]
        return record

    def card_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        """The model card's ``metrics`` for a validation record."""
        s = getattr(self, "_last_summary", None) or {"classes": {}}
        m: dict[str, Any] = {
            "val_dice": record.get("val_dice"), "val_iou": record.get("val_iou"), "val_loss": record.get("val_loss"),
            "per_class_dice": {k: _f(v["dice"]) for k, v in s["classes"].items()},
            "per_class_iou": {k: _f(v["iou"]) for k, v in s["classes"].items()},
            "empty_policy": self.config.val_empty_policy,
            "n_val_cases": record.get("n_val"),
            "resolution": "model input, padding cropped (see engine.training.segment)",
            "postprocess": self.config.postprocess.to_dict(),
            "epoch": record.get("epoch"),
        }
        if "presence_auc" in record:
            m["presence_auc"] = record["presence_auc"]
        return m

    def write_preview(self, folder: Path, epoch: int, record: dict[str, Any]) -> None:
        from engine.training.runlog import render_preview, write_evolution_gif

        samples = getattr(self, "_last_previews", [])
        if not samples:
            return
        dice = record.get("val_dice")
        title = f"epoch {epoch}" + (f"   val Dice {dice:.3f}" if isinstance(dice, float) and dice == dice else "")
        render_preview(samples, folder / f"epoch_{epoch:03d}.png", title=title)
        write_evolution_gif(folder)


def _fingerprint(dataset: Dataset, cases: Sequence[Case]) -> dict[str, Any]:
    """The card's fingerprint of the training inputs (:mod:`engine.domain_profile`, ≤ 200 cases)."""
    from engine.domain_profile import profile_dataset

    return profile_dataset(dataset, [c.case_id for c in cases])


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _pick_preview(items: Sequence[CachedCase], n: int) -> list[CachedCase]:
    """Deterministic preview set: mostly non-empty cases (sorted by id) plus one empty when there is one."""
    if n <= 0 or not items:
        return []
    ordered = sorted(items, key=lambda it: it.case_id)
    pos = [it for it in ordered if it.has_mask]
    neg = [it for it in ordered if not it.has_mask]
    n_neg = min(len(neg), 1 if n >= 2 and pos else n)
    chosen = pos[: n - n_neg] + neg[:n_neg]
    if len(chosen) < n:
        taken = {it.case_id for it in chosen}
        rest = [it for it in ordered if it.case_id not in taken]
        chosen += rest[: n - len(chosen)]
    return chosen
