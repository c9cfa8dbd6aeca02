"""The training configuration: :class:`TrainConfig`, one frozen dataclass that round-trips JSON.

A run directory gets ``config.json`` (the exact config, with the number of classes and input
channels already resolved from the dataset), so ``python -m engine train --config
RUN/config.json`` repeats a run and ``--resume RUN`` continues it.

``augment`` accepts a preset name in JSON/dicts (``"augment": "ultrasound"``); it is stored
expanded, so a config file always says exactly which transforms ran.

Example:
    >>> cfg = TrainConfig(data="data/nerve", epochs=5, augment="light")
    >>> TrainConfig.from_json(cfg.to_json()) == cfg
    True
    >>> cfg.replace(lr=3e-4).lr
    0.0003
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.augment import AugmentConfig, Preprocess
from engine.config import JsonConfig
from engine.errors import ConfigError, unknown_name
from engine.metrics import EMPTY_POLICIES
from engine.models import ClassifierSpec, ModelSpec
from engine.postprocess import PostProcessConfig
from engine.splits import SplitSpec

__all__ = ["TrainConfig", "TASKS", "OPTIMIZERS", "SCHEDULERS", "AMP_MODES", "CACHE_DTYPES",
           "DEFAULT_SCHEDULER_PARAMS"]

TASKS = ("segment", "classify")
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("plateau", "cosine", "onecycle", "none")
AMP_MODES = ("off", "auto", "bf16", "fp16")
CACHE_DTYPES = ("uint8", "float16")

#: Defaults merged under ``scheduler_params`` (unknown keys raise ConfigError).
DEFAULT_SCHEDULER_PARAMS: dict[str, dict[str, Any]] = {
    # ReduceLROnPlateau on validation Dice (mode "max"), stepped once per epoch.
    "plateau": {"factor": 0.5, "patience": 3, "min_lr": 1e-6, "threshold": 1e-4},
    # CosineAnnealingLR over the planned epochs, stepped once per epoch.
    "cosine": {"eta_min": 1e-6},
    # OneCycleLR with max_lr = lr, stepped once per optimizer step.
    "onecycle": {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
    "none": {},
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}\Z")


def _default_model() -> ModelSpec:
    return ModelSpec(arch="unet_classic", base_channels=16)


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Everything a training run needs (segmentation, or the presence classifier of the two-stage pipeline).

    Data:
        data: dataset folder (any supported layout) or cleaned-manifest JSON.
        layout: force a layout (``kaggle_uns``/``siim``/``paired``); None = detect.
        dataset_options: layout options (``label_names``, ``threshold``, ``mask_suffixes``,
            ``group_regex``, ``rle_csv``), as for :func:`engine.datasets.open_dataset`.
        split: :class:`~engine.splits.SplitSpec` (k folds, seed, validation fold); folds are
            grouped by subject/patient and stratified by "mask non-empty".
        folds_file: an explicit folds JSON (:func:`engine.splits.save_folds`) instead of ``split``.
        cache_preprocessed: also keep the preprocessed cases on disk (in the dataset's workspace
            folder), so a second run skips decoding and resizing. Memory caching is always on.
        cache_dtype: in-memory image cache dtype, ``uint8`` (1 byte/pixel, quantisation error
            <= 1/510) or ``float16``.

    Model and task:
        task: ``segment`` or ``classify`` (image-level presence classifier, see :mod:`engine.classify`).
        model: :class:`~engine.models.ModelSpec` of the segmenter.
        auto_classes: set ``model.num_classes`` from the dataset's label map (and fail on a
            mismatch when False).
        classifier: :class:`~engine.models.ClassifierSpec` for ``task="classify"``.
        classifier_threshold: decision threshold stored with the classifier and used for
            sensitivity/specificity.
        preprocess: :class:`~engine.augment.Preprocess` (stored in the model card).
        postprocess: default :class:`~engine.postprocess.PostProcessConfig` for the card; also
            applied to validation predictions.
        augment: :class:`~engine.augment.AugmentConfig` (a preset name is accepted in JSON).
        patch_size: train on random ``(H, W)`` crops (``resize_policy="pad"`` only) and validate
            whole images with the overlap-tile sliding window; stored as the card's ``tile``.
        foreground_oversample: fraction of patches centred on a foreground pixel (nnU-Net uses 1/3).
        positive_only: train the segmenter on cases with a non-empty mask only (validation keeps
            every case); pair it with a presence classifier gate (the nerve case study's pipeline).

    Optimisation:
        loss, loss_kwargs: a name of :func:`engine.losses.build_loss` and its options.
        presence_loss_weight: weight of the presence BCE (``pos_weight`` = negatives / positives
            of the training cases) when the model has a presence head.
        optimizer: ``adam`` | ``adamw``; lr, weight_decay.
        scheduler: ``plateau`` (on validation Dice) | ``cosine`` | ``onecycle`` | ``none``;
            ``scheduler_params`` override :data:`DEFAULT_SCHEDULER_PARAMS`.
        epochs, batch_size (per process under torchrun), num_workers (None = automatic: 0 on CPU
            or with <= 2 cores, else up to 8 per process).
        early_stopping_patience: stop after this many epochs without a better validation score (0 = off).
        amp: ``off`` | ``auto`` (bf16 when supported, else fp16 with a GradScaler) | ``bf16`` |
            ``fp16``; CUDA only, ignored elsewhere.
        channels_last: None = on for CUDA; ignored on CPU.
        grad_clip: max gradient L2 norm (0 = off).
        swa: stochastic weight averaging from ``swa_start`` (fraction of the epochs) with a
            constant ``swa_lr`` (None = lr / 10); the averaged model (BatchNorm statistics
            recomputed) is validated at the end and kept when it beats the best epoch.
        seed, deterministic (CUDA: cuDNN deterministic kernels; CPU runs are deterministic anyway).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``.
        val_empty_policy: ``kaggle`` or ``exclude`` (see :mod:`engine.metrics`).

    Output:
        name: model name (export folder, card name). out: run folder (None =
        ``<workspace>/runs/<name>-<timestamp>``). export: copy the best model to
        ``<workspace>/models/<name>/``; a name a model already has is refused when the run starts
        (a shipped model's always; a workspace model's unless ``replace_model``), and if another run took
        the name meanwhile the export is versioned (``<name>-2``, …), never silently replaced.
        description / license / attribution: card text.
        preview_count: validation images drawn every epoch. status_interval: seconds between
        ``status.json`` updates. max_train_batches / max_val_batches: cap the batches per epoch
        (tests, benchmarks).
    """

    data: str = ""
    layout: str | None = None
    dataset_options: dict[str, Any] | None = None
    task: str = "segment"
    model: ModelSpec = _default_model()
    auto_classes: bool = True
    classifier: ClassifierSpec = ClassifierSpec(name="resnet18")
    classifier_threshold: float = 0.5
    preprocess: Preprocess = Preprocess(size=(256, 256))
    postprocess: PostProcessConfig = PostProcessConfig()
    augment: AugmentConfig = AugmentConfig.preset("light")
    patch_size: tuple[int, int] | None = None
    foreground_oversample: float = 0.33
    positive_only: bool = False
    loss: str = "bce_dice"
    loss_kwargs: dict[str, Any] | None = None
    presence_loss_weight: float = 0.5
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "plateau"
    scheduler_params: dict[str, Any] | None = None
    epochs: int = 30
    batch_size: int = 8
    num_workers: int | None = None
    early_stopping_patience: int = 10
    amp: str = "auto"
    channels_last: bool | None = None
    grad_clip: float = 1.0
    swa: bool = False
    swa_start: float = 0.75
    swa_lr: float | None = None
    seed: int = 0
    deterministic: bool = False
    split: SplitSpec = SplitSpec()
    folds_file: str | None = None
    val_empty_policy: str = "kaggle"
    preview_count: int = 4
    device: str = "auto"
    name: str = "model"
    out: str | None = None
    export: bool = False
    replace_model: bool = False
    description: str = ""
    license: str = ""
    attribution: str = ""
    max_train_batches: int | None = None
    max_val_batches: int | None = None
    cache_preprocessed: bool = False
    cache_dtype: str = "uint8"
    status_interval: float = 2.0
    init_weights: str | None = None
    lineage: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.augment, str):  # a preset name given in Python
            object.__setattr__(self, "augment", AugmentConfig.preset(self.augment))
        _one_of("task", self.task, TASKS)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("scheduler", self.scheduler, SCHEDULERS)
        _one_of("amp mode", self.amp, AMP_MODES)
        _one_of("empty policy", self.val_empty_policy, EMPTY_POLICIES)
        _one_of("cache dtype", self.cache_dtype, CACHE_DTYPES)
        from engine.losses import list_losses

        _one_of("loss", self.loss, tuple(list_losses()))
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")
        for name in ("early_stopping_patience", "preview_count", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {v!r}")
        for name in ("num_workers", "max_train_batches", "max_val_batches"):
            v = getattr(self, name)
            lo = 0 if name == "num_workers" else 1
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise ConfigError(f"{name} must be empty or a whole number >= {lo}, got {v!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}", hint="e.g. lr=1e-3")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.presence_loss_weight < 0:
            raise ConfigError("weight_decay, grad_clip and presence_loss_weight must be >= 0")
        if not 0 < self.swa_start <= 1:
            raise ConfigError(f"swa_start is a fraction of the epochs in (0, 1], got {self.swa_start!r}")
        if self.swa_lr is not None and not self.swa_lr > 0:
            raise ConfigError(f"swa_lr must be > 0 (or empty for lr / 10), got {self.swa_lr!r}")
        if not 0 <= self.foreground_oversample <= 1:
            raise ConfigError(f"foreground_oversample must be in [0, 1], got {self.foreground_oversample!r}")
        if not 0 <= self.classifier_threshold <= 1:
            raise ConfigError(f"classifier_threshold must be in [0, 1], got {self.classifier_threshold!r}")
        if self.status_interval < 0:
            raise ConfigError("status_interval must be >= 0 seconds")
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"name {self.name!r} cannot be a folder name",
                              hint="use letters, digits, '.', '_' and '-' (up to 80 characters), e.g. nerve-unet")
        if self.patch_size is not None:
            ps = tuple(int(s) for s in self.patch_size)
            if len(ps) != 2 or min(ps) < 1:
                raise ConfigError(f"patch_size must be (height, width), got {self.patch_size!r}")
            object.__setattr__(self, "patch_size", ps)
            if self.preprocess.resize_policy != "pad":
                raise ConfigError("patch_size needs preprocess.resize_policy='pad' (whole-resolution "
                                  "images, tiled inference)",
                                  hint="set resize_policy to 'pad', or leave patch_size empty to train on "
                                       "resized images")
        if self.task == "segment" and self.preprocess.in_channels != self.model.in_channels:
            raise ConfigError(f"preprocess.in_channels={self.preprocess.in_channels} but the model takes "
                              f"{self.model.in_channels}", hint="make them equal (1 = grayscale, 3 = RGB)")
        if self.task == "classify" and self.preprocess.in_channels != self.classifier.in_channels:
            raise ConfigError(f"preprocess.in_channels={self.preprocess.in_channels} but the classifier takes "
                              f"{self.classifier.in_channels}", hint="make them equal (1 = grayscale, 3 = RGB)")
        self.scheduler_settings()  # validates scheduler_params

    def scheduler_settings(self) -> dict[str, Any]:
        """``DEFAULT_SCHEDULER_PARAMS[scheduler]`` updated with ``scheduler_params`` (validated)."""
        base = dict(DEFAULT_SCHEDULER_PARAMS[self.scheduler])
        extra = dict(self.scheduler_params or {})
        unknown = sorted(set(extra) - set(base))
        if unknown:
            raise ConfigError(f"scheduler '{self.scheduler}' has no option(s) {', '.join(unknown)}",
                              hint=f"valid options: {', '.join(sorted(base)) or 'none'}")
        base.update(extra)
        return base

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainConfig":
        """As :meth:`JsonConfig.from_dict`, plus ``"augment": "<preset>"`` shorthand."""
        data = dict(data or {})
        if isinstance(data.get("augment"), str):
            data["augment"] = AugmentConfig.preset(data["augment"]).to_dict()
        return super().from_dict(data)


def _one_of(kind: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise unknown_name(kind, str(value), valid)
