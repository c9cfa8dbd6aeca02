"""Out-of-domain profile: a compact description of a model's training inputs, and how far an input is.

The profile (stored in the model card under ``fingerprint``, a few hundred bytes; unrelated to the
near-duplicate descriptors of :mod:`engine.dedup.fingerprint`) summarises the *raw* training images
(float32 (C,H,W) in [0,1] as the readers give them, before the card's preprocessing):

* ``hist``: the mean 32-bin intensity histogram (grey = channel mean), each image's histogram
  normalised to sum 1;
* ``hist_dist_p95``: the 95th percentile of the training images' own L1 distances to ``hist``
  (how much the training data itself varies);
* ``feat_mean``/``feat_sd``/``feat_z_p95``: per-feature mean and spread of [histogram, 8×8 grey
  thumbnail (the layout: bright mediastinum vs dark lungs, skin line on top of an ultrasound)],
  and the 95th percentile of the training images' own mean |z| over those features;
* ``height``/``width``/``aspect``: min, median, max over the sampled images; ``channels`` seen;
* ``modality``/``photometric``: counts of the DICOM values where known (``{}`` for PNG data);
  for non-DICOM training data a ``modality`` hint (``US``, ``CR``…) can be given, so a DICOM of
  another modality is still flagged.

:func:`check_input` compares one image with a fingerprint and returns the reasons it is unlike
the training data: a histogram distance above ``max(1.5 × hist_dist_p95, 0.25)``, a feature
mean |z| above ``1.5 × feat_z_p95``, an aspect ratio
outside the training range ±25 %, a channel count never seen, a DICOM modality or photometric
interpretation the training data did not have. It is a warning, never a refusal: the user decides.

Example:
    >>> fp = build_profile([(img, meta) for img, meta in samples])          # doctest: +SKIP
    >>> check_input(fp, chest_xray, {"modality": "CR"})["far"]                  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:
    from engine.datasets.base import Dataset

__all__ = ["FINGERPRINT_VERSION", "BINS", "image_histogram", "build_profile", "check_input",
           "profile_dataset"]

FINGERPRINT_VERSION = 1
BINS = 32
MIN_HIST_THRESHOLD = 0.25  # L1 distance (0..2) below which an input never counts as far
HIST_FACTOR = 1.5
ASPECT_SLACK = 1.25


Z_FACTOR = 1.5
Z_EPS = 0.005
THUMB = 8


def _features(img: np.ndarray) -> np.ndarray:
    """float64 (BINS + THUMB², ) = [histogram, THUMB×THUMB box-averaged grey thumbnail]."""
    from PIL import Image

    g = np.clip(_grey(img), 0.0, 1.0).astype(np.float32)
    t = np.asarray(Image.fromarray(g).resize((THUMB, THUMB), Image.Resampling.BOX), np.float64).ravel()
    return np.concatenate([image_histogram(img), t])


def _grey(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, np.float32)
    return a.mean(axis=0) if a.ndim == 3 else a


def image_histogram(img: np.ndarray) -> np.ndarray:
    """float64 (BINS,) histogram of a float (C,H,W) or (H,W) image in [0,1] (grey), summing to 1."""
    g = np.clip(_grey(img), 0.0, 1.0)
    h, _ = np.histogram(g, bins=BINS, range=(0.0, 1.0))
    total = h.sum()
    return h / total if total else np.full(BINS, 1.0 / BINS)


def _dicom_value(meta: dict[str, Any] | None, key: str) -> str | None:
    """A DICOM header string (a TIFF reader's integer ``photometric`` tag is not one)."""
    v = (meta or {}).get(key)
    return v.strip().upper() if isinstance(v, str) and v.strip() else None


def build_profile(samples: Iterable[tuple[np.ndarray, dict[str, Any] | None]],
                      modality_hint: Iterable[str] | None = None) -> dict[str, Any]:
    """Fingerprint of ``(image float (C,H,W) in [0,1], reader meta)`` samples (see module docstring).

    ``modality_hint``: DICOM modality codes of non-DICOM training data (e.g. ``["US"]``).
    Returns ``{}`` when there is no sample.
    """
    hists, feats, hs, ws, chans = [], [], [], [], set()
    modality: Counter[str] = Counter()
    photometric: Counter[str] = Counter()
    for img, meta in samples:
        a = np.asarray(img)
        if a.ndim == 2:
            a = a[None]
        hists.append(image_histogram(a))
        feats.append(_features(a))
        hs.append(int(a.shape[1]))
        ws.append(int(a.shape[2]))
        chans.add(int(a.shape[0]))
        m, p = _dicom_value(meta, "modality"), _dicom_value(meta, "photometric")
        if m:
            modality[m] += 1
        if p:
            photometric[p] += 1
    if not hists:
        return {}
    H = np.stack(hists)
    mean = H.mean(axis=0)
    own = np.abs(H - mean).sum(axis=1)
    aspect = np.asarray(ws, float) / np.asarray(hs, float)
    F = np.stack(feats)
    f_mean, f_sd = F.mean(axis=0), F.std(axis=0)
    own_z = (np.abs(F - f_mean) / (f_sd + Z_EPS)).mean(axis=1)
    if not modality and modality_hint:
        modality = Counter({str(m).strip().upper(): 0 for m in modality_hint if str(m).strip()})
    return {
        "version": FINGERPRINT_VERSION, "n_images": len(hists), "bins": BINS,
        "hist": [round(float(v), 5) for v in mean],
        "hist_dist_p95": round(float(np.percentile(own, 95)), 4),
        "feat_mean": [round(float(v), 5) for v in f_mean], "feat_sd": [round(float(v), 5) for v in f_sd],
        "feat_z_p95": round(float(np.percentile(own_z, 95)), 4),
        "height": [int(min(hs)), int(np.median(hs)), int(max(hs))],
        "width": [int(min(ws)), int(np.median(ws)), int(max(ws))],
        "aspect": [round(float(aspect.min()), 4), round(float(np.median(aspect)), 4), round(float(aspect.max()), 4)],
        "channels": sorted(chans),
        "modality": dict(modality), "photometric": dict(photometric),
    }


def check_input(fingerprint: dict[str, Any] | None, img: np.ndarray,
                meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """How far one input is from a model's training inputs.

    Args:
        fingerprint: a card's ``fingerprint`` (``{}``/None: nothing to compare with).
        img: float32 (C,H,W) or (H,W) in [0,1].
        meta: the reader's meta (``modality``, ``photometric`` for DICOM).

    Returns:
        ``{"known": bool, "far": bool, "reasons": [str], "hist_distance": float | None,
        "hist_threshold": float | None, "feature_z": float | None}``; ``known`` is False without a fingerprint.
    """
    if not fingerprint or "hist" not in fingerprint:
        return {"known": False, "far": False, "reasons": [], "hist_distance": None, "hist_threshold": None,
                "feature_z": None}
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[None]
    reasons: list[str] = []
    ref = np.asarray(fingerprint["hist"], float)
    ref = ref / ref.sum() if ref.sum() else ref
    d = float(np.abs(image_histogram(a) - ref).sum())
    thr = max(HIST_FACTOR * float(fingerprint.get("hist_dist_p95", 0.0)), MIN_HIST_THRESHOLD)
    if d > thr:
        reasons.append(f"intensity histogram distance {d:.2f} from the training images' (their own spread "
                       f"reaches {float(fingerprint.get('hist_dist_p95', 0.0)):.2f}; warning above {thr:.2f})")
    z = None
    if fingerprint.get("feat_mean"):
        mu, sd = np.asarray(fingerprint["feat_mean"], float), np.asarray(fingerprint["feat_sd"], float)
        z = float((np.abs(_features(a) - mu) / (sd + Z_EPS)).mean())
        z_thr = Z_FACTOR * float(fingerprint.get("feat_z_p95", 1.0))
        if z > z_thr:
            reasons.append(f"intensity and layout (histogram + 8×8 thumbnail) {z:.2f} standard deviations from the "
                           f"training images' mean (95 % of them within {float(fingerprint.get('feat_z_p95', 0)):.2f}; "
                           f"warning above {z_thr:.2f})")
    lo, _, hi = fingerprint.get("aspect", [0, 0, float("inf")])
    asp = a.shape[2] / a.shape[1]
    if not (lo / ASPECT_SLACK <= asp <= hi * ASPECT_SLACK):
        reasons.append(f"aspect ratio {asp:.2f} (width/height) outside the training range {lo:.2f}–{hi:.2f}")
    chans = fingerprint.get("channels") or []
    if chans and a.shape[0] not in chans:
        reasons.append(f"{a.shape[0]} channel(s); the training images had {'/'.join(map(str, chans))}")
    for key, label in (("modality", "modality"), ("photometric", "photometric interpretation")):
        seen = fingerprint.get(key) or {}
        v = _dicom_value(meta, key)
        if seen and v and v not in seen:
            reasons.append(f"DICOM {label} {v}; the training images were {', '.join(sorted(seen))}")
    return {"known": True, "far": bool(reasons), "reasons": reasons, "hist_distance": round(d, 4),
            "hist_threshold": round(thr, 4), "feature_z": None if z is None else round(z, 4)}


def profile_dataset(dataset: Dataset, case_ids: Iterable[str] | None = None, max_images: int = 200,
                        modality_hint: Iterable[str] | None = None) -> dict[str, Any]:
    """Fingerprint of (up to ``max_images``, spread evenly) cases of an :class:`engine.datasets.Dataset`;
    unreadable cases are skipped."""
    from engine.errors import WorkbenchError
    from engine.io import to_chw_float

    ids = list(case_ids) if case_ids is not None else [c.case_id for c in dataset.cases]
    if len(ids) > max_images:
        step = len(ids) / max_images
        ids = [ids[int(i * step)] for i in range(max_images)]

    def samples():
        for cid in ids:
            case = dataset.case(cid)
            try:
                arr, meta = dataset.load_image(case)
            except WorkbenchError:
                continue
            yield to_chw_float(arr, meta), {**(case.meta or {}), **(meta or {})}

    return build_profile(samples(), modality_hint)
