"""What a run writes while it trains: ``status.json``, ``history.csv``/``history.json``, previews.

``status.json`` is for other processes (the Streamlit Train page polls it): it is rewritten
atomically at most every ``interval`` seconds during an epoch and always at epoch ends and state
changes. Its keys: ``state`` (``starting | running | finished | failed | cancelled``), ``epoch``
(1-based, the one running or last finished), ``epochs``, ``step``, ``steps_per_epoch``,
``message``, ``pid``, ``started``, ``updated`` (ISO-8601 UTC), ``best_metric``, ``best_epoch``,
``metric`` (its name), ``train_loss`` (running mean of the epoch), ``run_dir``, ``name``,
``task``, ``world_size``.

Cancellation: create ``<run_dir>/CANCEL`` (any content); the run stops after the current step,
saves ``last/`` and ``resume.pt`` and ends with state ``cancelled`` (see :func:`request_cancel`).

Example:
    >>> log = RunLog(run_dir, epochs=10, steps_per_epoch=50)          # doctest: +SKIP
    >>> log.update(state="running", epoch=1, step=3)                   # doctest: +SKIP
    >>> read_status(run_dir)["state"]                                  # doctest: +SKIP
    'running'
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.fsutil import atomic_path, atomic_write_json, atomic_write_text, read_json

__all__ = ["RunLog", "read_status", "request_cancel", "read_history", "render_preview",
           "write_evolution_gif", "STATES"]

STATES = ("starting", "running", "finished", "failed", "cancelled")
CANCEL_FILE = "CANCEL"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``status.json`` as a dict (raises ReadError when missing or corrupt)."""
    return read_json(Path(run_dir) / "status.json")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``history.json`` (empty list when the run has none yet)."""
    path = Path(run_dir) / "history.json"
    if not path.exists():
        return []
    return list(read_json(path))


def request_cancel(run_dir: str | Path) -> Path:
    """Ask a running training to stop after its current step (creates ``<run_dir>/CANCEL``)."""
    path = Path(run_dir) / CANCEL_FILE
    atomic_write_text(path, _now() + "\n")
    return path


class RunLog:
    """Writes status and history for one run (only the main process of a torchrun job should).

    Args:
        run_dir: the run folder.
        epochs: planned epochs.
        steps_per_epoch: optimizer steps per epoch.
        interval: minimum seconds between status writes during an epoch.
        base: fixed extra fields of the status (name, task, world_size, ...).
    """

    def __init__(self, run_dir: str | Path, epochs: int, steps_per_epoch: int, interval: float = 2.0,
                 base: dict[str, Any] | None = None, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.interval = float(interval)
        self.enabled = enabled
        self._last = 0.0
        self.status: dict[str, Any] = {
            "state": "starting", "epoch": 0, "epochs": int(epochs), "step": 0,
            "steps_per_epoch": int(steps_per_epoch), "message": "", "pid": os.getpid(),
            "started": _now(), "updated": _now(), "best_metric": None, "best_epoch": None,
            "metric": None, "train_loss": None, "run_dir": str(self.run_dir), **(base or {})}

    def update(self, force: bool = False, **fields: Any) -> None:
        """Merge ``fields`` into the status; write it when forced or ``interval`` has passed."""
        self.status.update(fields)
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        self.status["updated"] = _now()
        atomic_write_json(self.run_dir / "status.json", self.status)

    def due(self) -> bool:
        """True when ``interval`` seconds have passed since the last write."""
        return self.enabled and time.monotonic() - self._last >= self.interval

    def cancel_requested(self) -> bool:
        return (self.run_dir / CANCEL_FILE).exists()

    def clear_cancel(self) -> None:
        try:
            (self.run_dir / CANCEL_FILE).unlink()
        except FileNotFoundError:
            pass

    def write_history(self, history: Sequence[dict[str, Any]]) -> None:
        """``history.json`` (list of records) and ``history.csv`` (one row per epoch), atomically."""
        if not self.enabled:
            return
        atomic_write_json(self.run_dir / "history.json", list(history))
        columns: list[str] = []
        for rec in history:
            for k in rec:
                if k not in columns and not isinstance(rec[k], (dict, list)):
                    columns.append(k)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for rec in history:
            writer.writerow({k: _csv_value(rec.get(k)) for k in columns})
        atomic_write_text(self.run_dir / "history.csv", buf.getvalue())


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return v


# --------------------------------------------------------------------------------- previews

def _to_rgb(img: np.ndarray) -> np.ndarray:
    """float (C,H,W) in [0,1] → uint8 (H,W,3)."""
    x = np.asarray(img, dtype=np.float32)
    if x.shape[0] >= 3:
        x = x[:3]
    else:
        x = np.repeat(x[:1], 3, axis=0)
    return np.clip(np.rint(x.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


def _overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    from engine.io.masks import mask_to_rgb

    colours = mask_to_rgb(mask).astype(np.float32)
    on = (np.asarray(mask) > 0)[..., None]
    out = np.where(on, (1 - alpha) * rgb.astype(np.float32) + alpha * colours, rgb.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_preview(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | Path,
                   title: str = "", tile: int = 160) -> Path:
    """Write a PNG grid: one row per sample, columns image | ground truth | prediction.

    Args:
        samples: ``(image float32 (C,H,W) in [0,1], gt uint8 (H,W), pred uint8 (H,W))``.
        path: output PNG.
        title: text drawn in the header (e.g. ``epoch 3  val Dice 0.71``).
        tile: longest side of each cell in pixels.
    """
    from PIL import Image, ImageDraw

    header = 18
    cells: list[list[Image.Image]] = []
    cw = ch = 1
    for img, gt, pred in samples:
        rgb = _to_rgb(img)
        h, w = rgb.shape[:2]
        s = tile / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        row = [Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)
               for a in (rgb, _overlay(rgb, gt), _overlay(rgb, pred))]
        cells.append(row)
        cw, ch = max(cw, size[0]), max(ch, size[1])
    gap = 2
    width = 3 * cw + 4 * gap
    height = header + len(cells) * (ch + gap) + gap
    canvas = Image.new("RGB", (width, max(height, header + 1)), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title, fill=(255, 255, 255))
    for j, name in enumerate(("image", "ground truth", "prediction")):
        draw.text((gap + j * (cw + gap) + cw - 6 * len(name) - 4, 3), name, fill=(180, 180, 180))
    for i, row in enumerate(cells):
        for j, im in enumerate(row):
            canvas.paste(im, (gap + j * (cw + gap), header + gap + i * (ch + gap)))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def write_evolution_gif(preview_dir: str | Path, out: str | Path | None = None, max_width: int = 480,
                        duration_ms: int = 500) -> Path | None:
    """Animated GIF of the ``epoch_XXX.png`` previews in order (one frame per epoch; the epoch
    number drawn in each frame keeps consecutive frames distinct, so none are merged)."""
    from PIL import Image

    folder = Path(preview_dir)
    files = sorted(folder.glob("epoch_*.png"))
    if not files:
        return None
    frames = []
    for f in files:
        with Image.open(f) as src:
            im = src.convert("RGB")
            if im.width > max_width:
                im = im.resize((max_width, max(1, round(im.height * max_width / im.width))), Image.Resampling.BILINEAR)
            frames.append(im.quantize(colors=255, method=Image.Quantize.FASTOCTREE))
    path = Path(out) if out else folder / "evolution.gif"
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms,
                       loop=0, disposal=1, optimize=False)
    return path
