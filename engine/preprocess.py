"""Model input and device: the steps every model shares before its forward pass.

:func:`select_device` picks a ``torch.device`` (``auto`` = cuda → mps → cpu); :func:`as_chw` turns any
loaded image into the data contract's float32 ``(C, H, W)`` in [0, 1]; :func:`model_input` applies a
card's :class:`~engine.augment.Preprocess` to it. Segmentation (:mod:`engine.inference`) and presence
classification (:mod:`engine.classify`) both build on these, so neither imports the other for them.

Example:
    >>> import numpy as np
    >>> as_chw(np.zeros((4, 5), np.uint8)).shape
    (1, 4, 5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.augment import Preprocess, preprocess_image
from engine.errors import ConfigError, ReadError

if TYPE_CHECKING:
    import torch


def select_device(preference: str = "auto") -> "torch.device":
    """``torch.device`` for ``auto`` (cuda → mps → cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        ConfigError: the requested device is not available here.
    """
    import torch

    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {preference!r} requested but CUDA is not available on this machine",
                          hint="use --device cpu or auto")
    if pref == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' requested but Apple MPS is not available", hint="use --device cpu or auto")
    try:
        return torch.device(pref)
    except RuntimeError:
        raise ConfigError(f"unknown device {preference!r}", hint="use auto, cpu, cuda, cuda:N or mps") from None



def as_chw(img: np.ndarray) -> np.ndarray:
    """An image → float32 (C,H,W) in [0,1] (the data contract).

    ``img`` is float (C,H,W) or (H,W) already in [0,1], or a raw integer/bool array (H,W), (H,W,C)
    or (C,H,W) such as a uint8 PNG, which is scaled to [0,1] (:func:`engine.io.to_chw_float`:
    uint8 → /255), never fed to a model as 0..255.

    Raises:
        ReadError: not an image (a 3-D volume, a 4-D array).
    """
    a = np.asarray(img)
    if not np.issubdtype(a.dtype, np.floating):
        from engine.io import to_chw_float

        if a.ndim == 3 and a.shape[2] > 4:
            if a.shape[0] > 4:
                raise ReadError(f"expected an image, got an array of shape {a.shape} (a 3-D volume?)",
                                hint="pass one slice (H,W) at a time")
            a = np.moveaxis(a, 0, -1)  # integer (C,H,W) → (H,W,C) for the converter
        a = to_chw_float(a)
    x = np.asarray(a, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ReadError(f"expected an image (C,H,W) or (H,W), got shape {x.shape}",
                        hint="load images with engine.io.load_image")
    return x


def model_input(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """An image (see :func:`as_chw`) → model input float32 (C',h,w) per ``pre``."""
    return preprocess_image(as_chw(img), pre)
