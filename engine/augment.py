"""Preprocessing (stored with the model) and training augmentation (albumentations 2.0.8).

Canonical order, identical for training and inference, so a model sees the same kind of input:

    channels (:func:`adapt_channels`) → median de-speckling (``Preprocess.median_filter``)
    → geometry (``Preprocess.resize_policy``) → [training only: :func:`apply_transform`]
    → intensity normalisation (:func:`normalize_image`: optional CLAHE, then ``normalize``)

**Cross-site normalisation.** Two options stored in the card make a model less sensitive to how
another hospital's scanner and software render intensities: ``clahe`` (contrast-limited adaptive
histogram equalisation on the [0, 1] model-size image, clip limit ``clahe``, ``clahe_tiles`` ×
``clahe_tiles`` tiles) and ``normalize="standardize"`` (each image and channel to zero mean and
unit standard deviation). Both run *after* augmentation, at training and inference alike, so
the contrast/gamma/blur augmentations simulate other sites and the normalisation absorbs them.

Augmentation runs *before* normalisation because brightness/contrast/gamma/noise assume images in
[0, 1]; :func:`preprocess_pair` takes ``normalize=False`` for that. Predictions are brought back to
the input's original size with :func:`restore_size` (bilinear, for probabilities) or
:func:`restore_mask` (nearest, for labels), which invert the geometry exactly:

- ``"resize"``: plain resize to ``size``; inverse = resize back to the original size.
- ``"letterbox"``: keep the aspect ratio, scale so the image fits inside ``size``, pad the rest
  with 0 (centred); inverse = crop the scaled region (see :func:`plan_geometry`), resize back.
- ``"pad"``: no resizing; reflect-pad (centred) to a multiple of ``pad_multiple`` (32 = five
  poolings), for tiled / overlap-tile inference as in the U-Net paper; ``size`` is not used;
  inverse = crop. Image and mask are both reflected, so mirrored anatomy keeps its labels.

Images are resized with INTER_AREA when shrinking (anti-aliasing) and bilinear otherwise; masks
with ``cv2.INTER_NEAREST_EXACT`` (no half-pixel shift, no new label values).

**Augmentation** (:func:`build_train_transform`): every geometric transform uses nearest-neighbour
interpolation for the mask (also forced at ``Compose`` level), so distortions (elastic, grid,
optical) never invent label values; intensity transforms are albumentations image-only transforms,
so they never touch the mask. Border fill is 0 (= background) for ``border="constant"``.

**Seeding.** ``build_train_transform(aug, seed=s)`` passes ``seed`` to ``A.Compose``, which makes
the sequence of augmentations reproducible. A DataLoader with workers copies the transform into
each worker *with the same generator state*, so unless reseeded every worker would apply the same
augmentations; and non-persistent workers are re-created each epoch, replaying the same stream.
The training loop therefore reseeds per worker and epoch::

    def worker_init_fn(worker_id):
        ds = torch.utils.data.get_worker_info().dataset      # dataset.epoch set before each epoch
        reseed_transform(ds.transform, worker_seed(base_seed, worker_id, ds.epoch))

and, with ``num_workers=0``, calls ``reseed_transform(transform, worker_seed(base_seed, 0, epoch))``
at the start of each epoch.

Example:
    >>> import numpy as np
    >>> pre = Preprocess(size=(64, 64), resize_policy="letterbox")
    >>> img = np.random.default_rng(0).random((1, 100, 50), dtype=np.float32)
    >>> x = preprocess_image(img, pre); x.shape
    (1, 64, 64)
    >>> restore_size(np.concatenate([1 - x, x]), (100, 50), pre).shape
    (2, 100, 50)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from engine.config import JsonConfig
from engine.errors import ConfigError, MaskError, ReadError, unknown_name

# cv2 and albumentations are imported lazily: importing engine.augment stays cheap.

__all__ = [
    "AUGMENT_PRESETS",
    "NORMALIZATIONS",
    "RESIZE_POLICIES",
    "AugmentConfig",
    "Geometry",
    "Preprocess",
    "adapt_channels",
    "apply_transform",
    "build_train_transform",
    "median_despeckle",
    "normalize_image",
    "plan_geometry",
    "preprocess_image",
    "preprocess_pair",
    "reseed_transform",
    "restore_mask",
    "restore_size",
    "worker_seed",
]

RESIZE_POLICIES = ("resize", "pad", "letterbox")
NORMALIZATIONS = ("none", "minmax", "meanstd", "standardize")
AUGMENT_PRESETS = ("none", "light", "ultrasound", "xray", "xray-strong", "em")
BORDERS = ("constant", "reflect")

#: ITU-R BT.601 luma weights (R, G, B), as used by PIL "L" and OpenCV's RGB2GRAY.
LUMA_601 = (0.299, 0.587, 0.114)


def _prob(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}",
                          hint=f"set {name} to 0 to switch the transform off")


# --------------------------------------------------------------------------- augmentation config

@dataclass(frozen=True)
class AugmentConfig(JsonConfig):
    """Which training augmentations to apply and how strongly.

    Fields without a suffix are probabilities (0 = off); the others are strengths.

    Attributes:
        hflip, vflip, rotate90: probability of a horizontal flip, vertical flip, random 90° turn
            (rotate90 changes H×W into W×H on non-square images).
        shift_scale_rotate: probability of an affine transform with shift ``±shift_limit`` (fraction
            of the size), scale ``1 ± scale_limit``, rotation ``±rotate_limit`` degrees.
        elastic: probability of an elastic deformation (``elastic_alpha``, ``elastic_sigma`` in px;
            the defaults 120/6 move pixels ~1 px on average, up to ~10 px).
        grid_distortion, optical_distortion: probabilities; strengths ``grid_distort_limit``,
            ``optical_distort_limit``.
        brightness_contrast: probability; ``brightness_limit``, ``contrast_limit``.
        gamma: probability; ``gamma_limit`` in percent (80, 120) = gamma 0.8..1.2.
        gauss_noise: probability; ``noise_std`` = std range as a fraction of the intensity range.
        speckle: probability of multiplicative per-pixel noise ``x * U(1 - l, 1 + l)``
            (``speckle_limit`` = l), a cheap stand-in for ultrasound speckle.
        blur: probability of a Gaussian blur with sigma drawn from ``blur_sigma`` (px): another
            detector's sharpness / a softer reconstruction kernel.
        border: "constant" (fill 0 = background) or "reflect" for geometric transforms.

    Example:
        >>> aug = AugmentConfig.preset("ultrasound")
        >>> aug.vflip, aug.hflip > 0
        (0.0, True)
    """

    hflip: float = 0.0
    vflip: float = 0.0
    rotate90: float = 0.0
    shift_scale_rotate: float = 0.0
    shift_limit: float = 0.0625
    scale_limit: float = 0.1
    rotate_limit: float = 15.0
    elastic: float = 0.0
    elastic_alpha: float = 120.0
    elastic_sigma: float = 6.0
    grid_distortion: float = 0.0
    grid_distort_limit: float = 0.3
    optical_distortion: float = 0.0
    optical_distort_limit: float = 0.05
    brightness_contrast: float = 0.0
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    gamma: float = 0.0
    gamma_limit: tuple[float, float] = (80.0, 120.0)
    gauss_noise: float = 0.0
    noise_std: tuple[float, float] = (0.01, 0.05)
    speckle: float = 0.0
    speckle_limit: float = 0.15
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    border: str = "constant"

    # Probability fields (a plain class attribute, not a dataclass field: it has no annotation).
    _PROBS = ("hflip", "vflip", "rotate90", "shift_scale_rotate", "elastic", "grid_distortion",
              "optical_distortion", "brightness_contrast", "gamma", "gauss_noise", "speckle", "blur")

    def __post_init__(self) -> None:
        for name in self._PROBS:
            _prob(name, getattr(self, name))
        if self.border not in BORDERS:
            raise unknown_name("border mode", self.border, BORDERS)
        for name in ("shift_limit", "scale_limit", "rotate_limit", "elastic_alpha", "elastic_sigma",
                     "grid_distort_limit", "optical_distort_limit", "brightness_limit",
                     "contrast_limit", "speckle_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.scale_limit >= 1 or self.speckle_limit >= 1:
            raise ConfigError("scale_limit and speckle_limit must be below 1",
                              hint="e.g. scale_limit=0.1 scales by 0.9..1.1")
        lo, hi = self.gamma_limit
        if not 0 < lo <= hi:
            raise ConfigError(f"gamma_limit must be (low, high) with 0 < low <= high, got {self.gamma_limit}")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi <= 20:
            raise ConfigError(f"blur_sigma must be (low, high) with 0 < low <= high <= 20 px, got {self.blur_sigma}")
        lo, hi = self.noise_std
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"noise_std must be (low, high) within [0, 1], got {self.noise_std}")

    @property
    def is_identity(self) -> bool:
        """True when no transform can fire."""
        return all(getattr(self, n) == 0 for n in self._PROBS)

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        """A named starting point.

        - ``none``: nothing.
        - ``light``: horizontal flip, small affine, brightness/contrast.
        - ``ultrasound``: horizontal flip (no vertical: skin is always at the top), small affine,
          mild elastic, speckle + Gaussian noise, brightness/contrast/gamma.
        - ``xray``: small affine (±7°), brightness/contrast/gamma, horizontal flip; no vertical
          flip (SIIM winners used horizontal flips only).
        - ``xray-strong``: ``xray`` with wider contrast (±0.35) and gamma (0.6–1.6) ranges, Gaussian
          blur and mild noise: other hospitals' exposure, processing and sharpness (cross-site).
        - ``em``: flips, 90° turns and elastic deformation as in the U-Net paper (Ronneberger et
          al. 2015: shift/rotation invariance + elastic deformations), mild brightness.
        """
        presets: dict[str, dict[str, Any]] = {
            "none": {},
            "light": dict(hflip=0.5, shift_scale_rotate=0.3, shift_limit=0.05, scale_limit=0.05,
                          rotate_limit=10.0, brightness_contrast=0.3),
            "ultrasound": dict(hflip=0.5, shift_scale_rotate=0.5, shift_limit=0.05, scale_limit=0.1,
                               rotate_limit=10.0, elastic=0.25, speckle=0.3, gauss_noise=0.15,
                               brightness_contrast=0.5, gamma=0.3),
            "xray": dict(hflip=0.5, shift_scale_rotate=0.5, shift_limit=0.05, scale_limit=0.1,
                         rotate_limit=7.0, brightness_contrast=0.5, gamma=0.5),
            "xray-strong": dict(hflip=0.5, shift_scale_rotate=0.6, shift_limit=0.06, scale_limit=0.15,
                                rotate_limit=10.0, brightness_contrast=0.7, brightness_limit=0.25,
                                contrast_limit=0.35, gamma=0.6, gamma_limit=(60.0, 160.0), blur=0.3,
                                blur_sigma=(0.3, 1.5), gauss_noise=0.2, noise_std=(0.005, 0.03)),
            "em": dict(hflip=0.5, vflip=0.5, rotate90=0.5, elastic=0.5, elastic_alpha=300.0,
                       elastic_sigma=10.0, brightness_contrast=0.2),
        }
        if name not in presets:
            raise unknown_name("augmentation preset", name, AUGMENT_PRESETS)
        return cls(**presets[name])


def build_train_transform(aug: AugmentConfig, seed: int | None = None):
    """Albumentations pipeline for image + mask (geometric first, then intensity).

    Args:
        aug: which transforms and how strong.
        seed: makes the random sequence reproducible (``A.Compose(seed=...)``); see the module
            docstring for per-worker reseeding.

    Returns:
        ``albumentations.Compose``; call it through :func:`apply_transform`.

    Example:
        >>> import numpy as np
        >>> t = build_train_transform(AugmentConfig.preset("em"), seed=0)
        >>> img, m = apply_transform(t, np.zeros((1, 32, 32), np.float32), np.zeros((32, 32), np.uint8))
        >>> img.shape, m.shape
        ((1, 32, 32), (32, 32))
    """
    import cv2

    A = _albumentations()
    border = cv2.BORDER_CONSTANT if aug.border == "constant" else cv2.BORDER_REFLECT_101
    geo = dict(interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, border_mode=border)
    fill = dict(fill=0, fill_mask=0)
    t: list[Any] = []
    if aug.hflip:
        t.append(A.HorizontalFlip(p=aug.hflip))
    if aug.vflip:
        t.append(A.VerticalFlip(p=aug.vflip))
    if aug.rotate90:
        t.append(A.RandomRotate90(p=aug.rotate90))
    if aug.shift_scale_rotate:
        t.append(A.Affine(scale=(1 - aug.scale_limit, 1 + aug.scale_limit),
                          translate_percent=(-aug.shift_limit, aug.shift_limit),
                          rotate=(-aug.rotate_limit, aug.rotate_limit),
                          p=aug.shift_scale_rotate, **geo, **fill))
    if aug.elastic:
        t.append(A.ElasticTransform(alpha=aug.elastic_alpha, sigma=aug.elastic_sigma,
                                    p=aug.elastic, **geo, **fill))
    if aug.grid_distortion:
        t.append(A.GridDistortion(distort_limit=(-aug.grid_distort_limit, aug.grid_distort_limit),
                                  p=aug.grid_distortion, **geo, **fill))
    if aug.optical_distortion:
        t.append(A.OpticalDistortion(distort_limit=(-aug.optical_distort_limit, aug.optical_distort_limit),
                                     p=aug.optical_distortion, **geo, **fill))
    if aug.brightness_contrast:
        t.append(A.RandomBrightnessContrast(brightness_limit=aug.brightness_limit,
                                            contrast_limit=aug.contrast_limit, p=aug.brightness_contrast))
    if aug.gamma:
        t.append(A.RandomGamma(gamma_limit=tuple(aug.gamma_limit), p=aug.gamma))
    if aug.blur:
        t.append(A.GaussianBlur(blur_limit=0, sigma_limit=tuple(aug.blur_sigma), p=aug.blur))
    if aug.speckle:
        t.append(A.MultiplicativeNoise(multiplier=(1 - aug.speckle_limit, 1 + aug.speckle_limit),
                                       elementwise=True, p=aug.speckle))
    if aug.gauss_noise:
        t.append(A.GaussNoise(std_range=tuple(aug.noise_std), p=aug.gauss_noise))
    return A.Compose(t, seed=seed, mask_interpolation=cv2.INTER_NEAREST)


def _albumentations():
    """Import albumentations without its import-time update check (a network call to PyPI)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def worker_seed(base_seed: int, worker_id: int = 0, epoch: int = 0) -> int:
    """Independent 32-bit seed for (base seed, DataLoader worker, epoch) via ``np.random.SeedSequence``."""
    return int(np.random.SeedSequence([int(base_seed), int(epoch), int(worker_id)]).generate_state(1)[0])


def reseed_transform(transform: Any, seed: int | None) -> None:
    """Reseed an albumentations ``Compose`` (and all its children) in place."""
    transform.set_random_seed(seed)


def apply_transform(transform: Any, img: np.ndarray,
                    mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply an albumentations pipeline to a CHW image and its mask together.

    Args:
        transform: from :func:`build_train_transform` (or any albumentations ``Compose``).
        img: float32 ``(C, H, W)`` in [0, 1].
        mask: integer ``(H, W)`` with values 0..255, or None.

    Returns:
        ``(img, mask)``: float32 ``(C, H', W')`` clipped to [0, 1], and the mask with its input
        dtype (None when no mask was given). H'×W' differs from H×W only after a 90° turn.

    Example:
        >>> import numpy as np
        >>> t = build_train_transform(AugmentConfig(hflip=1.0))
        >>> m = np.zeros((2, 3), np.uint8); m[0, 0] = 1
        >>> apply_transform(t, np.zeros((1, 2, 3), np.float32), m)[1][0].tolist()
        [0, 0, 1]
    """
    x = _as_chw(img)
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
    data: dict[str, Any] = {"image": hwc}
    dtype = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != x.shape[1:]:
            raise MaskError(f"mask shape {m.shape} does not match image {x.shape[1:]}",
                            hint="the mask must have the image's height and width")
        if m.size and (m.min() < 0 or m.max() > 255):
            raise MaskError(f"mask values {m.min()}..{m.max()} are outside 0..255",
                            hint="use class ids 0..255")
        dtype = m.dtype
        data["mask"] = np.ascontiguousarray(m.astype(np.uint8))
    out = transform(**data)
    y = np.asarray(out["image"], dtype=np.float32)
    if y.ndim == 2:
        y = y[:, :, None]
    y = np.clip(np.ascontiguousarray(y.transpose(2, 0, 1)), 0.0, 1.0)
    if mask is None:
        return y, None
    return y, np.asarray(out["mask"]).astype(dtype, copy=False)


# --------------------------------------------------------------------------- preprocessing config

@dataclass(frozen=True)
class Preprocess(JsonConfig):
    """How raw images become model input; stored in the model card, so it must round-trip JSON.

    Attributes:
        size: model input ``(H, W)`` for "resize" and "letterbox" (unused by "pad").
        resize_policy: "resize" | "letterbox" | "pad" (see the module docstring for the inverses).
        median_filter: median de-speckling kernel (odd, >= 3) applied before resizing; 0 = off.
        normalize: "none" | "minmax" (per image and channel to [0, 1]) | "meanstd" ((x - mean) / std)
            | "standardize" (per image and channel to zero mean, unit std: cross-site).
        clahe: CLAHE clip limit (0 = off; 2.0 is a common value), applied before ``normalize``.
        clahe_tiles: CLAHE tile grid (``clahe_tiles`` × ``clahe_tiles``).
        mean, std: per-channel statistics for "meanstd" (one value, or one per input channel).
        in_channels: channels the model expects; inputs are adapted by :func:`adapt_channels`.
        pad_multiple: "pad" pads height and width up to a multiple of this.

    Example:
        >>> pre = Preprocess(size=(128, 128), normalize="meanstd", mean=(0.4,), std=(0.2,))
        >>> Preprocess.from_json(pre.to_json()) == pre
        True
    """

    size: tuple[int, int] = (256, 256)
    resize_policy: str = "resize"
    median_filter: int = 0
    normalize: str = "none"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    in_channels: int = 1
    pad_multiple: int = 32
    clahe: float = 0.0
    clahe_tiles: int = 8

    def __post_init__(self) -> None:
        if not 0 <= float(self.clahe) <= 100:
            raise ConfigError(f"clahe is a clip limit in [0, 100] (0 = off), got {self.clahe!r}", hint="e.g. clahe=2.0")
        if int(self.clahe_tiles) != self.clahe_tiles or not 1 <= self.clahe_tiles <= 64:
            raise ConfigError(f"clahe_tiles must be a whole number in 1..64, got {self.clahe_tiles!r}")
        if (len(self.size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in self.size)):
            raise ConfigError(f"size must be (height, width) in whole pixels, got {self.size!r}",
                              hint="e.g. size=(256, 256)")
        if self.resize_policy not in RESIZE_POLICIES:
            raise unknown_name("resize policy", self.resize_policy, RESIZE_POLICIES)
        if self.normalize not in NORMALIZATIONS:
            raise unknown_name("normalization", self.normalize, NORMALIZATIONS)
        k = self.median_filter
        if isinstance(k, bool) or int(k) != k or k < 0 or (k > 1 and k % 2 == 0):
            raise ConfigError(f"median_filter must be 0 (off) or an odd size >= 3, got {k!r}",
                              hint="e.g. median_filter=5")
        if int(self.in_channels) != self.in_channels or self.in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {self.in_channels!r}")
        if int(self.pad_multiple) != self.pad_multiple or self.pad_multiple < 1:
            raise ConfigError(f"pad_multiple must be >= 1, got {self.pad_multiple!r}")
        for name in ("mean", "std"):
            vals = getattr(self, name)
            if len(vals) not in (1, self.in_channels):
                raise ConfigError(f"{name} has {len(vals)} values but in_channels is {self.in_channels}",
                                  hint=f"give one {name} value or one per channel")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be > 0, got {self.std!r}")


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits inside the model input.

    ``original_hw`` → resized to ``scaled_hw`` → padded by ``pad`` = (top, bottom, left, right)
    → ``out_hw`` (the model input size).
    """

    original_hw: tuple[int, int]
    scaled_hw: tuple[int, int]
    pad: tuple[int, int, int, int]
    out_hw: tuple[int, int]


def plan_geometry(original_hw: tuple[int, int], pre: Preprocess) -> Geometry:
    """The geometric mapping :func:`preprocess_image` applies to an image of ``original_hw``.

    Example:
        >>> plan_geometry((420, 580), Preprocess(size=(256, 256), resize_policy="letterbox"))
        Geometry(original_hw=(420, 580), scaled_hw=(185, 256), pad=(35, 36, 0, 0), out_hw=(256, 256))
    """
    h, w = int(original_hw[0]), int(original_hw[1])
    if h < 1 or w < 1:
        raise ReadError(f"image size {h}x{w} is empty", hint="check the file decodes to a non-empty image")
    th, tw = int(pre.size[0]), int(pre.size[1])
    if pre.resize_policy == "resize":
        return Geometry((h, w), (th, tw), (0, 0, 0, 0), (th, tw))
    if pre.resize_policy == "letterbox":
        s = min(th / h, tw / w)
        sh, sw = min(th, max(1, round(h * s))), min(tw, max(1, round(w * s)))
        top, left = (th - sh) // 2, (tw - sw) // 2
        return Geometry((h, w), (sh, sw), (top, th - sh - top, left, tw - sw - left), (th, tw))
    m = int(pre.pad_multiple)
    ph, pw = math.ceil(h / m) * m - h, math.ceil(w / m) * m - w
    return Geometry((h, w), (h, w), (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2), (h + ph, w + pw))


# --------------------------------------------------------------------------- array helpers

def _as_chw(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img)
    if x.ndim != 3 or 0 in x.shape:
        raise ReadError(f"image must be (C, H, W), got shape {x.shape}",
                        hint="add a channel axis for grayscale images: img[None]")
    return x.astype(np.float32, copy=False)


def _resize_chw(x: np.ndarray, hw: tuple[int, int], interp: int) -> np.ndarray:
    """cv2.resize on a (C, H, W) array, at most 4 channels per call (OpenCV's limit)."""
    import cv2

    if x.shape[1:] == tuple(hw):
        return x.copy()
    parts = []
    for c0 in range(0, x.shape[0], 4):
        chunk = np.ascontiguousarray(x[c0:c0 + 4].transpose(1, 2, 0))
        r = cv2.resize(chunk, (int(hw[1]), int(hw[0])), interpolation=interp)
        if r.ndim == 2:
            r = r[:, :, None]
        parts.append(r.transpose(2, 0, 1))
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def _image_interp(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    import cv2

    shrink = dst_hw[0] <= src_hw[0] and dst_hw[1] <= src_hw[1]
    return cv2.INTER_AREA if shrink else cv2.INTER_LINEAR


def _pad(x: np.ndarray, pad: tuple[int, int, int, int], mode: str) -> np.ndarray:
    top, bottom, left, right = pad
    if not any(pad):
        return x
    widths = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=0)
    return np.pad(x, widths, mode="reflect" if min(x.shape[-2:]) > 1 else "edge")


def _apply_geometry_image(x: np.ndarray, geo: Geometry, pre: Preprocess) -> np.ndarray:
    x = _resize_chw(x, geo.scaled_hw, _image_interp(geo.original_hw, geo.scaled_hw))
    return _pad(x, geo.pad, "reflect" if pre.resize_policy == "pad" else "constant")


def _apply_geometry_mask(m: np.ndarray, geo: Geometry, pre: Preprocess) -> np.ndarray:
    import cv2

    if geo.scaled_hw != geo.original_hw:
        src = m.astype(np.uint8) if m.dtype != np.uint8 else m
        m = cv2.resize(np.ascontiguousarray(src), (geo.scaled_hw[1], geo.scaled_hw[0]),
                       interpolation=cv2.INTER_NEAREST_EXACT).astype(m.dtype, copy=False)
    return _pad(m, geo.pad, "reflect" if pre.resize_policy == "pad" else "constant")


# --------------------------------------------------------------------------- public preprocessing

def adapt_channels(img: np.ndarray, in_channels: int) -> np.ndarray:
    """Convert an image to the channel count a model expects.

    1 → 3 repeats; 3 → 1 is ITU-R 601 luminance (0.299 R + 0.587 G + 0.114 B); 4 → 3 drops alpha
    (4 → 1 drops alpha, then luminance); 2 (gray + alpha) → 1 keeps gray, → 3 repeats gray.

    Args:
        img: float32 ``(C, H, W)``.
        in_channels: wanted channel count.

    Returns:
        float32 ``(in_channels, H, W)`` (the input itself when nothing changes).

    Example:
        >>> import numpy as np
        >>> adapt_channels(np.ones((1, 2, 2), np.float32), 3).shape
        (3, 2, 2)
    """
    x = _as_chw(img)
    c, n = x.shape[0], int(in_channels)
    if c == n:
        return x
    if c in (2, 4):  # drop alpha
        x = x[:1] if c == 2 else x[:3]
        c = x.shape[0]
        if c == n:
            return np.ascontiguousarray(x)
    if c == 1 and n == 3:
        return np.repeat(x, 3, axis=0)
    if c == 3 and n == 1:
        w = np.asarray(LUMA_601, np.float32)[:, None, None]
        return (x * w).sum(axis=0, keepdims=True, dtype=np.float32)
    raise ConfigError(f"cannot adapt a {x.shape[0]}-channel image to a {n}-channel model",
                      hint="use a model trained on this kind of image, or convert the image first")


def median_despeckle(img: np.ndarray, k: int) -> np.ndarray:
    """Median filter each channel with a ``k×k`` window (replicated borders); k in (0, 1) = off.

    Removes ultrasound speckle while keeping edges. OpenCV for k = 3, 5; SciPy (same result,
    slower) for larger windows.

    Args:
        img: float32 ``(C, H, W)`` (a 2-D ``(H, W)`` array is accepted too).
        k: odd window size.

    Returns:
        float32 array of the same shape.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((1, 5, 5), np.float32); x[0, 2, 2] = 1
        >>> float(median_despeckle(x, 3).max())
        0.0
    """
    if isinstance(k, bool) or int(k) != k or k < 0 or (k > 1 and k % 2 == 0):
        raise ConfigError(f"median filter size must be 0 (off) or odd, got {k!r}", hint="e.g. 3 or 5")
    x = np.asarray(img, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ReadError(f"image must be (C, H, W), got shape {x.shape}")
    if k <= 1:
        return x.copy()
    planes = x[None] if x.ndim == 2 else x
    if k <= 5:
        import cv2

        out = np.stack([cv2.medianBlur(np.ascontiguousarray(p), int(k)) for p in planes])
    else:
        out = ndimage.median_filter(planes, size=(1, int(k), int(k)), mode="nearest")
    return out[0] if x.ndim == 2 else out


def clahe(img: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a float32 ``(C, H, W)`` image in [0, 1],
    per channel, on 16-bit levels (OpenCV); returns float32 in [0, 1] of the same shape.

    Example:
        >>> import numpy as np
        >>> x = np.linspace(0.4, 0.6, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
        >>> y = clahe(x, 2.0, 4)
        >>> y.shape, float(y.max() - y.min()) > float(x.max() - x.min())   # contrast stretched
        ((1, 64, 64), True)
    """
    import cv2

    x = _as_chw(img)
    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tiles), int(tiles)))
    planes = [op.apply(np.ascontiguousarray((np.clip(p, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)))
              for p in x]
    return (np.stack(planes).astype(np.float32) / 65535.0).astype(np.float32)


def normalize_image(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Intensity normalisation of a (preprocessed, possibly augmented) float32 ``(C, H, W)`` image.

    First CLAHE when ``pre.clahe`` > 0 (see :func:`clahe`), then: "minmax" maps each channel's
    min..max to 0..1 (a flat channel becomes 0); "meanstd" computes ``(x - mean) / std`` per
    channel with the card's statistics; "standardize" uses the image's own per-channel mean and
    std (a flat channel becomes 0).
    """
    x = _as_chw(img)
    if pre.clahe > 0:
        x = clahe(x, pre.clahe, pre.clahe_tiles)
    if pre.normalize == "standardize":
        mu = x.mean(axis=(1, 2), keepdims=True)
        sd = x.std(axis=(1, 2), keepdims=True)
        return np.where(sd > 1e-6, (x - mu) / np.where(sd > 1e-6, sd, 1), 0).astype(np.float32)
    if pre.normalize == "none":
        return x
    if pre.normalize == "minmax":
        lo = x.min(axis=(1, 2), keepdims=True)
        span = x.max(axis=(1, 2), keepdims=True) - lo
        return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    if mean.shape[0] not in (1, x.shape[0]) or std.shape[0] not in (1, x.shape[0]):
        raise ConfigError(f"mean/std have {len(pre.mean)}/{len(pre.std)} values for a "
                          f"{x.shape[0]}-channel image", hint="give one value or one per channel")
    return ((x - mean) / std).astype(np.float32)


def preprocess_image(img: np.ndarray, pre: Preprocess, normalize: bool = True) -> np.ndarray:
    """Model input from an image: channels → median → geometry → normalisation.

    Args:
        img: float32 ``(C, H, W)`` in [0, 1].
        pre: the model's :class:`Preprocess`.
        normalize: False returns the [0, 1] image before normalisation (for augmentation).

    Returns:
        float32 ``(in_channels, h, w)``; ``(h, w)`` is ``plan_geometry(...).out_hw``.

    Example:
        >>> import numpy as np
        >>> preprocess_image(np.zeros((3, 420, 580), np.float32), Preprocess(size=(128, 128))).shape
        (1, 128, 128)
    """
    x = adapt_channels(img, pre.in_channels)
    if pre.median_filter > 1:
        x = median_despeckle(x, pre.median_filter)
    x = _apply_geometry_image(x, plan_geometry(x.shape[1:], pre), pre)
    return normalize_image(x, pre) if normalize else x


def preprocess_pair(img: np.ndarray, mask: np.ndarray, pre: Preprocess,
                    normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`preprocess_image` plus the same geometry for the mask (nearest neighbour).

    Args:
        img: float32 ``(C, H, W)`` in [0, 1].
        mask: integer ``(H, W)``.
        pre: the model's :class:`Preprocess`.
        normalize: False for training with augmentation (normalise after :func:`apply_transform`).

    Returns:
        ``(float32 (in_channels, h, w), mask (h, w) with the input dtype)``.

    Example:
        >>> import numpy as np
        >>> x, m = preprocess_pair(np.zeros((1, 60, 40), np.float32), np.ones((60, 40), np.uint8),
        ...                        Preprocess(resize_policy="pad"))
        >>> x.shape, m.shape, int(m.min())
        ((1, 64, 64), (64, 64), 1)
    """
    x = _as_chw(img)
    m = np.asarray(mask)
    if m.shape != x.shape[1:]:
        raise MaskError(f"mask shape {m.shape} does not match image {x.shape[1:]}",
                        hint="the mask must have the image's height and width")
    geo = plan_geometry(x.shape[1:], pre)
    return preprocess_image(x, pre, normalize=normalize), _apply_geometry_mask(m, geo, pre)


def _crop_to_content(arr: np.ndarray, geo: Geometry, what: str) -> np.ndarray:
    if tuple(arr.shape[-2:]) != tuple(geo.out_hw):
        raise MaskError(f"{what} has size {tuple(arr.shape[-2:])} but the model input for a "
                        f"{geo.original_hw[0]}x{geo.original_hw[1]} image is {geo.out_hw}",
                        hint="pass the original image size and the model's own Preprocess")
    top, bottom, left, right = geo.pad
    return arr[..., top:arr.shape[-2] - bottom, left:arr.shape[-1] - right]


def restore_size(probs: np.ndarray, original_hw: tuple[int, int], pre: Preprocess) -> np.ndarray:
    """Bring probabilities from model-input size back to the original image size.

    Inverts :func:`plan_geometry`: crops the padding, then resizes bilinearly (linear
    interpolation with the same weights for every channel keeps softmax columns summing to 1).

    Args:
        probs: float32 ``(K, h, w)`` at the model input size.
        original_hw: the input image's ``(H, W)`` before preprocessing.
        pre: the :class:`Preprocess` used to make the input.

    Returns:
        float32 ``(K, H, W)``.

    Example:
        >>> import numpy as np
        >>> pre = Preprocess(size=(64, 64))
        >>> restore_size(np.full((2, 64, 64), 0.5, np.float32), (420, 580), pre).shape
        (2, 420, 580)
    """
    import cv2

    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3:
        raise MaskError(f"probabilities must be (K, h, w), got shape {p.shape}")
    geo = plan_geometry(original_hw, pre)
    p = _crop_to_content(p, geo, "probability map")
    return _resize_chw(np.ascontiguousarray(p), geo.original_hw, cv2.INTER_LINEAR)


def restore_mask(mask: np.ndarray, original_hw: tuple[int, int], pre: Preprocess) -> np.ndarray:
    """Label mask ``(h, w)`` at model-input size → ``(H, W)`` at the original size (nearest).

    Prefer :func:`restore_size` on probabilities followed by post-processing; this is for masks
    that only exist as labels (e.g. a preprocessed ground truth).
    """
    import cv2

    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"mask must be (h, w), got shape {m.shape}")
    geo = plan_geometry(original_hw, pre)
    m = np.ascontiguousarray(_crop_to_content(m, geo, "mask"))
    if m.shape == tuple(geo.original_hw):
        return m.copy()
    if m.size and (m.min() < 0 or m.max() > 255):
        raise MaskError("mask values must be within 0..255", hint="use class ids 0..255")
    out = cv2.resize(m.astype(np.uint8), (geo.original_hw[1], geo.original_hw[0]),
                     interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(m.dtype, copy=False)
