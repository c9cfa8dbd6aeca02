"""Training: ``train(TrainConfig) -> TrainResult`` and ``python -m engine train``.

Modules:

- :mod:`engine.training.config`: :class:`TrainConfig` (frozen, JSON round trip).
- :mod:`engine.training.data`: preprocess-once in-memory cache, augmentation per step, sampler.
- :mod:`engine.training.prepare`: dataset → labelled cases → grouped stratified split.
- :mod:`engine.training.segment`: the segmentation task (loss, validation Dice, previews, card).
- :mod:`engine.training.loop`: the loop (AMP, channels-last, schedulers, SWA, early stopping,
  resume, cancellation, torchrun/DDP).
- :mod:`engine.training.runlog`: ``status.json``, ``history.csv``/``.json``, preview PNG/GIF.
- :mod:`engine.classify`: the presence classifier task and its loader/predictor.

Example:
    >>> from engine.training import TrainConfig, train
    >>> from engine.models import ModelSpec
    >>> cfg = TrainConfig(data="demo_data/lung", model=ModelSpec(arch="unet_classic", base_channels=16),
    ...                   epochs=10, batch_size=8, name="lung-unet", export=True)       # doctest: +SKIP
    >>> result = train(cfg)                                                            # doctest: +SKIP
    >>> result.best_metric, result.exported                                            # doctest: +SKIP
"""

from engine.training.config import AMP_MODES, OPTIMIZERS, SCHEDULERS, TASKS, TrainConfig
from engine.training.loop import TrainResult, load_resume_state, load_run_config, train
from engine.training.runlog import read_history, read_status, request_cancel

__all__ = ["TrainConfig", "TrainResult", "train", "load_run_config", "load_resume_state", "read_status",
           "read_history", "request_cancel", "TASKS", "OPTIMIZERS", "SCHEDULERS", "AMP_MODES"]
