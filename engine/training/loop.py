"""The training loop shared by segmentation and the presence classifier: :func:`train`.

One loop, two tasks (:class:`engine.training.segment.SegTask`, :class:`engine.classify.ClassifyTask`).
A task owns data, model, loss, validation and the checkpoint format; the loop owns the rest:
seeding, device/AMP/channels-last, optimizer and scheduler, gradient clipping, SWA, early
stopping, status/history/preview files, cancellation, ``--resume`` and torchrun.

Run folder layout::

    RUN/config.json     the exact config (classes resolved from the dataset)
    RUN/status.json     live state for other processes (see engine.training.runlog)
    RUN/history.csv     one row per epoch (also history.json)
    RUN/best/           best epoch: model.safetensors + card.json (classifier: classifier.json)
    RUN/last/           the latest weights (every epoch, and at cancellation)
    RUN/resume.pt       optimizer/scheduler/scaler/SWA/RNG state after the last finished epoch
    RUN/preview/        epoch_XXX.png grids and evolution.gif (segmentation)
    RUN/swa.json        SWA result when swa=True

**Resume.** ``resume.pt`` is written with ``torch.save`` after every finished epoch and holds only
tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``. All per-step
randomness (shuffling, augmentation, patches) is a function of ``(seed, epoch, index)``, and the
global RNG states are restored, so on CPU a resumed run repeats an uninterrupted one exactly (GPU
kernels may add nondeterminism). A run cancelled mid-epoch resumes from its last *finished* epoch.
Resuming with more epochs than planned extends the plan: ``cosine`` keeps its state with the new
length, ``onecycle`` is re-planned over the new total (its learning rate jumps onto the new curve).

**torchrun.** ``torchrun --nproc_per_node N -m engine train ...`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; the loop initialises the process group (NCCL on CUDA, Gloo on CPU), shards each
epoch with a ``DistributedSampler`` (``set_epoch`` every epoch; ``batch_size`` is per process),
wraps the model in ``DistributedDataParallel`` (BatchNorm → SyncBatchNorm on CUDA), and averages
the training loss over processes. Validation, checkpoints, history, status and previews happen on
rank 0 only (validation is cheap next to training; the other ranks wait at a barrier and receive
the decisions — best score, early stop — by broadcast, so every rank steps its scheduler
identically). Every rank reads and caches the whole training set (the shuffle changes each epoch).
A ``CANCEL`` file seen by any rank stops all ranks at the same step (one all-reduced flag per step).

Example:
    >>> from engine.training import TrainConfig, train
    >>> cfg = TrainConfig(data="data/lung", epochs=20, batch_size=8, name="lung-unet")   # doctest: +SKIP
    >>> res = train(cfg, progress=lambda d, t, m: None)                                # doctest: +SKIP
    >>> res.best_metric, res.run_dir / "best"                                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np

from engine.errors import CheckpointError, ConfigError, WorkbenchError
from engine.fsutil import atomic_write_json, read_json
from engine.progress import ProgressFn, as_progress
from engine.training.config import TrainConfig
from engine.training.runlog import RunLog

__all__ = ["train", "TrainResult", "load_run_config", "load_resume_state", "RESUME_FILE"]

RESUME_FILE = "resume.pt"
RESUME_FORMAT = "segwb-resume"
RESUME_VERSION = 1


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder.
        best_metric: best validation score (segmentation: mean foreground Dice; classifier: ROC AUC).
        best_epoch: 1-based epoch of the best checkpoint (0 = none was saved).
        history: per-epoch records (as in ``history.json``).
        exported: ``<workspace>/models/<name>`` when ``export`` was set, else None.
        state: ``finished`` or ``cancelled``.
        metric: name of ``best_metric`` (``val_dice`` / ``val_auc``).
        swa: SWA validation record when SWA ran, else None.
    """

    run_dir: Path
    best_metric: float
    best_epoch: int
    history: list[dict[str, Any]]
    exported: Path | None = None
    state: str = "finished"
    metric: str = "val_dice"
    swa: dict[str, Any] | None = None

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"


# ---------------------------------------------------------------------------------- helpers

@dataclass
class _Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    created: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _init_distributed(device_pref: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return _Dist()
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device_pref.startswith("cpu")
    created = False
    if not dist.is_initialized():
        kw: dict[str, Any] = {"timeout": _dt.timedelta(minutes=60)}
        if use_cuda:
            torch.cuda.set_device(local)
            kw["device_id"] = torch.device("cuda", local)
        dist.init_process_group("nccl" if use_cuda else "gloo", **kw)
        created = True
    return _Dist(rank, local, world, created)


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    import torch

    # the legacy (default) form: the global generator is MT19937
    st = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": st[0], "keys": torch.from_numpy(np.asarray(st[1], dtype=np.int64)),
                  "pos": int(st[2]), "has_gauss": int(st[3]), "cached_gaussian": float(st[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


def _plain(obj: Any) -> Any:
    """numpy scalars → Python numbers, recursively (torch.load(weights_only=True) safe)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _amp_settings(mode: str, device: Any) -> tuple[bool, Any, bool]:
    """(autocast enabled, dtype, use GradScaler) — CUDA only."""
    import torch

    if device.type != "cuda" or mode == "off":
        return False, torch.float32, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16":
        return True, torch.bfloat16, False
    return True, torch.float16, True


def _default_run_dir(name: str) -> Path:
    from engine.workspace import Workspace

    runs = Workspace().subdir("runs")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = runs / f"{name}-{stamp}"
    i = 1
    while path.exists():
        i += 1
        path = runs / f"{name}-{stamp}-{i}"
    return path


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The ``config.json`` of a run folder (for ``--resume``)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ConfigError("not a training run folder (config.json is missing)", path=run_dir,
                          hint="pass the folder a previous `python -m engine train` wrote")
    return TrainConfig.load(path)


def load_resume_state(run_dir: str | Path) -> dict[str, Any]:
    """``resume.pt`` loaded with ``torch.load(weights_only=True)`` (never unpickles code)."""
    import torch

    path = Path(run_dir) / RESUME_FILE
    if not path.exists():
        raise CheckpointError("resume.pt is missing: the run has not finished an epoch yet", path=run_dir,
                              hint="start the run again without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/IO problem means a broken file
        raise CheckpointError(f"cannot read resume.pt ({exc})", path=path,
                              hint="the file is corrupt; resume from scratch") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise CheckpointError("not a segwb resume file", path=path, hint="resume from scratch")
    return state


def export_name_problem(name: str, replace: bool = False, workspace: Any = None) -> str | None:
    """Why exporting a model as ``name`` would hide or replace another model (a sentence), or None.

    A shipped model's name (``weights/<name>``) is always refused (the export would be hidden behind
    it); a workspace model's name only without ``replace``.
    """
    from engine.checkpoint import CARD_FILE, REPO_WEIGHTS
    from engine.workspace import Workspace

    if (REPO_WEIGHTS / name / CARD_FILE).is_file():
        return f"a shipped model is already named '{name}': the exported model would be hidden behind it"
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace) if workspace else Workspace()
    if not replace and (ws.root / "models" / name / CARD_FILE).is_file():
        return f"a model named '{name}' already exists in the workspace ({ws.root / 'models' / name})"
    return None


def check_export_name(name: str, replace: bool = False, workspace: Any = None) -> None:
    """Raise :class:`ConfigError` when :func:`export_name_problem` finds one (before a run starts)."""
    why = export_name_problem(name, replace, workspace)
    if why:
        raise ConfigError(why, hint="choose another model name" + (
            "" if why.startswith("a shipped") else ", or replace it (CLI --replace; Train page: the "
                                                   "'replace' checkbox)"))


def _export(src: Path, name: str, replace: bool = False) -> Path:
    """Copy a best/ folder to ``<workspace>/models/<name>``; an existing model of that name is replaced
    only with ``replace``, else the export takes the next free ``<name>-N``."""
    from engine.workspace import Workspace

    models = Workspace().subdir("models")
    if not replace:
        base, i = name, 1
        while export_name_problem(name):
            i += 1
            name = f"{base}-{i}"
    dest = models / name
    tmp = models / f".{name}.tmp-{os.getpid()}"
    old = models / f".{name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _better(score: float, loss: float, best_score: float, best_loss: float) -> bool:
    """Higher score wins; NaN scores count as -inf; ties go to the lower validation loss."""
    s = score if score == score else -math.inf
    b = best_score if best_score == best_score else -math.inf
    if s != b:
        return s > b
    lv = loss if loss == loss else math.inf
    return lv < best_loss


def _build_task(config: TrainConfig, main: bool, progress: ProgressFn | None):
    if config.task == "classify":
        from engine.classify import ClassifyTask

        return ClassifyTask(config, main=main, progress=progress)
    from engine.training.segment import SegTask

    return SegTask(config, main=main, progress=progress)


def _make_scheduler(config: TrainConfig, optimizer: Any, steps_per_epoch: int):
    import torch

    p = config.scheduler_settings()
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=p["factor"],
                                                          patience=int(p["patience"]), min_lr=p["min_lr"],
                                                          threshold=p["threshold"])
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=p["eta_min"])
    if config.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                   total_steps=max(1, config.epochs * steps_per_epoch),
                                                   pct_start=p["pct_start"], div_factor=p["div_factor"],
                                                   final_div_factor=p["final_div_factor"])
    return None


# ------------------------------------------------------------------------------------- train

def train(config: TrainConfig, progress: ProgressFn | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, *,
          resume: str | Path | None = None, command: str | None = None) -> TrainResult:
    """Train a segmentation model (or, with ``task="classify"``, a presence classifier).

    Args:
        config: the run's :class:`TrainConfig`.
        progress: ``(done, total, message)``: first reading/preprocessing, then optimizer steps
            over the whole run.
        on_epoch: called with each epoch's record (the row of ``history.json``).
        resume: a run folder to continue (its ``resume.pt``); ``config`` should be
            :func:`load_run_config` of it, possibly with more ``epochs``.
        command: the command line that started the run, recorded in the model card.

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError, LayoutError, ReadError: bad data or settings (before training starts).

    Example:
        >>> res = train(TrainConfig(data="demo_data/lung", epochs=2, name="demo"))   # doctest: +SKIP
        >>> (res.run_dir / "best" / "card.json").exists()                             # doctest: +SKIP
        True
    """
    if config.export and resume is None:
        check_export_name(config.name, config.replace_model)
    dist_info = _init_distributed(config.device)
    try:
        return _train(config, progress, on_epoch, resume, command, dist_info)
    finally:
        if dist_info.created:
            import datetime

            import torch.distributed as dist

            with contextlib.suppress(Exception):
                # every rank reaches teardown before the group goes away: a rank that tears down while
                # another still talks to it can abort at exit (gloo); bounded, so a dead rank cannot hang us
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=120))
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def _broadcast(obj: Any, dist_info: _Dist) -> Any:
    if not dist_info.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _train(config: TrainConfig, progress: ProgressFn | None, on_epoch: Any, resume: str | Path | None,
           command: str | None, dist_info: _Dist) -> TrainResult:
    """The run, step by step: build → (epoch → validate → checkpoint → stop?)… → SWA → finish."""
    run = _Run(config, progress, on_epoch, command, dist_info)
    run.open(resume)
    try:
        run.build()
        for epoch in range(run.start_epoch, run.config.epochs):
            t0 = time.perf_counter()
            train_loss = run.epoch(epoch)
            if train_loss is None:  # cancelled mid-epoch
                break
            record, improved = run.validate(epoch, train_loss, t0)
            run.checkpoint(epoch, record, improved)
            if run.stop():
                break
        run.average_weights()
        return run.finish()
    except KeyboardInterrupt:
        run.log.update(force=True, state="cancelled", message="interrupted")
        raise
    except BaseException as exc:
        run.log.update(force=True, state="failed", message=str(exc)[:2000])
        raise


class _Run:
    """One training run's state, advanced by the named steps :func:`_train` calls.

    ``open`` (run folder, resume state, status log) → ``build`` (task and data, loader, model,
    optimizer, scheduler, SWA, resumed state) → per epoch ``epoch`` (optimizer steps, cancellation)
    → ``validate`` (rank 0, decisions broadcast) → ``checkpoint`` (best/, last/, resume.pt, history)
    → ``stop`` (early stopping) → ``average_weights`` (SWA) → ``finish`` (card, export, status).
    """

    def __init__(self, config: TrainConfig, progress: ProgressFn | None, on_epoch: Any, command: str | None,
                 dist_info: _Dist):
        import torch

        from engine.preprocess import select_device

        self.config = config
        self.on_epoch = on_epoch
        self.command = command
        self.dist = dist_info
        self.main = dist_info.main
        self.report = as_progress(progress if self.main else None)
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if dist_info.active and torch.cuda.is_available() and not config.device.startswith("cpu"):
            self.device = torch.device("cuda", dist_info.local_rank)
        else:
            self.device = select_device(config.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cudnn.deterministic = bool(config.deterministic)
        self.amp_on, self.amp_dtype, self.use_scaler = _amp_settings(config.amp, self.device)
        self.channels_last = self.device.type == "cuda" and (config.channels_last is None or bool(config.channels_last))
        _seed_all(config.seed)
        self.state: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        (self.best_score, self.best_loss, self.best_epoch, self.bad_epochs,
         self.start_epoch) = -math.inf, math.inf, 0, 0, 0
        self.state_name = "finished"
        self.last_epoch = 0
        self.swa_record: dict[str, Any] | None = None

    # -- open: run folder, resume state, status log ----------------------------------------------
    def open(self, resume: str | Path | None) -> None:
        config, main = self.config, self.main
        if resume is not None:
            run_dir = Path(resume).expanduser().resolve()
            self.state = state = load_resume_state(run_dir)
            # checked before status.json is touched: a refused resume must not mark the run failed
            if int(state["epoch"]) >= config.epochs:
                raise ConfigError(f"the run already trained {state['epoch']} epoch(s) of {config.epochs}",
                                  path=run_dir, hint=f"pass --epochs larger than {state['epoch']} to continue")
            saved_model = dict(state.get("config", {}).get("model") or {})
            given_model = config.model.to_dict()
            if config.auto_classes:
                saved_model.pop("num_classes", None)
                given_model.pop("num_classes", None)
            if saved_model and saved_model != given_model:
                raise ConfigError("the run's model differs from the config given with --resume", path=run_dir,
                                  hint="resume with the run's own config.json (only epochs may change)")
        else:
            out_dir = Path(config.out).expanduser().resolve() if config.out else None
            if main and out_dir is None:
                out_dir = _default_run_dir(config.name)
            run_dir = Path(_broadcast(str(out_dir) if out_dir else None, self.dist))
            if main and run_dir.exists() and ((run_dir / "status.json").exists() or (run_dir / RESUME_FILE).exists()):
                raise ConfigError("the output folder already holds a training run", path=run_dir,
                                  hint="continue it with --resume, or choose another --out")
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.log = RunLog(run_dir, config.epochs, 0, interval=config.status_interval, enabled=main,
                          base={"name": config.name, "task": config.task, "world_size": self.dist.world,
                                "device": str(self.device)})
        if main:
            self.log.clear_cancel()  # a stale CANCEL file from an earlier cancelled run must not stop this one
        self.log.update(force=True, state="starting", message="reading and preprocessing the data")

    # -- build: task and data, loader, model, optimizer, scheduler, SWA, resumed state -----------
    def build(self) -> None:
        self.task = task = _build_task(self.config, self.main, self.report)
        self.config = config = task.config  # classes resolved from the dataset
        state = self.state
        if state is not None and state.get("config", {}).get("model") not in (None, config.to_dict()["model"]):
            raise ConfigError("the run's model differs from the config given with --resume", path=self.run_dir,
                              hint="resume with the run's own config.json (only epochs may change)")
        if self.main:
            config.save(self.run_dir / "config.json")
        self._build_loader()
        self._build_model()
        self._build_optimizer()
        if state is not None:
            self._restore(state)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.steps_done = self.start_epoch * self.steps_per_epoch
        self.data_info = {
            "data": str(Path(config.data).expanduser().resolve()), "layout": task.dataset.layout,
            "dataset_options": task.dataset.options,
            "n_labelled_cases": len(task.train_cases) + len(task.val_cases),
            "labels": {str(k): v for k, v in getattr(task, "labels", {}).items()},
            "manifest": str(getattr(task.dataset, "manifest_path", "")) or None,
        }
        if getattr(task, "skipped", None):
            self.data_info["skipped"] = [{"case_id": c, "reason": r} for c, r in task.skipped[:50]]
        self.log.update(force=True, state="running", epoch=self.start_epoch, message="training",
                        best_metric=None if self.best_epoch == 0 else self.best_score,
                        best_epoch=self.best_epoch or None)

    def _build_loader(self) -> None:
        from engine.training.data import default_num_workers, make_train_loader

        config, dist_info = self.config, self.dist
        workers = config.num_workers
        if workers is None:
            workers = default_num_workers(self.device.type, int(os.environ.get("LOCAL_WORLD_SIZE", dist_info.world)))
        self.loader = make_train_loader(self.task.train_set, config.batch_size, seed=config.seed, num_workers=workers,
                                        rank=dist_info.rank, world=dist_info.world,
                                        pin_memory=self.device.type == "cuda")
        n = len(self.loader)
        self.steps_per_epoch = n if config.max_train_batches is None else min(n, config.max_train_batches)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.task.train_set)} training case(s) make no batch of {config.batch_size}",
                              hint="lower --batch-size")
        self.log.update(force=True, steps_per_epoch=self.steps_per_epoch, metric=self.task.metric_name)

    def _build_model(self) -> None:
        import torch

        _seed_all(self.config.seed)
        model = self.task.build_model()
        if self.config.init_weights and self.state is None:
            _init_from(model, self.config)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        module = model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            unused = bool(getattr(self.task, "find_unused_parameters", False))
            if self.device.type == "cuda":
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
                model = DDP(module, device_ids=[self.device.index], find_unused_parameters=unused)
            else:
                model = DDP(module, find_unused_parameters=unused)
        self.model, self.module = model, module

    def _build_optimizer(self) -> None:
        import torch

        config = self.config
        opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = _make_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.swa_model = self.swa_sched = None
        self.swa_epoch0 = (min(config.epochs - 1, int(math.floor(config.swa_start * config.epochs)))
                           if config.swa else None)
        if config.swa:  # on every rank: SyncBatchNorm needs all ranks in update_bn
            from torch.optim.swa_utils import SWALR, AveragedModel

            self.swa_model = AveragedModel(self.module)
            self.swa_sched = SWALR(self.optimizer, swa_lr=config.swa_lr or config.lr / 10, anneal_epochs=1)

    def _restore(self, state: dict[str, Any]) -> None:
        config, scheduler = self.config, self.scheduler
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            if config.scheduler == "onecycle" and state.get("epochs") != config.epochs:
                scheduler.last_epoch = int(state["steps_done"])  # re-planned over the new total
            else:
                scheduler.load_state_dict(state["scheduler"])
                if config.scheduler == "cosine":
                    scheduler.T_max = config.epochs
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.swa_model is not None and state.get("swa_model") is not None:
            self.swa_model.load_state_dict(state["swa_model"])
        if self.swa_sched is not None and state.get("swa_sched") is not None:
            self.swa_sched.load_state_dict(state["swa_sched"])
        self.history = list(state["history"])
        self.best_score, self.best_loss = float(state["best_score"]), float(state["best_loss"])
        self.best_epoch, self.bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
        self.start_epoch = int(state["epoch"])
        _set_rng_state(state["rng"])

    def training_info(self, epochs_run: int, swa_used: bool = False) -> dict[str, Any]:
        """The card's ``training`` entry: data, split, config, epochs, device, versions."""
        import torch

        config = self.config
        return _plain({
            **self.data_info, "split": self.task.split, "config": config.to_dict(), "epochs_planned": config.epochs,
            "epochs_run": epochs_run, "best_epoch": self.best_epoch, "seed": config.seed,
            **({"init_weights": config.init_weights, "lineage": dict(config.lineage or {})}
               if config.init_weights or config.lineage else {}),
            "command": f"python -m engine train --config {self.run_dir / 'config.json'}",
            "argv": self.command, "world_size": self.dist.world, "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_on else "off", "swa": swa_used,
            "steps_per_epoch": self.steps_per_epoch, "started": self.started, "run_dir": str(self.run_dir),
            "torch": torch.__version__,
        })

    def autocast(self):
        import torch

        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_on)

    # -- epoch: optimizer steps, cancellation ---------------------------------------------------
    def epoch(self, epoch: int) -> float | None:
        """Train one epoch; the mean training loss over all processes, or None when cancelled."""
        import torch
        import torch.distributed as dist

        config, device, task, optimizer = self.config, self.device, self.task, self.optimizer
        self.last_epoch = epoch
        self.model.train()
        self.loader.sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        n_steps = 0
        for step, batch in enumerate(self.loader):
            if step >= self.steps_per_epoch:
                break
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(self.model, batch, device, self.autocast, self.channels_last)
            self.scaler.scale(loss).backward()
            if config.grad_clip > 0:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), config.grad_clip)
            self.scaler.step(optimizer)
            self.scaler.update()
            if (config.scheduler == "onecycle" and self.scheduler is not None
                    and (self.swa_epoch0 is None or epoch < self.swa_epoch0)):
                self.scheduler.step()
            loss_sum += loss.detach().double()
            n_steps += 1
            self.steps_done += 1
            self.report(self.steps_done, self.total_steps, f"epoch {epoch + 1}/{config.epochs}")
            flag = (self.run_dir / "CANCEL").exists()
            if self.dist.active:
                t = torch.tensor([1.0 if flag else 0.0], device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flag = bool(t.item() > 0)
            if self.main and (self.log.due() or flag):  # float(loss_sum) syncs the GPU: only when writing
                self.log.update(force=True, state="running", epoch=epoch + 1, step=step + 1,
                                train_loss=float(loss_sum) / max(1, n_steps),
                                message=f"epoch {epoch + 1}/{config.epochs}")
            if flag:
                self.state_name = "cancelled"
                if self.main:
                    task.save(self.run_dir / "last", self.module, {}, self.training_info(epoch))
                return None
        if self.dist.active:
            packed = torch.stack([loss_sum, torch.tensor(float(n_steps), device=device, dtype=torch.float64)])
            dist.all_reduce(packed)
            loss_sum, n_total = packed[0], float(packed[1])
        else:
            n_total = float(n_steps)
        train_loss = float(loss_sum) / max(1.0, n_total)
        if not math.isfinite(train_loss):
            raise WorkbenchError(f"the training loss became {train_loss} in epoch {epoch + 1}",
                                 hint="lower --lr, keep --grad-clip on, or use --amp off")
        if self.swa_model is not None and self._in_swa(epoch):
            self.swa_model.update_parameters(self.module)
        return train_loss

    def _in_swa(self, epoch: int) -> bool:
        return self.swa_epoch0 is not None and epoch >= self.swa_epoch0

    # -- validate: rank 0 scores, every rank gets the decision, schedulers step ----------------
    def validate(self, epoch: int, train_loss: float, t0: float) -> tuple[dict[str, Any], bool]:
        """Validate (rank 0), decide whether the epoch improved (broadcast), step the schedulers."""
        import torch.distributed as dist

        config, task = self.config, self.task
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss}
        decision: dict[str, Any] | None = None
        if self.main:
            self.log.update(force=True, message=f"validating epoch {epoch + 1}")
            val = task.validate(self.module, self.device, amp=self.amp_on, channels_last=self.channels_last,
                                max_batches=config.max_val_batches)
            record.update(val)
            record["lr"] = float(self.optimizer.param_groups[0]["lr"])
            score = float(record.get(task.metric_name, float("nan")))
            improved = _better(score, float(record.get("val_loss", float("nan"))), self.best_score, self.best_loss)
            decision = {"score": score, "improved": improved}
        if self.dist.active:
            dist.barrier()
        decision = _broadcast(decision, self.dist)
        score, improved = float(decision["score"]), bool(decision["improved"])
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch + 1, 0
            self.best_loss = float(record.get("val_loss", math.inf)) if self.main else self.best_loss
        else:
            self.bad_epochs += 1
        if self._in_swa(epoch) and self.swa_sched is not None:
            self.swa_sched.step()
        elif self.scheduler is not None and config.scheduler == "plateau":
            self.scheduler.step(score if score == score else -math.inf)
        elif self.scheduler is not None and config.scheduler == "cosine":
            self.scheduler.step()
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["best"] = bool(improved)
        self.score = score
        return record, improved

    # -- checkpoint: best/, last/, preview, resume.pt, history, status --------------------------
    def checkpoint(self, epoch: int, record: dict[str, Any], improved: bool) -> None:
        import torch

        if not self.main:
            return
        task, run_dir = self.task, self.run_dir
        self.history.append(_plain(record))
        info = self.training_info(epoch + 1)
        if improved:
            task.save(run_dir / "best", self.module, task.card_metrics(record), info)
        task.save(run_dir / "last", self.module, task.card_metrics(record), info)
        if hasattr(task, "write_preview") and self.config.preview_count > 0:
            task.write_preview(run_dir / "preview", epoch + 1, record)
        torch.save({
            "format": RESUME_FORMAT, "version": RESUME_VERSION, "epoch": epoch + 1, "epochs": self.config.epochs,
            "steps_done": self.steps_done, "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.use_scaler else None,
            "swa_model": self.swa_model.state_dict() if self.swa_model is not None else None,
            "swa_sched": self.swa_sched.state_dict() if self.swa_sched is not None else None,
            "history": self.history, "best_score": self.best_score, "best_loss": self.best_loss,
            "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "rng": _rng_state(),
            "config": _plain(self.config.to_dict()),
        }, _tmp_then_replace(run_dir / RESUME_FILE))
        _commit(run_dir / RESUME_FILE)
        self.log.write_history(self.history)
        self.log.update(force=True, epoch=epoch + 1, step=self.steps_per_epoch, train_loss=record["train_loss"],
                        best_metric=self.best_score if self.best_epoch else None, best_epoch=self.best_epoch or None,
                        message=f"epoch {epoch + 1}/{self.config.epochs} done: {task.metric_name} {self.score:.4f}")
        if self.on_epoch is not None:
            self.on_epoch(dict(record))

    # -- stop: early stopping ------------------------------------------------------------------
    def stop(self) -> bool:
        cfg = self.config
        stop = cfg.early_stopping_patience > 0 and self.bad_epochs >= cfg.early_stopping_patience
        if stop and self.main:
            self.log.update(force=True, message=f"early stop: no better {self.task.metric_name} for "
                                                f"{self.bad_epochs} epoch(s)")
        return stop

    @property
    def epochs_run(self) -> int:
        return len(self.history) if self.main else self.last_epoch + 1

    # -- SWA: BatchNorm statistics, validation, keep if better -----------------------------------
    def average_weights(self) -> None:
        swa_model, task = self.swa_model, self.task
        usable = swa_model is not None and int(swa_model.n_averaged) > 0 and self.state_name == "finished"
        if usable:
            assert swa_model is not None  # part of usable
            from torch.optim.swa_utils import update_bn

            self.log.update(force=True, message="SWA: recomputing BatchNorm statistics")
            with self.autocast():
                update_bn(task.bn_inputs(self.loader, self.device), swa_model, device=self.device)
        if self.main and usable:
            assert swa_model is not None  # part of usable
            rec = task.validate(swa_model.module, self.device, amp=self.amp_on, channels_last=self.channels_last,
                                max_batches=self.config.max_val_batches)
            rec["n_averaged"] = int(swa_model.n_averaged)
            swa_score = float(rec.get(task.metric_name, float("nan")))
            rec["kept"] = _better(swa_score, float(rec.get("val_loss", float("nan"))), self.best_score, self.best_loss)
            if rec["kept"]:
                self.best_score = swa_score
                rec["epoch"] = self.epochs_run
                task.save(self.run_dir / "best", swa_model.module, task.card_metrics(rec),
                          self.training_info(self.epochs_run, swa_used=True))
            atomic_write_json(self.run_dir / "swa.json", _plain(rec))
            self.swa_record = rec
        if self.dist.active:
            import torch.distributed as dist

            dist.barrier()

    # -- finish: final card, export, status ------------------------------------------------------
    def finish(self) -> TrainResult:
        task, run_dir, log = self.task, self.run_dir, self.log
        exported = None
        epochs_run = self.epochs_run
        if self.main:
            if (run_dir / "best").exists():
                _finalize_card(task, run_dir / "best", epochs_run, self.state_name)
            if self.config.export and (run_dir / "best").exists():
                log.update(force=True, message="exporting the best model")
                exported = _export(run_dir / "best", self.config.name, self.config.replace_model)
            msg = (f"cancelled after {epochs_run} epoch(s)" if self.state_name == "cancelled"
                   else f"finished: best {task.metric_name} {self.best_score:.4f} at epoch {self.best_epoch}")
            log.update(force=True, state=self.state_name, message=msg, exported=str(exported) if exported else None,
                       best_metric=self.best_score if self.best_epoch else None, best_epoch=self.best_epoch or None)
            if self.state_name == "cancelled":
                log.clear_cancel()
        return TrainResult(run_dir, float(self.best_score), int(self.best_epoch), self.history, exported,
                           self.state_name, task.metric_name, self.swa_record)


def _init_from(model: Any, config: TrainConfig) -> None:
    """Load ``config.init_weights`` (a segmenter's folder or name) into ``model`` (fine-tuning).

    Raises:
        ConfigError: the weights are another architecture (spec, channels or classes differ).
    """
    from engine.checkpoint import load_checkpoint

    if config.task != "segment":
        raise ConfigError("init_weights is supported for segmentation training only",
                          hint="leave init_weights empty for the presence classifier")
    assert config.init_weights is not None  # the caller only calls this when init_weights is set
    parent, card = load_checkpoint(config.init_weights, device="cpu")
    if card.spec.to_dict() != config.model.to_dict():
        raise ConfigError(f"init_weights {config.init_weights} is a {card.spec.arch} model that differs from the "
                          f"config's model ({config.model.arch})",
                          hint="fine-tune with the parent's own model spec (see engine.retrain.finetune_config)")
    model.load_state_dict(parent.state_dict(), strict=True)


def _tmp_then_replace(path: Path) -> Path:
    """A temp path beside ``path``; :func:`_commit` moves it into place (atomic resume.pt)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _commit(path: Path) -> None:
    tmp = _tmp_then_replace(path)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _finalize_card(task: Any, folder: Path, epochs_run: int, state: str) -> None:
    """Record the final number of epochs run and the end state in the best checkpoint's card."""
    card_path = folder / getattr(task, "card_file", "card.json")
    if not card_path.exists():
        return
    data = read_json(card_path)
    training = dict(data.get("training") or {})
    training.update(epochs_run=epochs_run, end_state=state,
                    finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    data["training"] = training
    atomic_write_json(card_path, data)
