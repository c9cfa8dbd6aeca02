"""Train the click model with simulated clicks (RITM-style iterative training), on a CPU.

Each training sample is one object in one **view** — the whole image (35 %) or a zoom-in box around
the object (side = its bounding box × U(1.0, 2.2), centre jittered, the same minimum side as at
inference) — resized to the working size (256²), flipped and re-toned (gamma, contrast, noise, blur).
Objects come from the training part of Montgomery (lungs) and usgra (nerve, vessel) and from
synthetic shapes (:mod:`engine.assist.synth`), mixed 35 / 45 / 20 %.

Clicks, as in Sofiiuk et al. 2022 (RITM):

1. **First clicks.** 80 % of samples start from an empty mask with one positive click (half of the
   time at the protocol's point, the object's most interior pixel; else a random interior pixel), plus
   with probability 0.3 one or two random extra clicks (positive inside, negative in a ring around
   the object). 20 % start from a *corrupted* ground truth (eroded, dilated, shifted, cut or with an
   extra blob: a prediction or an old mask to correct) with one protocol click on its largest error.
2. **Iterative clicks.** 0–3 times (uniform), the network (in eval mode, no gradient) predicts, its
   mask becomes the previous-mask input and the protocol adds the next click at its largest error
   (:func:`engine.assist.clicks.next_click`): the model learns to correct its own masks.
3. **Loss** on the final prediction: binary cross-entropy + soft Dice. AdamW, cosine schedule with a
   short warm-up. No model selection: the held-out images are never looked at; the last step ships.

Run (CPU; 450 steps of 8 samples took ~50 min on 2 cores shared with other jobs)::

    python -m engine.assist.train --data ../shared/data --out .workspace/runs/click-seg --steps 450

The output folder holds ``model.safetensors`` + ``click.json`` (a weights folder; copy it to
``weights/click-seg`` after checking ``bench/assist.py``), and ``log.jsonl`` (loss per 10 steps).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.assist.clicks import Click, next_click
from engine.assist.data import SOURCES, TrainObject, load_objects, load_split
from engine.assist.model import ClickCard, ClickViewConfig, save_click_model
from engine.assist.prep import View, box_view, disk_maps, resize
from engine.assist.spec import ClickNetSpec
from engine.assist.synth import synthetic_object
from engine.config import JsonConfig
from engine.errors import ConfigError
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    import torch

    from engine.assist.net import ClickNet


@dataclass(frozen=True)
class ClickTrainConfig(JsonConfig):
    """Everything a training run depends on (stored in the card under ``training.config``).

    Attributes:
        data: the folder holding ``montgomery-lung/`` and ``usgra-nerve-vessel/`` (``../shared/data``).
        out: output weights folder.
        name: model name written in the card.
        steps, batch_size, lr, weight_decay, warmup: optimisation (AdamW, cosine to 1 % of ``lr``).
        seed: one seed for data sampling and initialisation.
        mix: sampling weights of montgomery, usgra, synthetic objects.
        p_full_view: share of samples seen as the whole image (else zoomed on the object).
        p_correct: share of samples that start from a corrupted ground truth.
        max_iters: iterative clicks per sample are 0..max_iters.
        threads: torch intra-op threads.
        max_minutes: stop (and save) after this long even if ``steps`` are not done (None = no limit).
        stop_at_step: stop (and save) after this many steps, the schedule still planned for ``steps``
            (reproduces a run that ``max_minutes`` cut short; None = run all ``steps``).
        init: a click-model weights folder to start from (a second training stage; None = random init).
        spec, view: architecture and view / click encoding.
    """

    data: str = "../shared/data"
    out: str = ".workspace/runs/click-seg"
    name: str = "click-seg"
    steps: int = 450
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 30
    seed: int = 0
    mix: tuple[float, float, float] = (0.35, 0.45, 0.2)
    p_full_view: float = 0.35
    p_correct: float = 0.2
    max_iters: int = 3
    threads: int = 2
    max_minutes: float | None = None
    stop_at_step: int | None = None
    init: str | None = None
    spec: ClickNetSpec = ClickNetSpec()
    view: ClickViewConfig = ClickViewConfig()
    command: str = ""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be ≥ 1")
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ConfigError(f"mix {self.mix} must be three non-negative weights (montgomery, usgra, synthetic)")


@dataclass
class _Pools:
    objects: dict[str, list[TrainObject]] = field(default_factory=dict)


def _interior_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random object pixel at least ``U(0.2, 0.8) ×`` the deepest interior distance from the boundary."""
    import cv2

    dt = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    top = float(dt.max())
    if top <= 0:
        return None
    cand = np.argwhere(dt >= max(1.0, rng.uniform(0.2, 0.8) * top))
    if not len(cand):
        cand = np.argwhere(dt > 0)
    r, c = cand[int(rng.integers(len(cand)))]
    return int(r), int(c)


def _ring_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random background pixel within 5–30 px of the object."""
    import cv2

    k = int(rng.integers(5, 31))
    ring = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    cand = np.argwhere(ring.astype(bool) & ~mask)
    if not len(cand):
        return None
    r, c = cand[int(rng.integers(len(cand)))]
    return int(r), int(c)


def corrupt(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong mask near ``mask`` ((S,S) bool): eroded, dilated, shifted, cut, or with an extra blob."""
    import cv2

    s = mask.shape[0]
    kind = int(rng.integers(5))
    m8 = mask.astype(np.uint8)
    if kind in (0, 1):
        k = int(rng.integers(2, 13))
        se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        out = cv2.erode(m8, se) if kind == 0 else cv2.dilate(m8, se)
    elif kind == 2:
        dy, dx = (rng.uniform(-0.08, 0.08, 2) * s).astype(int)
        out = np.roll(np.roll(m8, dy, 0), dx, 1)
    elif kind == 3:
        yy, xx = np.mgrid[0:s, 0:s]
        pts = np.argwhere(mask)
        r, c = pts[int(rng.integers(len(pts)))]
        th = rng.uniform(0, 2 * np.pi)
        out = m8 * (((yy - r) * np.cos(th) + (xx - c) * np.sin(th)) > 0)
    else:
        p = _ring_point(mask, rng)
        out = m8.copy()
        if p is not None:
            cv2.circle(out, (p[1], p[0]), int(rng.integers(4, max(5, s // 8))), 1, -1)
    return out.astype(bool)


def sample_view(shape: tuple[int, int], mask: np.ndarray, rng: np.random.Generator, cfg: ClickTrainConfig) -> View:
    """The whole image (``p_full_view``) or a zoom-in box on the object (see the module docstring)."""
    if rng.random() < cfg.p_full_view:
        return View.full(shape)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    side = max(r1 - r0 + 1, c1 - c0 + 1)
    jr, jc = rng.uniform(-0.15, 0.15, 2) * side
    v = cfg.view
    min_side = max(int(v.min_side_px), int(round(v.min_side_frac * max(shape))))
    return box_view(shape, r0 + jr, c0 + jc, r1 + jr, c1 + jc, float(rng.uniform(1.0, 2.2)), min_side)


def _augment(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi

    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    x = img.astype(np.float32) / 255.0
    if rng.random() < 0.6:
        x = np.power(np.clip(x, 0, 1), float(np.exp(rng.uniform(-0.4, 0.4))))
    if rng.random() < 0.6:
        x = (x - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.2:
        x = ndi.gaussian_filter(x, rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.04), x.shape).astype(np.float32)
    return np.clip(x * 255.0, 0, 255).astype(np.float32), np.ascontiguousarray(mask)


def make_sample(pools: _Pools, rng: np.random.Generator, cfg: ClickTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """One training view: ``(image (S,S) float32 in 0..255, mask (S,S) bool)``."""
    s = int(cfg.view.size)
    names = ["montgomery", "usgra", "synthetic"]
    weights = np.array([w if (n == "synthetic" or pools.objects.get(n)) else 0.0 for n, w in zip(names, cfg.mix)])
    for _ in range(20):
        name = names[int(rng.choice(3, p=weights / weights.sum()))]
        if name == "synthetic":
            img, mask = synthetic_object(rng, s)
        else:
            objs = pools.objects[name]
            obj = objs[int(rng.integers(len(objs)))]
            v = sample_view(obj.mask.shape, obj.mask, rng, cfg)
            img = resize(obj.image[v.r0:v.r1, v.c0:v.c1], (s, s))
            mask = resize(obj.mask[v.r0:v.r1, v.c0:v.c1].astype(np.float32), (s, s)) >= 0.5
        if mask.sum() >= 16:
            return _augment(img, mask, rng)
    raise ConfigError("could not draw a training view with an object in 20 tries", hint="check the training data")


def _first_clicks(mask: np.ndarray, rng: np.random.Generator) -> list[Click]:
    clicks: list[Click] = []
    if rng.random() < 0.5:
        c = next_click(mask, np.zeros_like(mask))
        if c is not None:
            clicks.append(c)
    if not clicks:
        p = _interior_point(mask, rng)
        if p is not None:
            clicks.append(Click(p[0], p[1], True))
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 3))):
            p = _interior_point(mask, rng) if rng.random() < 0.5 else _ring_point(mask, rng)
            if p is not None:
                clicks.append(Click(p[0], p[1], bool(mask[p])))
    return clicks


def encode(images: np.ndarray, clicks: list[list[Click]], prev: np.ndarray, radius: float) -> "torch.Tensor":
    """Network input (B,4,S,S) float32 channels-last from views (B,S,S) 0..255, clicks and previous masks (B,S,S)."""
    import torch

    from engine.assist.model import normalise_view

    b, s = images.shape[0], images.shape[1]
    x = np.empty((b, 4, s, s), np.float32)
    for i in range(b):
        x[i, 0] = normalise_view(images[i])
        x[i, 1:3] = disk_maps([(c.row, c.col, c.positive) for c in clicks[i]], (s, s), radius)
        x[i, 3] = prev[i]
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)


def _loss(logits: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid()
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + dice.mean()


def train_step(net: "ClickNet", opt: "torch.optim.Optimizer", pools: _Pools, rng: np.random.Generator,
               cfg: ClickTrainConfig) -> dict[str, float]:
    """One optimisation step on a fresh batch (first clicks, iterative clicks, loss). Returns loss and counts."""
    import torch

    b = cfg.batch_size
    samples = [make_sample(pools, rng, cfg) for _ in range(b)]
    images = np.stack([x for x, _ in samples])
    masks = np.stack([m for _, m in samples])
    prev = np.zeros_like(masks)
    clicks: list[list[Click]] = []
    for i in range(b):
        if rng.random() < cfg.p_correct:
            prev[i] = corrupt(masks[i], rng)
            c = next_click(masks[i], prev[i])
            clicks.append([c] if c is not None else _first_clicks(masks[i], rng))
        else:
            clicks.append(_first_clicks(masks[i], rng))
    n_iters = int(rng.integers(0, cfg.max_iters + 1))
    radius = float(cfg.view.disk_radius)
    if n_iters:
        net.eval()
        with torch.no_grad():
            for _ in range(n_iters):
                pred = (net(encode(images, clicks, prev, radius))[:, 0] > 0).numpy()
                for i in range(b):
                    c = next_click(masks[i], pred[i], clicks[i])
                    prev[i] = pred[i]
                    if c is not None:
                        clicks[i].append(c)
        net.train()
    logits = net(encode(images, clicks, prev, radius))
    target = torch.from_numpy(masks[:, None].astype(np.float32))
    loss = _loss(logits, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    with torch.no_grad():
        pm = logits[:, 0] > 0
        t = target[:, 0] > 0.5
        ious = ((pm & t).sum(dim=(1, 2)).float() / (pm | t).sum(dim=(1, 2)).clamp(min=1).float()).mean()
    return {"loss": float(loss.item()), "iou": float(ious.item()), "iters": float(n_iters),
            "clicks": float(np.mean([len(c) for c in clicks]))}


def _lr_at(step: int, cfg: ClickTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train_click_model(cfg: ClickTrainConfig, progress: ProgressFn | None = None) -> Path:
    """Train per ``cfg`` and write the weights folder ``cfg.out`` (``model.safetensors`` + ``click.json`` +
    ``log.jsonl``); the folder is re-written every 100 steps, so an interrupted run leaves a usable model.

    Returns:
        The output folder.
    """
    import torch

    from engine.assist.net import ClickNet

    report = as_progress(progress)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, int(cfg.threads)))
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc)
    report(0, cfg.steps, "loading training data")
    pools = _Pools()
    splits: dict[str, Any] = {}
    for name, weight in zip(("montgomery", "usgra"), cfg.mix[:2]):
        if weight <= 0:  # not sampled: not loaded (a synthetic-only smoke run needs no data folder)
            continue
        sp = load_split(name, cfg.data)
        pools.objects[name] = load_objects(sp, sp.train)
        splits[name] = {**sp.describe(), "data": _portable(Path(cfg.data) / sp.source.folder),
                        "structures": sorted({o.structure for o in pools.objects[name]}),
                        "n_train_objects": len(pools.objects[name])}
    net = ClickNet(cfg.spec)
    lineage: dict[str, Any] | None = None
    if cfg.init:
        from engine.assist.model import load_click_model

        start = load_click_model(cfg.init)
        if start.card.spec != cfg.spec:
            raise ConfigError(f"--init model has architecture {start.card.spec}, this run {cfg.spec}",
                              hint="train the second stage with the first stage's architecture")
        net.load_state_dict(start.net.state_dict())
        first = start.card.training
        lineage = {"init": "the first stage's weights", "first_stage": {
            k: first.get(k) for k in ("steps_planned", "steps_run", "samples_seen", "seconds", "end_state",
                                      "started", "finished", "config", "final_train_loss", "final_train_iou")}}
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    log: list[dict[str, float]] = []
    acc: list[dict[str, float]] = []
    end_state = "finished"
    step = 0
    with open(out / "log.jsonl", "w", encoding="utf-8") as logf:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            acc.append(train_step(net, opt, pools, rng, cfg))
            if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
                row = {k: float(np.mean([a[k] for a in acc])) for k in acc[0]}
                row.update(step=step + 1, lr=opt.param_groups[0]["lr"], seconds=round(time.perf_counter() - t0, 1))
                log.append(row)
                acc.clear()
                logf.write(json.dumps(row) + "\n")
                logf.flush()
                report(step + 1, cfg.steps, f"loss {row['loss']:.4f} train IoU {row['iou']:.3f} "
                                            f"({row['seconds']:.0f} s)")
            done = step + 1 == cfg.steps
            over = cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes
            if over:
                end_state = f"stopped by max_minutes={cfg.max_minutes} at step {step + 1}"
            elif cfg.stop_at_step is not None and step + 1 >= cfg.stop_at_step and not done:
                over = True
                end_state = f"stopped by stop_at_step={cfg.stop_at_step}"
            if (step + 1) % 100 == 0 or done or over:
                card = _card(cfg, splits, started, step + 1, time.perf_counter() - t0,
                             end_state if (done or over) else "running", log, lineage)
                net.eval()
                save_click_model(out, net, card)
                net.train()
            if over:
                break
    return out


def _portable(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it or in the shared data beside it (a card names
    no machine's folders), else as given."""
    repo = Path(__file__).resolve().parents[2]
    p = path.resolve()
    for base in (repo, repo.parent / "shared"):
        if p.is_relative_to(base):
            return os.path.relpath(p, repo)
    return str(path)


def _card(cfg: ClickTrainConfig, splits: dict[str, Any], started: _dt.datetime, steps_run: int, seconds: float,
          end_state: str, log: list[dict[str, float]], lineage: dict[str, Any] | None = None) -> ClickCard:
    import torch

    sources = [SOURCES[n] for n in splits]
    training = {
        "data": [{"source": n, **{k: v for k, v in s.items() if k not in ("val_case_ids", "train_case_ids")}}
                 for n, s in splits.items()] + [{"source": "synthetic", "what": "engine.assist.synth shapes, "
                                                 "generated on the fly (no patient data)"}],
        "split": {n: {"k": s["k"], "seed": s["seed"], "val_fold": s["val_fold"], "stratify": s["stratify"],
                      "grouped_by": s["grouped_by"], "held_out": "validation fold (never seen in training)",
                      "n_train": s["n_train"], "n_val": s["n_val"], "n_train_groups": s["n_train_groups"],
                      "n_val_groups": s["n_val_groups"], "val_case_ids": s["val_case_ids"],
                      "train_case_ids": s["train_case_ids"]} for n, s in splits.items()},
        "not_used": "totalseg-ct-sample (kept as an unseen modality for the benchmark); Kaggle UNS and SIIM "
                    "(their terms forbid shipping weights)",
        "steps_planned": cfg.steps, "steps_run": steps_run, "samples_seen": steps_run * cfg.batch_size,
        "seconds": round(seconds, 1), "end_state": end_state,
        "started": started.isoformat(timespec="seconds"),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu", "threads": cfg.threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "torch": torch.__version__, "seed": cfg.seed,
        "final_train_loss": log[-1]["loss"] if log else None,
        "final_train_iou": log[-1]["iou"] if log else None,
        "command": cfg.command or "weights/reproduce.sh click-seg",
        "config": {**cfg.to_dict(), "out": f".workspace/runs/{cfg.name}", "data": _portable(Path(cfg.data)),
                   "init": f".workspace/runs/{Path(cfg.init).name}" if cfg.init else None},
    }
    if lineage:
        training["lineage"] = lineage
        first = lineage["first_stage"]
        training["samples_seen_total"] = (first.get("samples_seen") or 0) + steps_run * cfg.batch_size
        training["seconds_total"] = round((first.get("seconds") or 0) + seconds, 1)
    return ClickCard(
        name=cfg.name, spec=cfg.spec, view=cfg.view,
        description="Class-agnostic click-to-segment model (RITM-style: image + positive/negative click disks + "
                    "previous mask → mask, zoom-in after the first click), trained on CPU with simulated clicks "
                    "on chest X-ray lungs, ultrasound nerves and vessels, and synthetic shapes.",
        training=training,
        license={"license": "; ".join([f"{s.folder}: {s.license}" for s in sources]
                                      + ["synthetic shapes: generated by this project"]),
                 "attribution": "; ".join([s.attribution for s in sources] + ["synthetic shapes (no patient data)"])})


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.assist.train``: parse arguments, train, print progress lines."""
    p = argparse.ArgumentParser(prog="python -m engine.assist.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("SEGWB_SHARED_DATA", "../shared/data"),
                   help="folder holding montgomery-lung/ and usgra-nerve-vessel/")
    p.add_argument("--out", default=".workspace/runs/click-seg", help="output weights folder")
    p.add_argument("--name", default="click-seg")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this long")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="stop after this many steps, schedule planned for --steps (reproduces a cut run)")
    p.add_argument("--init", default=None, help="start from this click-model folder (a second stage)")
    p.add_argument("--p-correct", type=float, default=0.2, help="share of samples starting from a corrupted mask")
    p.add_argument("--max-iters", type=int, default=3, help="iterative clicks per sample: 0..N")
    p.add_argument("--command", default="", help="reproduce command recorded in the card")
    a = p.parse_args(argv)
    cfg = ClickTrainConfig(data=a.data, out=a.out, name=a.name, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                           seed=a.seed, threads=a.threads, max_minutes=a.max_minutes,
                           stop_at_step=a.stop_at_step, init=a.init, p_correct=a.p_correct, max_iters=a.max_iters,
                           command=a.command)

    def show(done: int, total: int, message: str = "") -> None:
        print(f"[{done}/{total}] {message}", flush=True)

    from engine.errors import WorkbenchError

    try:
        out = train_click_model(cfg, show)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
