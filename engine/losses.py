"""Segmentation and presence losses, U-Net border weight maps, class-balancing weights.

Every segmentation loss is called as ``loss(logits, target, weight_map=None)`` with
``logits`` float (N,K,H,W) (K includes background, softmax over dim 1), ``target`` integer
(N,H,W) with class ids 0..K-1, and an optional ``weight_map`` float (N,H,W). Only
``border_ce`` uses ``weight_map`` (``loss.uses_weight_map`` is True); the others ignore it, so
a training loop may pass it to any loss.

Registered names (:func:`build_loss`):

- ``dice``: soft Dice, ``1 - mean_c (2|P_c G_c| + s) / (|P_c| + |G_c| + s)`` over the foreground
  classes 1..K-1 (``include_background=True`` adds class 0), sums over the whole batch
  (``per_image=True``: per image, then averaged). The smooth term ``s`` (default 1) makes an
  empty target with an empty prediction a perfect score (no NaN).
- ``bce`` (alias ``ce``): cross-entropy over the K softmax classes. For K = 2 this IS binary
  cross-entropy: ``softmax(l)[1] = sigmoid(l1 - l0)``, so the two-logit CE equals BCE on the
  logit difference. Optional ``class_weights`` (length K).
- ``bce_dice``: ``ce_weight * bce + dice_weight * dice`` (the pneumothorax study's BCE + Dice).
- ``focal``: ``mean(alpha_t (1 - p_t)**gamma * -log p_t)`` (Lin et al. 2017), gamma = 2.
- ``tversky``: ``1 - (TP + s) / (TP + alpha FP + beta FN + s)`` per foreground class, alpha = 0.3,
  beta = 0.7 (penalises misses more); ``gamma != 1`` gives the focal Tversky loss. alpha = beta =
  0.5 equals ``dice`` (exactly when smooth = 0; the smooth term enters Dice as s/2).
- ``mse``: mean squared error between softmax probabilities and the one-hot target, as in the
  residual dilated-FCN variant.
- ``border_ce``: U-Net's weighted cross-entropy ``mean(w(x) * -log p_{target}(x))`` with
  ``w`` from :func:`unet_weight_map`; when no ``weight_map`` is passed it is computed from the
  target on the CPU (cached by :class:`WeightMapCache`). Computing the maps in the data loader
  and passing them is faster.

Presence: :class:`PresenceLoss` (BCE with logits, ``pos_weight``) and :func:`combined_loss`,
which adds ``presence_weight * PresenceLoss`` to a segmentation loss for models built with
``presence_head=True``.

Example:
    >>> loss_fn = build_loss("bce_dice")
    >>> logits = torch.randn(2, 2, 64, 64, requires_grad=True)
    >>> target = torch.zeros(2, 64, 64, dtype=torch.long)
    >>> loss_fn(logits, target).backward()
    >>> both = combined_loss(build_loss("dice"), presence_weight=0.5, pos_weight=2.0)
    >>> # both({"mask": logits, "presence": p}, target)["loss"].backward()
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from engine.errors import ConfigError, MaskError, unknown_name
from engine.fsutil import atomic_path

ClassWeightsArg = Literal["balanced"] | Mapping[int, float] | None

# ------------------------------------------------------------------------------ input handling


def _check(logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
    """Validate shapes/dtypes/values; return ``target`` as int64."""
    if logits.ndim != 4:
        raise ConfigError(f"loss expects logits of shape (N,K,H,W), got {tuple(logits.shape)}")
    n, k, h, w = logits.shape
    if k < 2:
        raise ConfigError(f"loss expects K >= 2 logits (background included), got K={k}",
                          hint="build the model with num_classes >= 2; binary tasks use K = 2")
    if target.shape != (n, h, w):
        raise MaskError(f"target shape {tuple(target.shape)} does not match logits (N,H,W) = {(n, h, w)}",
                        hint="pass integer class-id masks of shape (N,H,W), not one-hot or (N,1,H,W)")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise MaskError(f"target must hold integer class ids, got dtype {target.dtype}",
                        hint="convert masks with .long(); probabilities are not targets")
    target = target.long()
    if target.numel():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= k:
            raise MaskError(f"target holds class id {hi if hi >= k else lo}, but the model outputs K={k} classes",
                            hint="class ids must be 0..K-1 (0 = background); check num_classes and the label map")
    if weight_map is not None and weight_map.shape != (n, h, w):
        raise MaskError(f"weight_map shape {tuple(weight_map.shape)} does not match (N,H,W) = {(n, h, w)}")
    return target


def _one_hot(target: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(target, k).permute(0, 3, 1, 2).to(dtype)


def _weights_tensor(value: Any, name: str) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 0 or bool((t < 0).any()) or not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name} must be non-negative finite numbers, got {value!r}")
    return t


class SegLoss(nn.Module):
    """Base class: ``forward(logits (N,K,H,W), target (N,H,W) int, weight_map=None) -> scalar``."""

    uses_weight_map: ClassVar[bool] = False

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None = None) -> torch.Tensor:
        target = _check(logits, target, weight_map)
        return self.compute(logits.float(), target, weight_map)

    def compute(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class _ClassWeighted(SegLoss):
    class_weights: torch.Tensor | None  # registered buffer (non-persistent)

    def __init__(self, class_weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        w = _weights_tensor(class_weights, "class_weights")
        self.register_buffer("class_weights", w, persistent=False)

    def _cw(self, logits: torch.Tensor) -> torch.Tensor | None:
        w = self.class_weights
        if w is None:
            return None
        if w.numel() != logits.shape[1]:
            raise ConfigError(f"class_weights has {w.numel()} values but the model outputs K={logits.shape[1]}",
                              hint="give one weight per class, background first")
        return w.to(logits.device)


# ----------------------------------------------------------------------------------- the losses


class CrossEntropyLoss(_ClassWeighted):
    """Softmax cross-entropy over K classes (== binary cross-entropy for K = 2)."""

    def compute(self, logits, target, weight_map):
        return F.cross_entropy(logits, target, weight=self._cw(logits))


def _soft_overlap(logits: torch.Tensor, target: torch.Tensor, per_image: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(TP, FP, FN) per class: shape (K,) or (N,K) when per_image."""
    probs = torch.softmax(logits, dim=1)
    onehot = _one_hot(target, logits.shape[1], probs.dtype)
    dims = (2, 3) if per_image else (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    return tp, fp, fn


class DiceLoss(SegLoss):
    """Soft Dice loss over foreground classes (or all with ``include_background``)."""

    def __init__(self, smooth: float = 1.0, include_background: bool = False, per_image: bool = False):
        super().__init__()
        if smooth < 0:
            raise ConfigError(f"smooth must be >= 0, got {smooth}")
        self.smooth, self.include_background, self.per_image = float(smooth), include_background, per_image

    def compute(self, logits, target, weight_map):
        tp, fp, fn = _soft_overlap(logits, target, self.per_image)
        dice = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth).clamp_min(1e-7)
        start = 0 if self.include_background else 1
        return 1.0 - dice[..., start:].mean()


class TverskyLoss(SegLoss):
    """Tversky loss ``(1 - TI) ** gamma``, TI = (TP+s)/(TP + alpha FP + beta FN + s)."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0, smooth: float = 1.0,
                 include_background: bool = False, per_image: bool = False):
        super().__init__()
        if alpha < 0 or beta < 0 or alpha + beta <= 0 or gamma <= 0 or smooth < 0:
            raise ConfigError(f"tversky needs alpha, beta >= 0 (not both 0), gamma > 0, smooth >= 0; "
                              f"got alpha={alpha}, beta={beta}, gamma={gamma}, smooth={smooth}")
        self.alpha, self.beta, self.gamma, self.smooth = float(alpha), float(beta), float(gamma), float(smooth)
        self.include_background, self.per_image = include_background, per_image

    def compute(self, logits, target, weight_map):
        tp, fp, fn = _soft_overlap(logits, target, self.per_image)
        ti = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(1e-7)
        start = 0 if self.include_background else 1
        loss = (1.0 - ti[..., start:]).clamp_min(0)
        if self.gamma != 1.0:
            loss = loss ** self.gamma
        return loss.mean()


class BCEDiceLoss(_ClassWeighted):
    """``ce_weight * cross-entropy + dice_weight * soft Dice``."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 include_background: bool = False, per_image: bool = False,
                 class_weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__(class_weights)
        self.ce_weight, self.dice_weight = float(ce_weight), float(dice_weight)
        self.dice = DiceLoss(smooth, include_background, per_image)

    def compute(self, logits, target, weight_map):
        ce = F.cross_entropy(logits, target, weight=self._cw(logits))
        return self.ce_weight * ce + self.dice_weight * self.dice.compute(logits, target, None)


class FocalLoss(SegLoss):
    """Multi-class focal loss ``alpha_t * (1 - p_t)**gamma * CE``, averaged over pixels."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("alpha", _weights_tensor(alpha, "alpha"), persistent=False)

    def compute(self, logits, target, weight_map):
        logp = torch.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logp.exp()).clamp_min(0) ** self.gamma) * logp
        if self.alpha is not None:
            if self.alpha.numel() != logits.shape[1]:
                raise ConfigError(f"focal alpha has {self.alpha.numel()} values, K={logits.shape[1]}",
                                  hint="give one alpha per class, background first")
            loss = loss * self.alpha.to(logits.device)[target]
        return loss.mean()


class MSELoss(SegLoss):
    """Mean squared error between softmax probabilities and the one-hot target."""

    def compute(self, logits, target, weight_map):
        probs = torch.softmax(logits, dim=1)
        return F.mse_loss(probs, _one_hot(target, logits.shape[1], probs.dtype))


class BorderWeightedCELoss(SegLoss):
    """U-Net loss: cross-entropy weighted per pixel by ``w(x)`` (:func:`unet_weight_map`)."""

    uses_weight_map = True

    def __init__(self, w0: float = 10.0, sigma: float = 5.0, class_weights: ClassWeightsArg = "balanced",
                 cache_mb: float = 64.0):
        super().__init__()
        self.cache = WeightMapCache(w0=w0, sigma=sigma, class_weights=class_weights,
                                    max_bytes=int(cache_mb * 2 ** 20))

    def compute(self, logits, target, weight_map):
        if weight_map is None:
            weight_map = torch.from_numpy(self.cache.batch(target.detach().cpu().numpy()))
        ce = F.cross_entropy(logits, target, reduction="none")
        return (ce * weight_map.to(device=ce.device, dtype=ce.dtype)).mean()


LOSSES: dict[str, type[SegLoss]] = {
    "dice": DiceLoss,
    "bce": CrossEntropyLoss,
    "ce": CrossEntropyLoss,
    "bce_dice": BCEDiceLoss,
    "focal": FocalLoss,
    "tversky": TverskyLoss,
    "mse": MSELoss,
    "border_ce": BorderWeightedCELoss,
}


def list_losses() -> list[str]:
    """Registered loss names, sorted (``ce`` is an alias of ``bce``)."""
    return sorted(LOSSES)


def loss_options(name: str) -> dict[str, Any]:
    """Keyword options of a loss and their defaults, e.g. for a settings form."""
    cls = _loss_class(name)
    return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self"}


def _loss_class(name: str) -> type[SegLoss]:
    key = str(name).strip().lower()
    if key not in LOSSES:
        raise unknown_name("loss", str(name), list_losses())
    return LOSSES[key]


def build_loss(name: str, **kwargs: Any) -> SegLoss:
    """Build a registered segmentation loss.

    Args:
        name: one of :func:`list_losses`.
        **kwargs: options of that loss (see :func:`loss_options`); unknown ones raise ConfigError.

    Example:
        >>> loss = build_loss("tversky", alpha=0.3, beta=0.7)
        >>> float(loss(torch.zeros(1, 2, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long))) >= 0
        True
    """
    cls = _loss_class(name)
    valid = loss_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"loss '{name}' has no option(s) {', '.join(unknown)}",
                          hint=f"valid options: {', '.join(sorted(valid)) or 'none'}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options for loss '{name}': {exc}") from None


# ---------------------------------------------------------------------------------- presence


class PresenceLoss(nn.Module):
    """``BCEWithLogits(pos_weight)`` for image-level presence: ``(logits (N,1)|(N,), present (N,)) -> scalar``."""

    pos_weight: torch.Tensor | None  # registered buffer (non-persistent)

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        if pos_weight is not None and not (pos_weight > 0 and math.isfinite(pos_weight)):
            raise ConfigError(f"pos_weight must be a positive number, got {pos_weight}",
                              hint="use presence_pos_weight(labels) = n_negative / n_positive")
        pw = None if pos_weight is None else torch.tensor([float(pos_weight)])
        self.register_buffer("pos_weight", pw, persistent=False)

    def forward(self, logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        logits = logits.float().reshape(-1)
        present = present.to(device=logits.device, dtype=logits.dtype).reshape(-1)
        if logits.shape != present.shape:
            raise ConfigError(f"presence logits ({logits.numel()}) and labels ({present.numel()}) differ in count")
        pw = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, present, pos_weight=pw)


class SegPresenceLoss(nn.Module):
    """Segmentation loss + ``presence_weight`` x weighted presence BCE, on a model output dict.

    ``forward(output, mask, present=None, weight_map=None) -> {"loss", "seg"[, "presence"]}``:
    ``output`` is the model's dict (``"mask"`` (N,K,H,W), ``"presence"`` (N,1)), ``mask`` int
    (N,H,W), ``present`` float (N,) (derived from ``mask`` — any foreground pixel — when None).
    ``"loss"`` is the total to back-propagate; ``"seg"``/``"presence"`` are detached parts for logs.
    """

    def __init__(self, seg_loss: nn.Module | str, presence_weight: float = 1.0, pos_weight: float | None = None):
        super().__init__()
        if presence_weight < 0:
            raise ConfigError(f"presence_weight must be >= 0, got {presence_weight}")
        self.seg_loss = build_loss(seg_loss) if isinstance(seg_loss, str) else seg_loss
        self.presence_weight = float(presence_weight)
        self.presence_loss = PresenceLoss(pos_weight)

    @property
    def uses_weight_map(self) -> bool:
        return bool(getattr(self.seg_loss, "uses_weight_map", False))

    def forward(self, output: Mapping[str, torch.Tensor], mask: torch.Tensor,
                present: torch.Tensor | None = None,
                weight_map: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        seg = self.seg_loss(output["mask"], mask, weight_map)
        result = {"seg": seg.detach()}
        total = seg
        if self.presence_weight > 0:
            if "presence" not in output:
                raise ConfigError("presence_weight > 0 but the model has no presence head",
                                  hint="build the model with presence_head=True, or set presence_weight=0")
            if present is None:
                present = (mask.reshape(mask.shape[0], -1) > 0).any(dim=1)
            p = self.presence_loss(output["presence"], present)
            total = total + self.presence_weight * p
            result["presence"] = p.detach()
        result["loss"] = total
        return result


def combined_loss(seg_loss: nn.Module | str, presence_weight: float = 1.0,
                  pos_weight: float | None = None) -> SegPresenceLoss:
    """Segmentation loss plus ``presence_weight`` x ``BCEWithLogits(pos_weight)`` on ``"presence"``.

    Example:
        >>> crit = combined_loss("bce_dice", presence_weight=0.5, pos_weight=presence_pos_weight([0, 0, 1]))
        >>> # parts = crit(net(x), mask); parts["loss"].backward()
    """
    return SegPresenceLoss(seg_loss, presence_weight, pos_weight)


def presence_pos_weight(labels: Sequence[int | bool] | np.ndarray) -> float:
    """``n_negative / n_positive`` for ``BCEWithLogitsLoss(pos_weight=...)``.

    Returns 1.0 when either class is absent (the weighting is undefined there).

    Example:
        >>> presence_pos_weight([1, 0, 0, 0])
        3.0
    """
    arr = np.asarray(labels).reshape(-1).astype(bool)
    n_pos = int(arr.sum())
    n_neg = int(arr.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return 1.0
    return n_neg / n_pos


def inverse_frequency_class_weights(counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Class weights ``total / (K_present * count_c)`` (float32, shape (K,)), mean 1 over pixels.

    ``counts[c]`` = number of pixels (or images) of class c. Classes with count 0 get weight 0
    (there is nothing to weight). All-zero counts give all ones.

    Example:
        >>> inverse_frequency_class_weights([80, 20]).tolist()
        [0.625, 2.5]
    """
    c = torch.as_tensor(np.asarray(counts, dtype=np.float64)).reshape(-1)
    if c.numel() == 0 or bool((c < 0).any()):
        raise ConfigError(f"class counts must be non-negative, got {list(c.tolist())}")
    total = c.sum()
    present = c > 0
    if total == 0:
        return torch.ones_like(c, dtype=torch.float32)
    w = torch.zeros_like(c)
    w[present] = total / (int(present.sum()) * c[present])
    return w.to(torch.float32)


# --------------------------------------------------------------------------- U-Net weight maps


def class_weight_map(mask: np.ndarray, class_weights: ClassWeightsArg = "balanced") -> np.ndarray:
    """``w_c(x)`` float32 (H,W): "balanced" = ``n_pixels / (n_classes_present * n_pixels_of_c)``,
    a dict ``{class_id: weight}`` (missing ids weigh 1), or None = all ones."""
    m = np.asarray(mask)
    if class_weights is None:
        return np.ones(m.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ConfigError(f"class_weights must be 'balanced', a dict or None, got {class_weights!r}")
        ids, counts = np.unique(m, return_counts=True)
        lut = {int(i): m.size / (len(ids) * int(n)) for i, n in zip(ids, counts)}
    elif isinstance(class_weights, Mapping):
        lut = {int(k): float(v) for k, v in class_weights.items()}
        ids = np.unique(m)
    else:
        raise ConfigError(f"class_weights must be 'balanced', a dict or None, got {type(class_weights).__name__}")
    out = np.ones(m.shape, np.float32)
    for i in ids:
        if int(i) in lut:
            out[m == i] = lut[int(i)]
    return out


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Objects = 8-connected components of each foreground class, labelled 1..n (int32 (H,W))."""
    m = np.asarray(mask)
    labels = np.zeros(m.shape, np.int32)
    n = 0
    structure = np.ones((3, 3), bool)
    for c in np.unique(m):
        if c == 0:
            continue
        lab, k = ndimage.label(m == c, structure=structure)
        labels[lab > 0] = lab[lab > 0] + n
        n += k
    return labels, n


def _border_term(labels: np.ndarray, n: int, w0: float, sigma: float, tol: float) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` with d1, d2 the two smallest object distances.

    Cost is bounded by computing each object's distance transform only in its bounding box grown
    by ``R = sigma * sqrt(2 ln(w0 / tol))``: where ``d1 + d2 > R`` the term is below ``tol`` and
    is set to 0, and where ``d1 + d2 <= R`` both objects lie within R of the pixel, hence inside
    both windows, so the value there is exact. Memory stays at two (H,W) arrays.
    """
    h, w = labels.shape
    radius = sigma * math.sqrt(2.0 * math.log(w0 / tol))
    margin = int(math.ceil(radius)) + 1
    d1 = np.full(labels.shape, np.inf, np.float64)
    d2 = np.full(labels.shape, np.inf, np.float64)
    for idx, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        r0, r1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, h)
        c0, c1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, w)
        window = (slice(r0, r1), slice(c0, c1))
        dist = ndimage.distance_transform_edt(labels[window] != idx + 1)
        a, b = d1[window], d2[window]
        d2[window] = np.minimum(b, np.maximum(a, dist))
        d1[window] = np.minimum(a, dist)
    total = d1 + d2
    out = np.zeros(labels.shape, np.float64)
    near = total <= radius
    out[near] = w0 * np.exp(-(total[near] ** 2) / (2.0 * sigma ** 2))
    return out


def unet_weight_map(mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                    class_weights: ClassWeightsArg = "balanced", tol: float = 1e-6) -> np.ndarray:
    """U-Net pixel weights ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))``.

    Args:
        mask: int (H,W) class ids, 0 = background.
        w0, sigma: border weight and width in pixels (paper: 10 and ~5).
        class_weights: ``w_c`` (see :func:`class_weight_map`), default "balanced".
        tol: border-term values below this are dropped (bounds the cost, see below).

    Returns:
        float32 (H,W).

    Choices (documented): objects are the 8-connected components of each foreground class;
    d1/d2 are Euclidean distances to the nearest and second-nearest object; the border term is
    added to BACKGROUND pixels only (the paper's separation borders are the background gaps
    between touching objects); with fewer than 2 objects there is no border term, so ``w = w_c``.
    Each object's distance transform runs only in its bounding box grown by
    ``sigma * sqrt(2 ln(w0/tol))`` (~28 px for the defaults), which is exact wherever the border
    term is >= ``tol``.

    Example:
        >>> m = np.zeros((32, 32), np.uint8); m[10:13, 5:8] = 1; m[10:13, 15:18] = 1
        >>> w = unet_weight_map(m, class_weights=None)
        >>> bool(w[11, 11] > w[0, 0] == 1.0)
        True
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"unet_weight_map needs a 2-D (H,W) mask, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer) and m.dtype != bool:
        raise MaskError(f"unet_weight_map needs an integer mask, got dtype {m.dtype}")
    if sigma <= 0:
        raise ConfigError(f"sigma must be > 0, got {sigma}")
    m = m.astype(np.int64, copy=False)
    weights = class_weight_map(m, class_weights).astype(np.float64)
    if w0 > tol:
        labels, n = label_objects(m)
        if n >= 2:
            border = _border_term(labels, n, float(w0), float(sigma), float(tol))
            border[m != 0] = 0.0
            weights += border
    return weights.astype(np.float32)


class WeightMapCache:
    """Compute each mask's U-Net weight map once, keep it in a memory-bounded LRU cache.

    Key: SHA-1 of the parameters, shape and mask bytes (as int64, so a uint8 and an int64 copy
    of one mask share the entry). Returned arrays are read-only views of the cached ones. With
    ``folder`` set, maps are also saved as ``<key>.npy`` (atomically) and read back in a later run.

    Example:
        >>> cache = WeightMapCache(w0=10, sigma=5, folder=None)
        >>> w = cache.get(mask)            # doctest: +SKIP
        >>> cache.get(mask) is w           # second call: no recomputation  # doctest: +SKIP
        True
    """

    def __init__(self, w0: float = 10.0, sigma: float = 5.0, class_weights: ClassWeightsArg = "balanced",
                 max_bytes: int = 256 * 2 ** 20, folder: str | Path | None = None):
        self.w0, self.sigma = float(w0), float(sigma)
        self.class_weights = class_weights
        if isinstance(class_weights, Mapping):
            self.class_weights = {int(k): float(v) for k, v in class_weights.items()}
        self.max_bytes = int(max_bytes)
        self.folder = Path(folder) if folder is not None else None
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "disk_hits": 0, "computed": 0}
        params = {"w0": self.w0, "sigma": self.sigma, "class_weights": self.class_weights, "v": 1}
        self._params = json.dumps(params, sort_keys=True, default=str).encode()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return self._bytes

    def key(self, mask: np.ndarray) -> str:
        m = np.ascontiguousarray(np.asarray(mask), dtype=np.int64)
        h = hashlib.sha1(self._params)
        h.update(str(m.shape).encode())
        h.update(m.tobytes())
        return h.hexdigest()

    def get(self, mask: np.ndarray) -> np.ndarray:
        """Weight map float32 (H,W) of ``mask`` (int (H,W)), read-only."""
        key = self.key(mask)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.stats["hits"] += 1
                return hit
        arr = self._read_disk(key, np.asarray(mask).shape)
        if arr is None:
            arr = unet_weight_map(np.asarray(mask), self.w0, self.sigma, self.class_weights)
            self.stats["computed"] += 1
            self._write_disk(key, arr)
        else:
            self.stats["disk_hits"] += 1
        arr.flags.writeable = False
        self._put(key, arr)
        return arr

    def batch(self, masks: np.ndarray) -> np.ndarray:
        """Weight maps float32 (N,H,W) for int masks (N,H,W)."""
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise MaskError(f"expected masks of shape (N,H,W), got {masks.shape}")
        return np.stack([self.get(m) for m in masks]) if len(masks) else np.zeros(masks.shape, np.float32)

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk stay)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def _put(self, key: str, arr: np.ndarray) -> None:
        with self._lock:
            if key in self._items or arr.nbytes > self.max_bytes:
                return
            self._items[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.npy"

    def _read_disk(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # corrupt or truncated: recompute and overwrite
        if arr.shape != tuple(shape) or arr.dtype != np.float32:
            return None
        return arr

    def _write_disk(self, key: str, arr: np.ndarray) -> None:
        path = self._path(key)
        if path is None:
            return
        with atomic_path(path) as tmp:
            np.save(tmp, arr, allow_pickle=False)
