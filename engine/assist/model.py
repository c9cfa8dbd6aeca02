"""The shipped click model: its card, saving, loading (cached per process) and one-click prediction.

A click model lives in a weights folder like the other shipped models, but with its own card file,
``click.json`` (format ``segwb-click-model``), so it never shows up in the segmentation-model
pickers or ``engine predict`` (it needs clicks, not just an image): ``model.safetensors`` (tensors
only, float32) + ``click.json`` (architecture, view and click encoding, threshold, training data and
split with the held-out case ids, NoC figures, license attribution, the reproduce command, the
tensors' SHA-256). Weights are found by name in ``weights/`` of the checkout, then
``<workspace>/models``, or given as a folder path; nothing is downloaded.

One prediction (:meth:`ClickModel.predict`): choose the view (the whole image for a first click,
else a zoom-in box around the current mask and the clicks, see :func:`engine.assist.prep.zoom_view`),
resize it to the card's working size (256²), encode clicks as disks (radius 5 working pixels) and
the previous mask, run the network once, resize the probability back to the view and paste it into
the previous mask (outside the view nothing changes); once there is a mask, keep only the change
connected to the new click (:func:`progressive_merge`).

Example:
    >>> model = load_click_model()                                             # doctest: +SKIP
    >>> mask = model.predict(grey, [Click(200, 310, True)], np.zeros(grey.shape, bool))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from engine.assist.clicks import Click
from engine.assist.prep import View, box_view, disk_maps, resize, zoom_view
from engine.assist.spec import ClickNetSpec
from engine.config import JsonConfig
from engine.errors import CheckpointError, ConfigError, WorkbenchError

if TYPE_CHECKING:
    from engine.assist.net import ClickNet

CLICK_FORMAT = "segwb-click-model"
CLICK_FORMAT_VERSION = 1
CLICK_CARD = "click.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_WEIGHTS = "click-seg"
"""Name of the shipped click model (``weights/click-seg``)."""
REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@dataclass(frozen=True)
class ClickViewConfig(JsonConfig):
    """How the model sees an image (stored in the card; training and inference share it).

    Attributes:
        size: working resolution S (views are resized to S×S); a multiple of the net's size divisor.
        disk_radius: click disk radius in working pixels.
        expansion: zoom-in side = bounding box of mask ∪ clicks × this.
        min_side_frac, min_side_px: smallest zoom-in side, as a fraction of the image's longer side
            and in pixels (the larger applies).
        box_expansion: the view of a box prompt = the box × this.
        threshold: probability ≥ threshold → object.
        progressive_merge: once there is a mask, a click changes only the part connected to it — for a
            positive click the added region touching it, for a negative one the removed region touching
            it — and the rest of the mask stays (FocalClick's "progressive merge", Chen et al. 2022), so a
            correction never undoes good parts elsewhere.
    """

    size: int = 256
    disk_radius: float = 5.0
    expansion: float = 1.4
    min_side_frac: float = 0.2
    min_side_px: int = 48
    box_expansion: float = 1.2
    threshold: float = 0.5
    progressive_merge: bool = True

    def __post_init__(self) -> None:
        if not 32 <= int(self.size) <= 1024:
            raise ConfigError(f"click model working size must be 32..1024, got {self.size}")
        if not 0.0 < float(self.threshold) < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if float(self.expansion) < 1.0 or float(self.box_expansion) < 1.0:
            raise ConfigError("expansion factors must be ≥ 1")


@dataclass(frozen=True)
class ClickCard(JsonConfig):
    """Everything about a click model except its tensors (``click.json``).

    Attributes:
        name: short id = folder name (``click-seg``).
        spec: architecture (:class:`~engine.assist.spec.ClickNetSpec`).
        view: working size, click encoding, zoom-in and threshold (:class:`ClickViewConfig`).
        description: one paragraph for people.
        training: data sources, grouped split with held-out case ids, schedule, time, machine, command.
        metrics: held-out NoC / IoU figures from ``bench/assist.py`` (with the command and date).
        license: data licenses and the attribution text to show.
    """

    name: str
    spec: ClickNetSpec = ClickNetSpec()
    view: ClickViewConfig = ClickViewConfig()
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    license: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    format: str = CLICK_FORMAT
    format_version: int = CLICK_FORMAT_VERSION
    created: str = ""
    tensors_sha256: str = ""
    n_parameters: int = 0

    @classmethod
    def read(cls, folder: str | Path) -> "ClickCard":
        """Read and check ``folder/click.json`` (no torch needed).

        Raises:
            CheckpointError: missing, corrupt, not a click-model card, or from a newer format.
        """
        from engine.fsutil import read_json

        path = Path(folder) / CLICK_CARD
        if not path.is_file():
            raise CheckpointError(f"{CLICK_CARD} is missing", path=folder,
                                  hint="a click-model folder holds model.safetensors and click.json; "
                                       "train one with `python -m engine.assist.train`")
        try:
            data = read_json(path)
        except WorkbenchError as exc:
            raise CheckpointError(exc.message, path=path, hint="the card is corrupt; re-export the model") from None
        if not isinstance(data, dict) or data.get("format") != CLICK_FORMAT:
            raise CheckpointError("not a segwb click-model card", path=path,
                                  hint="point at a folder made by `python -m engine.assist.train`")
        if int(data.get("format_version", 0)) > CLICK_FORMAT_VERSION:
            raise CheckpointError(f"click card format {data.get('format_version')} is newer than this program",
                                  path=path, hint="upgrade the workbench")
        try:
            card = cls.from_dict(data)
        except ConfigError as exc:
            raise CheckpointError(f"invalid click card: {exc.message}", path=path, hint=exc.hint) from None
        if card.view.size % card.spec.size_divisor:
            raise CheckpointError(f"working size {card.view.size} is not a multiple of {card.spec.size_divisor}",
                                  path=path, hint="the card is damaged; re-export the model")
        return card


def search_dirs() -> list[Path]:
    """Where click models are looked up by name: ``weights/`` of the checkout, then ``<workspace>/models``."""
    from engine.workspace import Workspace

    return [REPO_WEIGHTS, Workspace().root / "models"]


def resolve_click_weights(name_or_dir: str | Path | None = None) -> Path:
    """Folder of a click model: a folder path holding ``click.json``, or a name found in :func:`search_dirs`.

    Raises:
        CheckpointError: nothing found (the hint says how to get one).
    """
    name = str(name_or_dir) if name_or_dir is not None else DEFAULT_WEIGHTS
    p = Path(name).expanduser()
    if (p / CLICK_CARD).is_file():
        return p
    if "/" not in name and "\\" not in name:
        for d in search_dirs():
            if (d / name / CLICK_CARD).is_file():
                return d / name
    raise CheckpointError(f"no click model {name!r}", path=p if p.exists() else None,
                          hint="use the shipped one (weights/click-seg), train one with `weights/reproduce.sh "
                               "click-seg`, or pick a classical method (grabcut, random_walker, watershed)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_click_model(folder: str | Path, net: "ClickNet", card: ClickCard) -> Path:
    """Write ``model.safetensors`` (float32) then ``click.json`` atomically into ``folder``;
    ``created``, ``tensors_sha256``, ``n_parameters`` and ``spec`` are filled in. Returns the folder."""
    from safetensors.torch import save_file

    from engine.fsutil import atomic_path, atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().float().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
             for k, v in net.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": CLICK_FORMAT, "name": card.name})
    final = card.replace(spec=net.spec, dtype="float32", tensors_sha256=_sha256(folder / WEIGHTS_FILE),
                         n_parameters=int(sum(p.numel() for p in net.parameters())),
                         created=card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    atomic_write_json(folder / CLICK_CARD, final.to_dict())
    return folder


def write_click_card(folder: str | Path, card: ClickCard) -> Path:
    """Replace ``click.json`` of an existing folder atomically (tensors and their hash unchanged)."""
    from engine.fsutil import atomic_write_json

    path = Path(folder) / CLICK_CARD
    atomic_write_json(path, card.to_dict())
    return path


def normalise_view(img: np.ndarray) -> np.ndarray:
    """(S,S) view intensities (0..255) → float32 z-scores (standard deviation floored at 1 grey level)."""
    img = img.astype(np.float32)
    return (img - float(img.mean())) / max(float(img.std()), 1.0)


class ClickModel:
    """A loaded click model (network in eval mode, float32, CPU) and its card.

    Get one with :func:`load_click_model` (cached per process); sessions keep only the weights name.
    """

    def __init__(self, net: "ClickNet", card: ClickCard, folder: Path):
        self.net = net
        self.card = card
        self.folder = folder

    @property
    def name(self) -> str:
        return self.card.name

    def view_for(self, shape: tuple[int, int], clicks: Sequence[Click], prev: np.ndarray,
                 box: tuple[int, int, int, int] | None = None) -> View:
        """The view a prediction uses: around ``box`` when given, else the zoom-in view of ``prev`` and the clicks."""
        v = self.card.view
        min_side = max(int(v.min_side_px), int(round(v.min_side_frac * max(shape))))
        if box is not None:
            return box_view(shape, box[0], box[1], box[2], box[3], v.box_expansion, min_side)
        return zoom_view(shape, prev, [(c.row, c.col) for c in clicks], expansion=v.expansion,
                         min_side_frac=v.min_side_frac, min_side_px=v.min_side_px)

    def probability(self, grey: np.ndarray, clicks: Sequence[Click], prev: np.ndarray, view: View) -> np.ndarray:
        """Object probability over ``view`` ((view.height, view.width) float32 in [0, 1]).

        Args:
            grey: (H,W) uint8 working image (:func:`engine.assist.prep.working_image`).
            clicks: every click so far (clicks outside the view are not seen).
            prev: (H,W) bool mask before this click.
            view: from :meth:`view_for`.
        """
        import torch

        s = int(self.card.view.size)
        crop = grey[view.r0:view.r1, view.c0:view.c1]
        img = normalise_view(resize(crop, (s, s)))
        sr, sc = s / view.height, s / view.width
        pts = [((c.row - view.r0 + 0.5) * sr - 0.5, (c.col - view.c0 + 0.5) * sc - 0.5, c.positive) for c in clicks]
        maps = disk_maps(pts, (s, s), float(self.card.view.disk_radius))
        prev_v = resize(prev[view.r0:view.r1, view.c0:view.c1].astype(np.float32), (s, s)) >= 0.5
        x = np.concatenate([img[None], maps, prev_v[None].astype(np.float32)], axis=0)
        with torch.inference_mode():
            t = torch.from_numpy(x)[None].contiguous(memory_format=torch.channels_last)
            prob = torch.sigmoid(self.net(t))[0, 0].float().numpy()
        return np.clip(resize(prob, (view.height, view.width)), 0.0, 1.0)

    def predict(self, grey: np.ndarray, clicks: Sequence[Click], prev: np.ndarray,
                box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The mask after the latest click (or box): (H,W) bool.

        Args:
            grey: (H,W) uint8 working image.
            clicks: all clicks so far, the latest last (for a box: include a positive click at its centre).
            prev: (H,W) bool mask before it.
            box: ``(r0, c0, r1, c1)`` inclusive, for a box prompt: the view is the box (expanded) and the
                result is cut to the box.
        """
        view = self.view_for(grey.shape[:2], clicks, prev, box)
        prob = self.probability(grey, clicks, prev, view)
        out = prev.copy()
        part = prob >= float(self.card.view.threshold)
        if box is not None:
            rr = np.arange(view.r0, view.r1)[:, None]
            cc = np.arange(view.c0, view.c1)[None, :]
            part &= (rr >= box[0]) & (rr <= box[2]) & (cc >= box[1]) & (cc <= box[3])
            out[:] = False
        out[view.r0:view.r1, view.c0:view.c1] = part
        if box is None and clicks and self.card.view.progressive_merge and prev.any():
            out = progressive_merge(prev, out, clicks[-1])
        return out


def progressive_merge(prev: np.ndarray, new: np.ndarray, click: Click, reach: int = 6) -> np.ndarray:
    """``prev`` updated only where the latest click asked: the 8-connected parts of the change of the
    click's sign (added pixels for a positive click, removed for a negative one) that come within
    ``reach`` pixels of it. (H,W) bool in, (H,W) bool out."""
    from scipy import ndimage as ndi

    change = (new & ~prev) if click.positive else (prev & ~new)
    if not change.any():
        return prev.copy()
    labels, _ = ndi.label(change, structure=np.ones((3, 3), bool))
    r0, c0 = max(click.row - reach, 0), max(click.col - reach, 0)
    window = labels[r0:click.row + reach + 1, c0:click.col + reach + 1]
    ids = np.unique(window[window > 0])
    out = prev.copy()
    if ids.size:
        keep = np.isin(labels, ids)
        out[keep] = new[keep]
    return out


_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str], ClickModel] = {}


def clear_cache() -> None:
    """Forget loaded click models (tests; after replacing weights on disk)."""
    with _LOCK:
        _CACHE.clear()


def load_click_model(name_or_dir: str | Path | None = None, verify_hash: bool = True) -> ClickModel:
    """Load a click model by name (default ``click-seg``) or folder; cached per process (keyed by folder
    and tensors hash), so every session shares one network.

    Raises:
        CheckpointError: not found, corrupt, hash mismatch, or the card does not match the tensors.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.assist.net import ClickNet

    folder = resolve_click_weights(name_or_dir).resolve()
    card = ClickCard.read(folder)
    key = (str(folder), card.tensors_sha256)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        wpath = folder / WEIGHTS_FILE
        if not wpath.is_file():
            raise CheckpointError("model.safetensors is missing", path=folder, hint="re-export the click model")
        if verify_hash and card.tensors_sha256 and _sha256(wpath) != card.tensors_sha256:
            raise CheckpointError(f"model.safetensors does not match the hash in {CLICK_CARD}", path=wpath,
                                  hint="the folder was modified or a save was interrupted; re-export it")
        try:
            state = load_file(str(wpath), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read tensors ({exc})", path=wpath, hint="the file is corrupt") from None
        try:
            net = ClickNet(card.spec)
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        except (WorkbenchError, RuntimeError) as exc:
            raise CheckpointError(f"{CLICK_CARD} does not match model.safetensors ({str(exc)[:300]})", path=folder,
                                  hint="the card's spec must be the one the tensors were trained with") from None
        net.eval()
        net = net.to(memory_format=torch.channels_last)
        model = ClickModel(net, card, folder)
        _CACHE[key] = model
        return model


def click_card_markdown(card: ClickCard, size_bytes: int | None = None) -> str:
    """A click model's card as a Markdown section (for ``weights/README.md``): what it is, architecture,
    view, training data and split, schedule, the held-out NoC figures beside the classical methods, timing,
    license, the reproduce command. Every figure is read from the card."""
    tr, m = card.training or {}, card.metrics or {}
    sp, v = card.spec, card.view

    def f(x: Any, nd: int = 2) -> str:
        return "—" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)

    data = "; ".join(f"`{d.get('data', d.get('source'))}` ({d.get('n_train', '?')} training images, "
                     f"{d.get('n_train_objects', '?')} objects: {', '.join(d.get('structures', []))})"
                     if d.get("source") != "synthetic" else "synthetic shapes (engine.assist.synth)"
                     for d in tr.get("data", []))
    split = "; ".join(f"{n}: grouped k-fold, k = {s.get('k')}, fold {s.get('val_fold')} held out (seed "
                      f"{s.get('seed')}, grouped by {s.get('grouped_by')}): {s.get('n_train')} train "
                      f"({s.get('n_train_groups')} groups) / {s.get('n_val')} held-out ({s.get('n_val_groups')} "
                      "groups) images" for n, s in (tr.get("split") or {}).items())
    lin = tr.get("lineage") or {}
    first = lin.get("first_stage") or {}
    sched = (f"{tr.get('steps_run', '?')} of {tr.get('steps_planned', '?')} steps × batch "
             f"{(tr.get('config') or {}).get('batch_size', '?')} ({tr.get('samples_seen', '?')} samples), "
             f"{f(tr.get('seconds', 0) / 60.0, 1)} min")
    if first:
        sched = (f"two stages: {first.get('steps_run', '?')} steps ({first.get('samples_seen', '?')} samples, "
                 f"{f((first.get('seconds') or 0) / 60.0, 1)} min), then from those weights " + sched
                 + f"; {tr.get('samples_seen_total', '?')} samples, {f((tr.get('seconds_total') or 0) / 60.0, 1)} "
                   "min in all")
    rows = [("Task", "interactive click-to-segment, class-agnostic: image + positive / negative clicks + previous "
                     "mask → mask (`engine.assist`, method `click_model`)"),
            ("Architecture", f"{sp.arch}: stride-2 stem, U-Net widths {list(sp.widths)}, full-resolution branch "
                             f"{sp.fine_channels}; {card.n_parameters:,} parameters"),
            ("Input", f"4 channels at {v.size}×{v.size}: z-scored view, click disks (radius {v.disk_radius:g}), "
                      f"previous mask; zoom-in after the first click (box × {v.expansion:g}, ≥ "
                      f"{v.min_side_frac:g} of the image side); threshold {v.threshold:g}"
                      + ("; progressive merge" if v.progressive_merge else "")),
            ("File", f"model.safetensors, {card.dtype}" + (f", {size_bytes / 1e6:.2f} MB" if size_bytes else "")),
            ("Training data", data or "?"),
            ("Split", split or "?"),
            ("Training", f"{sched}; device {tr.get('device', '?')} ({tr.get('threads', '?')} threads), torch "
                         f"{tr.get('torch', '?')}, {tr.get('end_state', '?')}"),
            ("License / attribution", f"{(card.license or {}).get('license', '?')}; "
                                      f"{(card.license or {}).get('attribution', '?')}"),
            ("Reproduce", f"`{tr.get('command', '?')}`")]
    lines = [f"### `{card.name}`", "", card.description, "", "| | |", "|---|---|"]
    lines += [f"| {k} | {val} |" for k, val in rows] + [""]
    side = m.get("held_out_side_by_side") or {}
    if side:
        lines += [f"Held-out NoC (`bench/assist.py`, {m.get('date', '?')}; {m.get('protocol', '')}; objects: "
                  f"{m.get('held_out_subset', '?')}):", "",
                  "| data / structure | method | objects | NoC@85 | NoC@90 | never 0.90 | IoU@1 | IoU@3 | IoU@5 |"
                  " s/click |", "|---|---|---|---|---|---|---|---|---|---|"]
        for g, per in side.items():
            for meth, r in per.items():
                lines.append(f"| {g} | {meth} | {r.get('n_objects')} | {f(r.get('noc85'))} | {f(r.get('noc90'))} | "
                             f"{f(r.get('fail90'))} | {f(r.get('iou@1'), 3)} | {f(r.get('iou@3'), 3)} | "
                             f"{f(r.get('iou@5'), 3)} | {f(r.get('s_per_click_median'), 3)} |")
        allh = m.get("click_model_all_held_out") or {}
        if allh:
            lines += ["", "The click model on every held-out object:", "",
                      "| data / structure | objects | NoC@85 | NoC@90 | never 0.90 | IoU@1 | IoU@3 | IoU@5 | s/click |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for g, r in allh.items():
                lines.append(f"| {g} | {r.get('n_objects')} | {f(r.get('noc85'))} | {f(r.get('noc90'))} | "
                             f"{f(r.get('fail90'))} | {f(r.get('iou@1'), 3)} | {f(r.get('iou@3'), 3)} | "
                             f"{f(r.get('iou@5'), 3)} | {f(r.get('s_per_click_median'), 3)} |")
        tim = m.get("timing_s_per_click") or {}
        if tim:
            lines += ["", "Seconds per click (median, 5 protocol clicks on held-out X-rays resized to the size): "
                      + "; ".join(f"{side_px}²: " + ", ".join(f"{k} {f(t.get('median'), 3)}" for k, t in per.items())
                                  for side_px, per in tim.items())
                      + f" — machine: {m.get('machine', {})}."]
        if m.get("note"):
            lines += ["", str(m["note"]) + "."]
        lines += ["", f"Reproduce the figures: `{m.get('command', 'python bench/assist.py --update-card')}`", ""]
    return "\n".join(lines)
