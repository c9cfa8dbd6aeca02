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
from typing import Any, Callable

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

    st = np.random.get_state()
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


def _export(src: Path, name: str) -> Path:
    """Copy a best/ folder to ``<workspace>/models/<name>`` (replacing an older export)."""
    from engine.workspace import Workspace

    models = Workspace().subdir("models")
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
    dist_info = _init_distributed(config.device)
    try:
        return _train(config, progress, on_epoch, resume, command, dist_info)
    finally:
        if dist_info.created:
            import torch.distributed as dist

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
    import torch
    import torch.distributed as dist

    from engine.inference import select_device

    main = dist_info.main
    report = as_progress(progress if main else None)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    # -- device, seeds -------------------------------------------------------------------------
    if dist_info.active and torch.cuda.is_available() and not config.device.startswith("cpu"):
        device = torch.device("cuda", dist_info.local_rank)
    else:
        device = select_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
        torch.backends.cudnn.deterministic = bool(config.deterministic)
    amp_on, amp_dtype, use_scaler = _amp_settings(config.amp, device)
    channels_last = device.type == "cuda" and (config.channels_last is None or bool(config.channels_last))
    _seed_all(config.seed)

    # -- run folder ----------------------------------------------------------------------------
    state = None
    if resume is not None:
        run_dir = Path(resume).expanduser().resolve()
        state = load_resume_state(run_dir)
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
        run_dir = Path(config.out).expanduser().resolve() if config.out else None
        if main and run_dir is None:
            run_dir = _default_run_dir(config.name)
        run_dir = Path(_broadcast(str(run_dir) if run_dir else None, dist_info))
        if main and run_dir.exists() and ((run_dir / "status.json").exists() or (run_dir / RESUME_FILE).exists()):
            raise ConfigError("the output folder already holds a training run", path=run_dir,
                              hint="continue it with --resume, or choose another --out")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    log = RunLog(run_dir, config.epochs, 0, interval=config.status_interval, enabled=main,
                 base={"name": config.name, "task": config.task, "world_size": dist_info.world,
                       "device": str(device)})
    if main:
        log.clear_cancel()  # a stale CANCEL file from an earlier cancelled run must not stop this one
    log.update(force=True, state="starting", message="reading and preprocessing the data")
    try:
        # -- data + task ---------------------------------------------------------------------------
        task = _build_task(config, main, report)
        config = task.config  # classes resolved from the dataset
        if state is not None and state.get("config", {}).get("model") not in (None, config.to_dict()["model"]):
            raise ConfigError("the run's model differs from the config given with --resume", path=run_dir,
                              hint="resume with the run's own config.json (only epochs may change)")
        if main:
            config.save(run_dir / "config.json")
        workers = config.num_workers
        if workers is None:
            from engine.training.data import default_num_workers

            workers = default_num_workers(device.type, int(os.environ.get("LOCAL_WORLD_SIZE", dist_info.world)))
        from engine.training.data import make_train_loader

        loader = make_train_loader(task.train_set, config.batch_size, seed=config.seed, num_workers=workers,
                                   rank=dist_info.rank, world=dist_info.world, pin_memory=device.type == "cuda")
        steps_per_epoch = len(loader) if config.max_train_batches is None else min(len(loader), config.max_train_batches)
        if steps_per_epoch < 1:
            raise ConfigError(f"{len(task.train_set)} training case(s) make no batch of {config.batch_size}",
                              hint="lower --batch-size")
        log.update(force=True, steps_per_epoch=steps_per_epoch, metric=task.metric_name)

        # -- model, optimizer, scheduler ------------------------------------------------------------
        _seed_all(config.seed)
        model = task.build_model().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        module = model
        if dist_info.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            unused = bool(getattr(task, "find_unused_parameters", False))
            if device.type == "cuda":
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
                model = DDP(module, device_ids=[device.index], find_unused_parameters=unused)
            else:
                model = DDP(module, find_unused_parameters=unused)
        opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = _make_scheduler(config, optimizer, steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        swa_model = swa_sched = None
        swa_epoch0 = min(config.epochs - 1, int(math.floor(config.swa_start * config.epochs))) if config.swa else None
        if config.swa:  # on every rank: SyncBatchNorm needs all ranks in update_bn
            from torch.optim.swa_utils import AveragedModel

            swa_model = AveragedModel(module)
        if config.swa:
            from torch.optim.swa_utils import SWALR

            swa_sched = SWALR(optimizer, swa_lr=config.swa_lr or config.lr / 10, anneal_epochs=1)

        history: list[dict[str, Any]] = []
        best_score, best_loss, best_epoch, bad_epochs, start_epoch = -math.inf, math.inf, 0, 0, 0
        if state is not None:
            module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler") is not None:
                if config.scheduler == "onecycle" and state.get("epochs") != config.epochs:
                    scheduler.last_epoch = int(state["steps_done"])  # re-planned over the new total
                else:
                    scheduler.load_state_dict(state["scheduler"])
                    if config.scheduler == "cosine":
                        scheduler.T_max = config.epochs
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            if swa_model is not None and state.get("swa_model") is not None:
                swa_model.load_state_dict(state["swa_model"])
            if swa_sched is not None and state.get("swa_sched") is not None:
                swa_sched.load_state_dict(state["swa_sched"])
            history = list(state["history"])
            best_score, best_loss = float(state["best_score"]), float(state["best_loss"])
            best_epoch, bad_epochs, start_epoch = int(state["best_epoch"]), int(state["bad_epochs"]), int(state["epoch"])
            _set_rng_state(state["rng"])

        total_steps = config.epochs * steps_per_epoch
        steps_done = start_epoch * steps_per_epoch
        data_info = {
            "data": str(Path(config.data).expanduser().resolve()), "layout": task.dataset.layout,
            "dataset_options": task.dataset.options, "n_labelled_cases": len(task.train_cases) + len(task.val_cases),
            "labels": {str(k): v for k, v in getattr(task, "labels", {}).items()},
            "manifest": str(getattr(task.dataset, "manifest_path", "")) or None,
        }
        if getattr(task, "skipped", None):
            data_info["skipped"] = [{"case_id": c, "reason": r} for c, r in task.skipped[:50]]

        def training_info(epochs_run: int, swa_used: bool = False) -> dict[str, Any]:
            return _plain({
                **data_info, "split": task.split, "config": config.to_dict(), "epochs_planned": config.epochs,
                "epochs_run": epochs_run, "best_epoch": best_epoch, "seed": config.seed,
                "command": f"python -m engine train --config {run_dir / 'config.json'}",
                "argv": command, "world_size": dist_info.world, "device": str(device),
                "amp": str(amp_dtype).replace("torch.", "") if amp_on else "off", "swa": swa_used,
                "steps_per_epoch": steps_per_epoch, "started": started, "run_dir": str(run_dir),
                "torch": torch.__version__,
            })

        def autocast():
            return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_on)

        state_name = "finished"
        epoch = start_epoch
        log.update(force=True, state="running", epoch=start_epoch, message="training",
                   best_metric=None if best_epoch == 0 else best_score, best_epoch=best_epoch or None)
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            model.train()
            loader.sampler.set_epoch(epoch)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            n_steps = 0
            cancelled = False
            for step, batch in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss = task.loss(model, batch, device, autocast, channels_last)
                scaler.scale(loss).backward()
                if config.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if config.scheduler == "onecycle" and scheduler is not None and (swa_epoch0 is None or epoch < swa_epoch0):
                    scheduler.step()
                loss_sum += loss.detach().double()
                n_steps += 1
                steps_done += 1
                report(steps_done, total_steps, f"epoch {epoch + 1}/{config.epochs}")
                flag = (run_dir / "CANCEL").exists()
                if dist_info.active:
                    t = torch.tensor([1.0 if flag else 0.0], device=device)
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    flag = bool(t.item() > 0)
                if main and (log.due() or flag):  # float(loss_sum) syncs the GPU: only when writing
                    log.update(force=True, state="running", epoch=epoch + 1, step=step + 1,
                               train_loss=float(loss_sum) / max(1, n_steps),
                               message=f"epoch {epoch + 1}/{config.epochs}")
                if flag:
                    cancelled = True
                    break
            if cancelled:
                state_name = "cancelled"
                if main:
                    task.save(run_dir / "last", module, {}, training_info(epoch))
                break
            if dist_info.active:
                packed = torch.stack([loss_sum, torch.tensor(float(n_steps), device=device, dtype=torch.float64)])
                dist.all_reduce(packed)
                loss_sum, n_total = packed[0], float(packed[1])
            else:
                n_total = float(n_steps)
            train_loss = float(loss_sum) / max(1.0, n_total)
            if not math.isfinite(train_loss):
                raise WorkbenchError(f"the training loss became {train_loss} in epoch {epoch + 1}",
                                     hint="lower --lr, keep --grad-clip on, or use --amp off")
            in_swa = swa_epoch0 is not None and epoch >= swa_epoch0
            if swa_model is not None and in_swa:
                swa_model.update_parameters(module)

            # -- validation (rank 0) + decisions ---------------------------------------------------
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss}
            decision: dict[str, Any] | None = None
            if main:
                log.update(force=True, message=f"validating epoch {epoch + 1}")
                val = task.validate(module, device, amp=amp_on, channels_last=channels_last,
                                    max_batches=config.max_val_batches)
                record.update(val)
                record["lr"] = float(optimizer.param_groups[0]["lr"])
                score = float(record.get(task.metric_name, float("nan")))
                improved = _better(score, float(record.get("val_loss", float("nan"))), best_score, best_loss)
                decision = {"score": score, "improved": improved}
            if dist_info.active:
                dist.barrier()
            decision = _broadcast(decision, dist_info)
            score, improved = float(decision["score"]), bool(decision["improved"])
            if improved:
                best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                best_loss = float(record.get("val_loss", math.inf)) if main else best_loss
            else:
                bad_epochs += 1
            if in_swa and swa_sched is not None:
                swa_sched.step()
            elif scheduler is not None and config.scheduler == "plateau":
                scheduler.step(score if score == score else -math.inf)
            elif scheduler is not None and config.scheduler == "cosine":
                scheduler.step()
            record["seconds"] = round(time.perf_counter() - t0, 3)
            record["best"] = bool(improved)
            stop = config.early_stopping_patience > 0 and bad_epochs >= config.early_stopping_patience
            if main:
                history.append(_plain(record))
                if improved:
                    task.save(run_dir / "best", module, task.card_metrics(record), training_info(epoch + 1))
                task.save(run_dir / "last", module, task.card_metrics(record), training_info(epoch + 1))
                if hasattr(task, "write_preview") and config.preview_count > 0:
                    task.write_preview(run_dir / "preview", epoch + 1, record)
                torch.save({
                    "format": RESUME_FORMAT, "version": RESUME_VERSION, "epoch": epoch + 1, "epochs": config.epochs,
                    "steps_done": steps_done, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if use_scaler else None,
                    "swa_model": swa_model.state_dict() if swa_model is not None else None,
                    "swa_sched": swa_sched.state_dict() if swa_sched is not None else None,
                    "history": history, "best_score": best_score, "best_loss": best_loss,
                    "best_epoch": best_epoch, "bad_epochs": bad_epochs, "rng": _rng_state(),
                    "config": _plain(config.to_dict()),
                }, _tmp_then_replace(run_dir / RESUME_FILE))
                _commit(run_dir / RESUME_FILE)
                log.write_history(history)
                log.update(force=True, epoch=epoch + 1, step=steps_per_epoch, train_loss=train_loss,
                           best_metric=best_score if best_epoch else None, best_epoch=best_epoch or None,
                           message=f"epoch {epoch + 1}/{config.epochs} done: {task.metric_name} {score:.4f}")
                if on_epoch is not None:
                    on_epoch(dict(record))
            if stop:
                if main:
                    log.update(force=True, message=f"early stop: no better {task.metric_name} for "
                                                   f"{bad_epochs} epoch(s)")
                break
        epochs_run = len(history) if main else epoch + 1

        # -- SWA -------------------------------------------------------------------------------------
        swa_record = None
        if swa_model is not None and int(swa_model.n_averaged) > 0 and state_name == "finished":
            from torch.optim.swa_utils import update_bn

            log.update(force=True, message="SWA: recomputing BatchNorm statistics")
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_on):
                update_bn(task.bn_inputs(loader, device), swa_model, device=device)
        if main and swa_model is not None and int(swa_model.n_averaged) > 0 and state_name == "finished":
            swa_record = task.validate(swa_model.module, device, amp=amp_on, channels_last=channels_last,
                                       max_batches=config.max_val_batches)
            swa_record["n_averaged"] = int(swa_model.n_averaged)
            swa_score = float(swa_record.get(task.metric_name, float("nan")))
            swa_record["kept"] = _better(swa_score, float(swa_record.get("val_loss", float("nan"))),
                                         best_score, best_loss)
            if swa_record["kept"]:
                best_score = swa_score
                swa_record["epoch"] = epochs_run
                task.save(run_dir / "best", swa_model.module, task.card_metrics(swa_record),
                          training_info(epochs_run, swa_used=True))
            atomic_write_json(run_dir / "swa.json", _plain(swa_record))
        if dist_info.active:
            dist.barrier()

        # -- finish ----------------------------------------------------------------------------------
        exported = None
        if main:
            if (run_dir / "best").exists():
                _finalize_card(task, run_dir / "best", epochs_run, state_name)
            if config.export and (run_dir / "best").exists():
                log.update(force=True, message="exporting the best model")
                exported = _export(run_dir / "best", config.name)
            msg = (f"cancelled after {epochs_run} epoch(s)" if state_name == "cancelled"
                   else f"finished: best {task.metric_name} {best_score:.4f} at epoch {best_epoch}")
            log.update(force=True, state=state_name, message=msg, exported=str(exported) if exported else None,
                       best_metric=best_score if best_epoch else None, best_epoch=best_epoch or None)
            if state_name == "cancelled":
                log.clear_cancel()
        return TrainResult(run_dir, float(best_score), int(best_epoch), history, exported, state_name,
                           task.metric_name, swa_record)
    except KeyboardInterrupt:
        log.update(force=True, state="cancelled", message="interrupted")
        raise
    except BaseException as exc:
        log.update(force=True, state="failed", message=str(exc)[:2000])
        raise


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
