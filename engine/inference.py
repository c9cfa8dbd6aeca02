"""Prediction: weights → probabilities → post-processed masks at the input's original size.

:class:`Predictor` wraps a loaded model and its card. It applies the card's preprocessing,
runs the model (batched, AMP and channels-last on CUDA, optional flip TTA, optional
overlap-tile sliding window with mirrored borders for images larger than the model's tile),
restores the original size and post-processes.

Device selection: ``auto`` = cuda → mps → cpu.

**Two-stage pipeline (gate).** A predictor may carry a presence classifier
(:class:`engine.classify.ClassifierPredictor`, from ``gate=`` or the card's ``gate``): each image's
``P(present)`` is computed from the classifier's own preprocessing of the raw image, stored in
:attr:`Prediction.gate`, and the mask is emptied when it is below ``gate_threshold`` (the
post-processing presence gate, fed the classifier's probability). The probabilities are never
gated, so an ungated mask can always be recomputed (:meth:`Predictor.ungated_mask`). The rule
(post-processing, then the classifier's or the presence head's gate) is :func:`finish_mask`;
callers that cache probabilities (:meth:`Predictor.predict_raw`) make their masks with it too.

Example:
    >>> pred = Predictor.from_weights("lung-cxr")                         # doctest: +SKIP
    >>> img, meta = engine.io.load_image("chest.dcm")                     # doctest: +SKIP
    >>> out = pred.predict(img)                                           # doctest: +SKIP
    >>> out.mask.shape == img.shape[1:], out.probs.shape[0] == 2          # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, cast

import numpy as np

from engine.augment import Preprocess, plan_geometry, preprocess_image, restore_size
from engine.errors import CheckpointError, ConfigError, WorkbenchError
from engine.postprocess import PostProcessConfig, postprocess
from engine.preprocess import as_chw, model_input, select_device
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from torch.utils.data import Dataset as TorchDataset

    from engine.checkpoint import ModelCard
    from engine.classify import ClassifierPredictor
    from engine.datasets.base import Case, Dataset

TTA_MODES = ("none", "flip", "flip4")


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        mask: uint8 (H,W) label map at the input's original size.
        probs: float32 (K,H,W) softmax probabilities at the original size.
        presence: presence-head probability, or None when the model has no presence head.
        seconds: wall time per stage (``preprocess``, ``model``, ``restore``, ``postprocess``).
        gate: the gating classifier's P(present), or None without a gate.
        gated: the gate emptied a mask that would otherwise have foreground.
    """

    mask: np.ndarray
    probs: np.ndarray
    presence: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    gate: float | None = None
    gated: bool = False


def check_tta(mode: str) -> str:
    """``mode`` when it is one of :data:`TTA_MODES`.

    Raises:
        ConfigError: an unknown mode (the hint lists the known ones).
    """
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown TTA mode {mode!r}", hint=f"use one of {', '.join(TTA_MODES)}")
    return mode


def finish_mask(probs: np.ndarray, post: PostProcessConfig, *, presence: float | None = None,
                gate: float | None = None, gate_threshold: float | None = None) -> np.ndarray:
    """The mask of restored probabilities: post-processing, then the presence gate.

    The one rule :meth:`Predictor.predict` applies, for callers that keep probabilities and
    re-make masks when the settings change (no model run). With a gating classifier's
    probability ``gate`` and its ``gate_threshold``, the classifier replaces the presence head:
    the mask is empty when ``gate < gate_threshold``, and ``post.presence_threshold`` is not used.
    Otherwise ``post`` applies as is, its presence gate fed the model's own ``presence``.

    Args:
        probs: float32 (K,H,W) softmax probabilities at the image's size (:attr:`Prediction.probs`).
        post: the post-processing (a card's ``postprocess`` or a variant of it).
        presence: the presence head's P(present) (:attr:`Prediction.presence`), or None.
        gate: the gating classifier's P(present) (:attr:`Prediction.gate`), or None.
        gate_threshold: the gate's threshold (:attr:`Predictor.gate_threshold`); None = ungated.

    Returns:
        uint8 (H,W) label map, values 0..K-1.

    Example:
        >>> p1 = np.full((4, 4), 0.8, np.float32)
        >>> probs = np.stack([1 - p1, p1])
        >>> int(finish_mask(probs, PostProcessConfig()).sum())
        16
        >>> int(finish_mask(probs, PostProcessConfig(), gate=0.2, gate_threshold=0.5).sum())
        0
        >>> int(finish_mask(probs, PostProcessConfig(), gate=0.2).sum())  # no threshold: ungated
        16
    """
    if gate is not None and gate_threshold is not None:
        return postprocess(probs, post.replace(presence_threshold=float(gate_threshold)), float(gate))
    return postprocess(probs, post, presence)


def gate_rejects(gate: float | None, gate_threshold: float | None) -> bool:
    """True when a gating classifier's P(present) ``gate`` is below its threshold, so
    :func:`finish_mask` empties the mask (False without a gate or without a threshold).

    Example:
        >>> gate_rejects(0.2, 0.5), gate_rejects(0.7, 0.5), gate_rejects(0.2, None)
        (True, False, False)
    """
    return gate is not None and gate_threshold is not None and float(gate) < float(gate_threshold)


def gaussian_weight(tile: tuple[int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """float32 (h,w) importance map for blending tiles (centre 1, edges small, never 0)."""
    h, w = tile
    yy = np.exp(-0.5 * ((np.arange(h) - (h - 1) / 2) / max(h * sigma_scale, 1e-6)) ** 2)
    xx = np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / max(w * sigma_scale, 1e-6)) ** 2)
    g = np.outer(yy, xx).astype(np.float32)
    g /= g.max()
    return np.maximum(g, 1e-3)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window start offsets covering ``[0, length)`` with windows of ``tile`` and step ≤ ``stride``."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


class Predictor:
    """Model + card → predictions.

    Note: the predictor takes ownership of ``model``: it is put in eval mode, moved to the device
    and (on CUDA) converted to channels-last. Training code that validates with a Predictor must
    call ``model.train()`` again afterwards.

    Args:
        model: a :class:`~engine.models.SegmentationNet`.
        card: its :class:`~engine.checkpoint.ModelCard`.
        device: ``auto``/``cpu``/``cuda``/``mps``.
        amp: mixed precision on CUDA (bf16 where supported, else fp16); None = on for CUDA.
        tta: ``none``, ``flip`` (horizontal flip) or ``flip4`` (h, v and both); probabilities averaged.
        tile: sliding-window tile (H, W) in model-input pixels; None = the card's ``tile``.
            Used when the preprocessed image is larger than the tile.
        tile_overlap: fraction of overlap between neighbouring tiles (0 ≤ o < 1).
        batch_size: images (or tiles) per forward pass.
        channels_last: memory format on CUDA (None = on for CUDA).
        gate: a presence classifier (:class:`engine.classify.ClassifierPredictor`) that gates the masks.
        gate_threshold: P(present) below this empties the mask; None = the card's ``gate.threshold``,
            else the classifier card's threshold.
    """

    def __init__(self, model: Any, card: ModelCard, device: str = "auto", amp: bool | None = None,
                 tta: str | bool = "none", tile: tuple[int, int] | None = None, tile_overlap: float = 0.25,
                 batch_size: int = 8, channels_last: bool | None = None, gate: ClassifierPredictor | None = None,
                 gate_threshold: float | None = None):
        import torch

        self.device = select_device(device)
        self.gate = gate
        self.gate_threshold: float | None = None
        if gate is not None:
            card_gate = getattr(card, "gate", None)
            t = gate_threshold if gate_threshold is not None else (
                card_gate.threshold if card_gate is not None and card_gate.threshold is not None
                and Path(card_gate.weights).name == gate.card.name else gate.threshold)
            if not 0.0 <= float(t) <= 1.0:
                raise ConfigError(f"gate threshold must be in [0, 1], got {t}")
            self.gate_threshold = float(t)
        self.card = card
        self.pre: Preprocess = card.preprocess
        self.post_default: PostProcessConfig = card.postprocess
        self.tta = check_tta(("flip" if tta else "none") if isinstance(tta, bool) else str(tta))
        card_tile = getattr(card, "tile", None)
        self.tile = tuple(tile) if tile else (tuple(card_tile) if card_tile else None)
        if not 0 <= tile_overlap < 1:
            raise ConfigError(f"tile_overlap must be in [0, 1), got {tile_overlap}")
        self.tile_overlap = float(tile_overlap)
        self.batch_size = max(1, int(batch_size))
        cuda = self.device.type == "cuda"
        self.amp = cuda if amp is None else (bool(amp) and cuda)
        self.amp_dtype = (torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16)
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.divisor = int(getattr(model, "size_divisor", 32) or 1)
        if self.pre.resize_policy in ("resize", "letterbox") and not self.tile:
            bad = [s for s in self.pre.size if s % self.divisor]
            if bad:
                raise CheckpointError(f"card preprocess size {self.pre.size} is not divisible by the model's "
                                      f"{self.divisor}", hint="fix preprocess.size in card.json")

    @classmethod
    def from_weights(cls, name_or_dir: str | Path, device: str = "auto", gate: str | None = "card",
                     **kwargs: Any) -> "Predictor":
        """Load weights by name (``weights/<name>``, ``<workspace>/models/<name>``) or folder.

        ``gate``: ``"card"`` = the presence classifier the card names (if any), None = no gate,
        or a classifier weights name/folder (``demo-nerve-presence``).
        """
        from engine.checkpoint import load_checkpoint

        model, card = load_checkpoint(name_or_dir, device="cpu")
        clf = None
        name = (card.gate.weights if card.gate else None) if gate == "card" else gate
        if name:
            from engine.classify import ClassifierPredictor

            clf = ClassifierPredictor.from_weights(name, device=device)
        return cls(model, card, device=device, gate=clf, **kwargs)

    @property
    def gate_info(self) -> dict[str, Any] | None:
        """``{"weights": name, "threshold": t}`` of the gate, or None."""
        if self.gate is None:
            return None
        return {"weights": self.gate.card.name, "threshold": self.gate_threshold}

    def _post_mask(self, probs: np.ndarray, post: PostProcessConfig | None, presence: float | None,
                   gate: float | None) -> tuple[np.ndarray, bool]:
        """(mask, gated) for restored probabilities (:func:`finish_mask` with this predictor's gate)."""
        cfg = post or self.post_default
        mask = finish_mask(probs, cfg, presence=presence, gate=gate, gate_threshold=self.gate_threshold)
        if gate is None or self.gate_threshold is None:
            return mask, False
        gated = gate_rejects(gate, self.gate_threshold) and bool(postprocess(probs, cfg.replace(
            presence_threshold=None), None).any())
        return mask, gated

    def ungated_mask(self, pred: "Prediction", post: PostProcessConfig | None = None) -> np.ndarray:
        """The mask ``pred`` would have without the classifier gate (uint8 (H,W))."""
        return finish_mask(pred.probs, post or self.post_default, presence=pred.presence)

    def gate_probs(self, images: Sequence[np.ndarray]) -> list[float | None]:
        """The gate's P(present) for float32 (C,H,W) images (None each without a gate)."""
        if self.gate is None:
            return [None] * len(images)
        return [float(v) for v in self.gate.predict_proba_many(images)]

    # -- core -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.card.spec.num_classes)

    @property
    def has_presence(self) -> bool:
        return bool(self.card.spec.presence_head)

    def _pad_to_divisor(self, x):
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, (h, w)

    def forward_batch(self, x, tta: str | None = None):
        """Probabilities for a preprocessed batch.

        Args:
            x: float32 tensor (N,C,h,w) on any device (already normalised).
            tta: TTA mode for this call (None = the predictor's default); never mutates the predictor,
                so one cached predictor can serve several sessions with different settings.

        Returns:
            ``(probs float32 tensor (N,K,h,w) on the model's device, presence (N,) tensor or None)``.
        """
        import torch

        x = x.to(self.device, non_blocking=True)
        x, (h, w) = self._pad_to_divisor(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mode = check_tta(self.tta if tta is None else tta)
        flips: list[tuple[int, ...]] = [()]
        if mode in ("flip", "flip4"):
            flips.append((3,))
        if mode == "flip4":
            flips += [(2,), (2, 3)]
        probs = None
        presence = None
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=self.amp_dtype,
                                                     enabled=self.amp):
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                out = self.model(xi)
                p = torch.softmax(out["mask"].float(), dim=1)
                if dims:
                    p = torch.flip(p, dims)
                probs = p if probs is None else probs + p
                if "presence" in out:
                    pr = torch.sigmoid(out["presence"].float()).reshape(-1)
                    presence = pr if presence is None else presence + pr
        assert probs is not None
        probs = probs / len(flips)
        if presence is not None:
            presence = presence / len(flips)
        return probs[..., :h, :w], presence

    def _sliding_window(self, x, tta: str | None = None):
        """Overlap-tile prediction of one preprocessed image x (1,C,H,W) with mirrored borders."""
        import torch
        import torch.nn.functional as F

        assert self.tile is not None
        th, tw = (int(self.tile[0]), int(self.tile[1]))
        _, _, H, W = x.shape
        # mirror the borders so every pixel is predicted with context, and the image fills a tile
        margin_h, margin_w = int(round(th * self.tile_overlap / 2)), int(round(tw * self.tile_overlap / 2))
        pad_h = (margin_h, margin_h + max(0, th - (H + 2 * margin_h)))
        pad_w = (margin_w, margin_w + max(0, tw - (W + 2 * margin_w)))
        mode = "reflect" if min(H, W) > max(pad_h + pad_w) else "replicate"
        xp = F.pad(x, (pad_w[0], pad_w[1], pad_h[0], pad_h[1]), mode=mode)
        Hp, Wp = xp.shape[-2:]
        sh, sw = max(1, int(th * (1 - self.tile_overlap))), max(1, int(tw * (1 - self.tile_overlap)))
        ys, xs = tile_starts(Hp, th, sh), tile_starts(Wp, tw, sw)
        weight = torch.from_numpy(gaussian_weight((th, tw))).to(self.device)
        acc = torch.zeros((self.num_classes, Hp, Wp), device=self.device)
        norm = torch.zeros((1, Hp, Wp), device=self.device)
        coords = [(y, x0) for y in ys for x0 in xs]
        presence_max = None
        for i in range(0, len(coords), self.batch_size):
            chunk = coords[i:i + self.batch_size]
            batch = torch.cat([xp[..., y:y + th, x0:x0 + tw] for y, x0 in chunk], dim=0)
            probs, pres = self.forward_batch(batch, tta)
            for (y, x0), p in zip(chunk, probs):
                acc[:, y:y + th, x0:x0 + tw] += p * weight
                norm[:, y:y + th, x0:x0 + tw] += weight
            if pres is not None:
                m = pres.max()
                presence_max = m if presence_max is None else torch.maximum(presence_max, m)
        out = (acc / norm)[:, pad_h[0]:pad_h[0] + H, pad_w[0]:pad_w[0] + W]
        return out, presence_max

    def sliding_window(self, x, tta: str | None = None):
        """Overlap-tile probabilities of one preprocessed image x (1,C,H,W) tensor with mirrored borders.

        Returns ``(probs (K,H,W) tensor, presence max over tiles or None)``.
        """
        return self._sliding_window(x, tta)

    def _needs_tiling(self, hw: tuple[int, ...]) -> bool:
        """True when an (h, w) input is larger than the model's tile (sliding window needed)."""
        if not self.tile:
            return False
        return hw[0] > self.tile[0] or hw[1] > self.tile[1]

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """float32 (C,H,W) in [0,1] → model input float32 (C',h,w) per the card."""
        return model_input(img, self.pre)

    def predict_probs(self, img: np.ndarray, tta: str | None = None) -> tuple[np.ndarray, float | None]:
        """Probabilities float32 (K,H,W) at the original size, and the presence probability."""
        pred = self.predict_raw(img, tta=tta)
        return pred.probs, pred.presence

    def predict_raw(self, img: np.ndarray, tta: str | None = None) -> Prediction:
        """One image's probabilities, presence and gate probability, not post-processed.

        For callers that keep the probabilities and make masks with :func:`finish_mask` (a page
        that re-applies post-processing when a slider moves). The result's ``mask`` is left empty
        (zeros) and ``gated`` False: ``finish_mask(out.probs, post, presence=out.presence,
        gate=out.gate, gate_threshold=self.gate_threshold)`` is ``predict(img, post).mask``.
        """
        return self.predict_many([img], tta=tta, _probs_only=True)[0]

    def predict(self, img: np.ndarray, post: PostProcessConfig | None = None, tta: str | None = None,
                _probs_only: bool = False) -> Prediction:
        """Predict one image (float32 (C,H,W) in [0,1]); post=None uses the card's defaults,
        tta=None the predictor's default TTA mode."""
        return self.predict_many([img], post=post, tta=tta, _probs_only=_probs_only)[0]

    def predict_many(self, images: Sequence[np.ndarray], post: PostProcessConfig | None = None,
                     progress: ProgressFn | None = None, tta: str | None = None,
                     _probs_only: bool = False) -> list[Prediction]:
        """Predict several images; same-size inputs share forward passes (``batch_size``)."""
        import torch

        report = as_progress(progress)
        t0 = time.perf_counter()
        chw = [as_chw(im) for im in images]
        prepped = [(i, preprocess_image(x, self.pre), x.shape[1:]) for i, x in enumerate(chw)]
        gates = self.gate_probs(chw)
        t_pre = (time.perf_counter() - t0) / max(1, len(images))
        results: list[Prediction | None] = [None] * len(images)
        done = 0
        # group by preprocessed shape so batches stack
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, tuple[int, int]]]] = {}
        for item in prepped:
            groups.setdefault(item[1].shape, []).append(item)
        for shape, items in groups.items():
            tiled = self._needs_tiling(shape[1:])
            step = 1 if tiled else self.batch_size
            for j in range(0, len(items), step):
                chunk = items[j:j + step]
                t1 = time.perf_counter()
                x = torch.from_numpy(np.stack([c[1] for c in chunk]))
                if tiled:
                    p, pr = self._sliding_window(x, tta)
                    probs_b, pres_b = p[None], (pr.reshape(1) if pr is not None else None)
                else:
                    probs_b, pres_b = self.forward_batch(x, tta)
                probs_np = probs_b.float().cpu().numpy()
                pres_np = pres_b.float().cpu().numpy() if pres_b is not None else None
                t_model = (time.perf_counter() - t1) / len(chunk)
                for k, (idx, _, hw) in enumerate(chunk):
                    t2 = time.perf_counter()
                    probs = restore_size(probs_np[k], (int(hw[0]), int(hw[1])), self.pre)
                    t3 = time.perf_counter()
                    presence = float(pres_np[k]) if pres_np is not None else None
                    mask, gated = ((np.zeros(probs.shape[1:], np.uint8), False) if _probs_only
                                   else self._post_mask(probs, post, presence, gates[idx]))
                    t4 = time.perf_counter()
                    results[idx] = Prediction(mask, probs, presence, {
                        "preprocess": t_pre, "model": t_model, "restore": t3 - t2, "postprocess": t4 - t3},
                        gates[idx], gated)
                    done += 1
                    report(done, len(images), "predicting")
        return [r for r in results if r is not None]

    # -- files and datasets ------------------------------------------------------------------
    def predict_files(self, paths: Sequence[str | Path], post: PostProcessConfig | None = None,
                      num_workers: int | None = None, progress: ProgressFn | None = None,
                      tta: str | None = None) -> Iterator[tuple[Path, Prediction | WorkbenchError]]:
        """Read, preprocess (in DataLoader workers) and predict many files, in order.

        Yields ``(path, Prediction)`` or ``(path, WorkbenchError)`` for a file that cannot be
        read: a bad file never stops the run.
        """
        import torch
        from torch.utils.data import DataLoader

        report = as_progress(progress)
        files = [Path(p) for p in paths]
        ds = _FileDataset(files, self.pre, self.gate.card.preprocess if self.gate is not None else None)
        workers = _default_workers() if num_workers is None else num_workers
        # a map-style dataset by duck typing (len + getitem): torch is not imported at module level
        loader: DataLoader[dict[str, Any]] = DataLoader(cast("TorchDataset[dict[str, Any]]", ds),
                                                        batch_size=self.batch_size, num_workers=workers,
                                                        collate_fn=_collate_list,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        done = 0
        for batch in loader:
            good = [b for b in batch if b["error"] is None]
            outputs: dict[int, Prediction] = {}
            by_shape: dict[tuple[int, ...], list[dict[str, Any]]] = {}
            if self.gate is not None and good:
                for b, g in zip(good, self.gate.predict_proba_inputs([b["g"] for b in good])):
                    b["gate"] = float(g)
            for b in good:
                by_shape.setdefault(tuple(b["x"].shape), []).append(b)
            for shape, items in by_shape.items():
                if self._needs_tiling(shape[1:]):
                    for b in items:
                        p, pr = self._sliding_window(torch.from_numpy(b["x"][None]), tta)
                        outputs[b["index"]] = self._finish(p.cpu().numpy(), None if pr is None else float(pr), b, post)
                    continue
                probs_b, pres_b = self.forward_batch(torch.from_numpy(np.stack([b["x"] for b in items])), tta)
                probs_np = probs_b.float().cpu().numpy()
                pres_np = pres_b.float().cpu().numpy() if pres_b is not None else None
                for k, b in enumerate(items):
                    outputs[b["index"]] = self._finish(probs_np[k], None if pres_np is None else float(pres_np[k]),
                                                       b, post)
            for b in batch:
                done += 1
                report(done, len(files), "predicting")
                yield files[b["index"]], (outputs[b["index"]] if b["error"] is None else b["error"])

    def _finish(self, probs_small: np.ndarray, presence: float | None, item: dict[str, Any],
                post: PostProcessConfig | None) -> Prediction:
        probs = restore_size(probs_small, item["hw"], self.pre)
        gate = item.get("gate")
        mask, gated = self._post_mask(probs, post, presence, gate)
        return Prediction(mask, probs, presence, {}, gate, gated)

    def predict_cases(self, dataset: Dataset, cases: Iterable[str | Case] | None = None,
                      post: PostProcessConfig | None = None, num_workers: int | None = None,
                      progress: ProgressFn | None = None,
                      tta: str | None = None) -> Iterator[tuple[Case, Prediction | WorkbenchError]]:
        """Predict cases of an :class:`engine.datasets.Dataset` (default: all); yields ``(case, result)``."""
        picked = list(dataset.cases if cases is None else [dataset.case(c) for c in cases])
        it = self.predict_files([c.image_path for c in picked], post=post, num_workers=num_workers, progress=progress,
                                tta=tta)
        for case, (_, result) in zip(picked, it):
            yield case, result


def _default_workers() -> int:
    n = os.cpu_count() or 1
    return 0 if n <= 2 else min(4, n - 1)


class _FileDataset:
    """torch Dataset: path → {"x": model input, "hw": original size, "index", "error"}."""

    def __init__(self, paths: Sequence[Path], pre: Preprocess, gate_pre: Preprocess | None = None):
        self.paths = list(paths)
        self.pre = pre
        self.gate_pre = gate_pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from engine.io import load_image

        try:
            img, _ = load_image(self.paths[i])
            item = {"x": preprocess_image(img, self.pre), "hw": tuple(img.shape[1:]), "index": i, "error": None}
            if self.gate_pre is not None:
                item["g"] = preprocess_image(img, self.gate_pre)
            return item
        except WorkbenchError as exc:
            return {"x": None, "hw": None, "index": i, "error": exc}


def _collate_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def sliding_window_plan(hw: tuple[int, int], tile: tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """Tile origins used for an image of size ``hw`` (after mirrored padding); for tests/UI."""
    sh, sw = max(1, int(tile[0] * (1 - overlap))), max(1, int(tile[1] * (1 - overlap)))
    return [(y, x) for y in tile_starts(hw[0], tile[0], sh) for x in tile_starts(hw[1], tile[1], sw)]


__all__ = ["Predictor", "Prediction", "select_device", "gaussian_weight", "tile_starts", "sliding_window_plan",
           "plan_geometry", "TTA_MODES", "check_tta", "finish_mask", "gate_rejects"]
