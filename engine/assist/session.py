"""One interactive segmentation of one object in one image: :class:`AssistSession` and :func:`start_session`.

A session holds the working image ((H,W) uint8, one byte per pixel), the starting mask, and one step
per interaction (a click or a box) with the mask after it, bit-packed (H·W/8 bytes). It never holds a
network: the click model is loaded once per process and shared (:func:`engine.assist.model.load_click_model`),
so a session is cheap to keep in Streamlit's session state and pickles in a few hundred kB.

Methods (:data:`METHODS`): ``click_model`` (the shipped click network, ``weights/click-seg``), and three
classical ones without weights (:mod:`engine.assist.classical`): ``grabcut``, ``random_walker``,
``watershed``. ``method=None`` picks the click model when its weights load, else the first classical
method of :data:`CLASSICAL_ORDER` whose library is installed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.assist.clicks import Click
from engine.assist.prep import check_mask, check_point, working_image
from engine.errors import CheckpointError, ConfigError, unknown_name

CLICK_MODEL = "click_model"
METHODS: tuple[str, ...] = (CLICK_MODEL, "grabcut", "random_walker", "watershed")
"""Every method name, best first."""
CLASSICAL_ORDER: tuple[str, ...] = ("grabcut", "watershed", "random_walker")
"""Fallback order when the click model is not available (by held-out NoC, see ``bench/assist.py``)."""

DESCRIPTIONS = {
    CLICK_MODEL: "click model (small U-Net trained with simulated clicks; image + clicks + previous mask → mask)",
    "grabcut": "GrabCut (OpenCV): grey-level mixtures + graph cut, from a box and/or clicks",
    "random_walker": "random walker (scikit-image): seeds diffuse along low-gradient paths",
    "watershed": "watershed from the click seeds on the image gradient (grow from seeds)",
}
_NEEDS = {"grabcut": "cv2", "random_walker": "skimage", "watershed": "skimage"}


@dataclass(frozen=True)
class MethodInfo:
    """One method as the UI lists it: ``name``, ``description``, whether it needs weights, whether it
    can run here (``available``) and, when not, why (``reason``)."""

    name: str
    description: str
    needs_weights: bool
    available: bool
    reason: str = ""


def _library_ok(name: str) -> tuple[bool, str]:
    import importlib.util

    lib = _NEEDS[name]
    if importlib.util.find_spec(lib) is None:
        return False, f"the {lib} package is not installed (pip install -r requirements.txt)"
    return True, ""


def _model_ok(weights: str | Path | None) -> tuple[bool, str]:
    from engine.assist.model import load_click_model

    try:
        model = load_click_model(weights)
    except CheckpointError as exc:
        return False, str(exc)
    except ImportError as exc:  # torch/safetensors missing in a slim install: the classical methods still work
        return False, f"cannot load the click model ({exc})"
    return True, f"weights {model.name} ({model.folder})"


def list_methods(weights: str | Path | None = None) -> list[MethodInfo]:
    """Every method with whether it can run here. Checking the click model loads it (cached afterwards).

    Args:
        weights: click-model name or folder (default: the shipped ``click-seg``).
    """
    out = []
    for name in METHODS:
        ok, why = _model_ok(weights) if name == CLICK_MODEL else _library_ok(name)
        out.append(MethodInfo(name, DESCRIPTIONS[name], name == CLICK_MODEL, ok, why))
    return out


def available_methods(weights: str | Path | None = None) -> list[str]:
    """Names of the methods that can run here, best first (the click model first when it loads)."""
    infos = {m.name: m for m in list_methods(weights)}
    order = (CLICK_MODEL,) + CLASSICAL_ORDER
    return [n for n in order if infos[n].available]


def default_method(weights: str | Path | None = None) -> str:
    """What ``method=None`` picks: the click model when its weights load, else the best classical method.

    Raises:
        ConfigError: nothing can run (no click model and neither OpenCV nor scikit-image installed).
    """
    if _model_ok(weights)[0]:
        return CLICK_MODEL
    for name in CLASSICAL_ORDER:
        if _library_ok(name)[0]:
            return name
    raise ConfigError("no interactive segmentation method can run here",
                      hint="install the requirements (opencv-python-headless, scikit-image) or the click-model weights")


@dataclass(frozen=True)
class _Step:
    """One interaction and the mask after it (bit-packed)."""

    kind: str  # "click" | "box"
    click: Click | None
    box: tuple[int, int, int, int] | None
    bits: np.ndarray
    seconds: float


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(mask.reshape(-1))


class AssistSession:
    """Clicks (and boxes) → mask, with undo. Make one with :func:`start_session`.

    Attributes:
        method: the method in use (one of :data:`METHODS`).
        shape: (H, W) of the image.
        started_from: ``"empty"`` or ``"mask"`` (a ground truth or prediction given at the start).
        weights: the click model's name or folder (None for classical methods or the default weights).
    """

    def __init__(self, grey: np.ndarray, method: str, start: np.ndarray | None,
                 weights: str | Path | None = None) -> None:
        self.method = method
        self.shape: tuple[int, int] = (int(grey.shape[0]), int(grey.shape[1]))
        self.weights = str(weights) if weights is not None else None
        self.started_from = "mask" if start is not None else "empty"
        self._grey = grey
        self._start = _pack(start) if start is not None else None
        self._steps: list[_Step] = []

    # -- state ------------------------------------------------------------------------------
    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        n = self.shape[0] * self.shape[1]
        return np.unpackbits(bits, count=n).reshape(self.shape).astype(bool)

    def _start_mask(self) -> np.ndarray:
        return self._unpack(self._start) if self._start is not None else np.zeros(self.shape, bool)

    @property
    def mask(self) -> np.ndarray:
        """The current mask, (H,W) bool (a copy)."""
        return self._unpack(self._steps[-1].bits) if self._steps else self._start_mask()

    @property
    def start_mask(self) -> np.ndarray:
        """The mask the session started from, (H,W) bool (all False when it started empty)."""
        return self._start_mask()

    @property
    def clicks(self) -> int:
        """Number of clicks made (undone clicks do not count; a box is not a click)."""
        return sum(1 for s in self._steps if s.kind == "click")

    @property
    def points(self) -> tuple[Click, ...]:
        """The clicks made, in order."""
        return tuple(s.click for s in self._steps if s.kind == "click" and s.click is not None)

    @property
    def current_box(self) -> tuple[int, int, int, int] | None:
        """The latest box ``(r0, c0, r1, c1)`` still in effect, or None."""
        boxes = [s.box for s in self._steps if s.kind == "box"]
        return boxes[-1] if boxes else None

    @property
    def last_seconds(self) -> float:
        """Seconds the latest click or box took (0.0 before the first)."""
        return self._steps[-1].seconds if self._steps else 0.0

    def note(self) -> dict[str, Any]:
        """What to record with an accepted mask (the version note): method, click counts, box, start."""
        pts = self.points
        out: dict[str, Any] = {"tool": "assist", "method": self.method, "clicks": len(pts),
                               "positive_clicks": sum(c.positive for c in pts),
                               "negative_clicks": sum(not c.positive for c in pts),
                               "box": self.current_box is not None, "started_from": self.started_from}
        if self.method == CLICK_MODEL:
            out["weights"] = self.weights or "click-seg"
        return out

    # -- interactions -----------------------------------------------------------------------
    def click(self, row: int, col: int, positive: bool = True) -> np.ndarray:
        """Add a click at pixel (row, col): ``positive=True`` = "object here", False = "not object here".

        Returns:
            (H,W) bool, the mask after the click.

        Raises:
            ConfigError: the point is outside the image.
        """
        r, c = check_point(row, col, self.shape)
        return self._apply("click", Click(r, c, bool(positive)), None)

    def box(self, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
        """A box prompt, corners inclusive (any order): the object is inside it. Replaces an earlier box;
        clicks made before stay. Returns the (H,W) bool mask after it. Until the box is undone, every
        mask is cut to it (nothing outside the box)."""
        a = check_point(r0, c0, self.shape)
        b = check_point(r1, c1, self.shape)
        box = (min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1]))
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            raise ConfigError(f"the box {box} is empty", hint="drag a box at least 2 pixels wide and tall")
        return self._apply("box", None, box)

    def undo(self) -> np.ndarray:
        """Remove the latest click or box; returns the (H,W) bool mask before it (the start mask after
        the first). Undo with nothing to undo returns the start mask."""
        if self._steps:
            self._steps.pop()
        return self.mask

    def reset(self) -> np.ndarray:
        """Forget every click and box; returns the start mask."""
        self._steps.clear()
        return self.mask

    def _apply(self, kind: str, click: Click | None, box: tuple[int, int, int, int] | None) -> np.ndarray:
        t0 = time.perf_counter()
        prev = self.mask
        user_clicks = list(self.points) + ([click] if click is not None else [])
        new_box = box if kind == "box" else self.current_box
        if self.method == CLICK_MODEL:
            mask = self._model_step(prev, kind, click, box)
        else:
            from engine.assist import classical
            from engine.assist.classical import Prompts

            fn: Callable[[np.ndarray, Prompts], np.ndarray] = getattr(classical, self.method)
            start = self._start_mask() if self._start is not None else None
            mask = fn(self._grey, Prompts(tuple(user_clicks), new_box, start))
        mask = np.asarray(mask, bool)
        if new_box is not None:  # the object is inside the box, for every click until the box is undone
            mask = mask & _box_mask(self.shape, new_box)
        self._steps.append(_Step(kind, click, box, _pack(mask), time.perf_counter() - t0))
        return mask

    def _model_clicks(self) -> list[Click]:
        """Clicks as the click model sees them: a box adds a positive click at its centre."""
        out: list[Click] = []
        for s in self._steps:
            if s.kind == "click" and s.click is not None:
                out.append(s.click)
            elif s.box is not None:
                out.append(Click((s.box[0] + s.box[2]) // 2, (s.box[1] + s.box[3]) // 2, True))
        return out

    def _model_step(self, prev: np.ndarray, kind: str, click: Click | None,
                    box: tuple[int, int, int, int] | None) -> np.ndarray:
        from engine.assist.model import load_click_model

        model = load_click_model(self.weights)
        clicks = self._model_clicks()
        if kind == "box" and box is not None:
            clicks.append(Click((box[0] + box[2]) // 2, (box[1] + box[3]) // 2, True))
            return model.predict(self._grey, clicks, prev, box=box)
        assert click is not None
        return model.predict(self._grey, clicks + [click], prev)

    def __repr__(self) -> str:
        return (f"AssistSession(method={self.method!r}, shape={self.shape}, clicks={self.clicks}, "
                f"started_from={self.started_from!r})")


def _box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[box[0]:box[2] + 1, box[1]:box[3] + 1] = True
    return m


def start_session(image: np.ndarray, method: str | None = None, mask: np.ndarray | None = None, *,
                  weights: str | Path | None = None) -> AssistSession:
    """Start segmenting one object in ``image``.

    Args:
        image: (H,W) or (H,W,3) array of any integer dtype (uint8, uint16, int16 CT in HU, ...) or float.
        method: one of :data:`METHODS`, or None = the click model when its weights load, else the best
            classical method (:func:`default_method`).
        mask: optional starting mask (H,W), non-zero = object: the ground truth or a prediction to correct.
            Without clicks the session's mask is this mask.
        weights: click-model name or folder (default: the shipped ``click-seg``).

    Returns:
        :class:`AssistSession`; ``s.click(row, col, positive)`` → (H,W) bool mask; ``s.undo()``;
        ``s.box(r0, c0, r1, c1)``; ``s.method``; ``s.clicks``.

    Raises:
        ReadError: ``image`` is not an image array. MaskError: ``mask`` is not the image's size.
        ConfigError: unknown method. CheckpointError: ``method="click_model"`` and its weights do not load.

    Example:
        >>> s = start_session(np.zeros((64, 64), np.uint16), method="watershed")
        >>> s.click(10, 10, True).shape, s.method, s.clicks
        ((64, 64), 'watershed', 1)
    """
    grey = working_image(image)
    start = check_mask(mask, grey.shape, "starting mask") if mask is not None else None
    if method is None:
        method = default_method(weights)
    elif method not in METHODS:
        raise unknown_name("interactive segmentation method", str(method), list(METHODS))
    if method == CLICK_MODEL:
        from engine.assist.model import load_click_model

        load_click_model(weights)  # fail now, with the fix in the message, not at the first click
    elif not _library_ok(method)[0]:
        raise ConfigError(f"method {method} cannot run here: {_library_ok(method)[1]}",
                          hint="install the requirements or choose another method (list_methods())")
    return AssistSession(grey, method, start, weights)
