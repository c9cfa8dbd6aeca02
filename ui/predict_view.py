"""Streamlit glue for the *Predict* and *Compare models* pages.

Two kinds of functions live here:

- **Pure helpers** (no Streamlit calls; unit-tested directly): input keys, safe metadata rows,
  post-processing settings, download payloads (mask PNG, overlay PNG, RLE strings and the two
  competitions' CSV files, a ZIP of masks), demo-case choice, reuse of cached evaluations.
- **Cached steps and renderers** (Streamlit): decoded images cached by content key, a
  per-session cache of model probabilities keyed by ``(image key, model weights, TTA, device)``
  — so moving the threshold or minimum-area sliders only re-runs post-processing, never the
  model — and the detail / side-by-side views both pages draw.

Session keys are :class:`ui.state.Predict` and :class:`ui.state.Compare` members;
``state.Predict.MODEL_RUNS`` counts the forward passes a session actually ran (a test and a curious
user can check that a slider did not re-run the model).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import streamlit as st

from engine.errors import ConfigError, ReadError, WorkbenchError
from ui import state

if TYPE_CHECKING:
    import pandas as pd
    from streamlit.runtime.uploaded_file_manager import UploadedFile

    from engine.checkpoint import ModelCard
    from engine.compare import ImageComparison
    from engine.datasets import Case, Dataset
    from engine.evaluation import EvalResult
    from engine.inference import Predictor
    from engine.postprocess import PostProcessConfig
    from engine.progress import ProgressFn

#: Bounds of the per-session probability cache (entries, and bytes of float32 probabilities).
PROB_CACHE_ENTRIES = 48
PROB_CACHE_BYTES = 256 * 1024 * 1024
#: Most images processed from one batch of uploads (more are listed as skipped).
MAX_BATCH = 60

UPLOAD_TYPES = ["tif", "tiff", "dcm", "dicom", "png", "jpg", "jpeg", "bmp"]


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class InputImage:
    """One image to predict.

    Attributes:
        name: display name (the uploaded file's name, or the case id of a dataset image).
        path: file on disk the engine readers open.
        key: content key (SHA-1 prefix for uploads; path + mtime + size digest for dataset files).
        source: ``"upload"`` or ``"dataset"``.
        case_id: case id when the image comes from a dataset (its ground truth can be shown).
        dataset: that dataset's path.
    """

    name: str
    path: Path
    key: str
    source: str = "upload"
    case_id: str | None = None
    dataset: str | None = None


def fmt_seconds(s: float) -> str:
    """``0.042`` → ``"42 ms"``, ``1.5`` → ``"1.50 s"``."""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def file_key(path: str | Path) -> str:
    """Cheap content key of a file on disk: digest of its resolved path, mtime and size."""
    p = Path(path)
    st_ = p.stat()
    return hashlib.sha1(f"{p.resolve()}|{st_.st_mtime_ns}|{st_.st_size}".encode()).hexdigest()[:16]


def upload_inputs(files: Iterable[UploadedFile]) -> list[InputImage]:
    """Store ``st.file_uploader`` files in the workspace (content-addressed) as :class:`InputImage`."""
    from ui.loaders import save_upload

    out = []
    for f in files or []:
        path = save_upload(f)
        out.append(InputImage(name=Path(f.name).name, path=path, key=path.parent.name, source="upload"))
    return out


def unique_inputs(inputs: Sequence[InputImage]) -> list[InputImage]:
    """Drop repeated images (same content key) and make display names unique (``name (2).tif``)."""
    from dataclasses import replace

    out: list[InputImage] = []
    keys: set[str] = set()
    names: set[str] = set()
    for inp in inputs:
        if inp.key in keys:
            continue
        keys.add(inp.key)
        name, n = inp.name, 1
        stem, suffix = Path(inp.name).stem, Path(inp.name).suffix
        while name in names:
            n += 1
            name = f"{stem} ({n}){suffix}"
        names.add(name)
        out.append(inp if name == inp.name else replace(inp, name=name))
    return out


def demo_cases(dataset: Dataset, n: int = 3) -> list[Case]:
    """A few cases of ``dataset`` worth showing first: labelled ones with a mask, then one without.

    Deterministic (dataset order); falls back to any cases when nothing is labelled.
    """
    positive = [c for c in dataset.cases if c.labelled and c.has_mask]
    negative = [c for c in dataset.cases if c.labelled and not c.has_mask]
    picked = positive[: max(1, n - 1)] + negative[:1]
    if len(picked) < n:
        picked += [c for c in dataset.cases if c not in picked][: n - len(picked)]
    return picked[:n]


def dataset_input(dataset: Dataset, case: Case) -> InputImage:
    """An :class:`InputImage` for a dataset case (its ground truth is known to the page)."""
    return InputImage(name=str(case.case_id), path=Path(case.image_path), key=file_key(case.image_path),
                      source="dataset", case_id=str(case.case_id), dataset=str(dataset.root))


def check_supported(path: Path, name: str) -> None:
    """Raise a readable :class:`ReadError` for file types the readers do not know."""
    from engine.io import reader_kind

    try:
        reader_kind(path)
    except (ConfigError, ReadError):
        raise ReadError(f"unsupported file type {Path(name).suffix or '(no suffix)'}", path=name,
                        hint="upload TIFF (.tif), DICOM (.dcm), PNG or JPEG images") from None


@st.cache_resource(show_spinner=False, max_entries=64)
def _decode(path: str, key: str) -> tuple[np.ndarray, dict[str, Any]]:
    from engine.io import load_image

    img, meta = load_image(path)
    img.setflags(write=False)
    return img, meta


def decode_image(inp: InputImage) -> tuple[np.ndarray, dict[str, Any]]:
    """Decoded image float32 (C,H,W) in [0,1] and its reader metadata, cached by content key.

    Raises:
        ReadError: unsupported type, corrupt or multi-page file; the message names the file as
            the user knows it (the upload's name, not the workspace copy).
    """
    check_supported(inp.path, inp.name)
    try:
        return _decode(str(inp.path), inp.key)
    except WorkbenchError as exc:
        raise ReadError(exc.message, path=inp.name, hint=exc.hint) from None


def error_text(exc: BaseException, name: str) -> str:
    """A one-paragraph message for a failed image that names the file."""
    if isinstance(exc, WorkbenchError):
        text = str(exc)
        return text if text.startswith(name) else f"{name}: {text}"
    return f"{name}: unexpected error ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------------------------------
# Probabilities (cached) and post-processing


@dataclass
class ProbResult:
    """Cached model output of one image.

    Attributes:
        probs: float32 (K,H,W) softmax probabilities at the image's size.
        presence: presence-head probability or None.
        gate: P(present) from the presence classifier that gates the model, or None.
        seconds: the engine's per-stage wall times when the model ran.
        wall_s: wall time of the prediction call.
        cached: True when this call was served from the cache.
    """

    probs: np.ndarray
    presence: float | None
    seconds: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    cached: bool = False
    gate: float | None = None  # the gating presence classifier's P(present), None without a gate

    @property
    def model_s(self) -> float:
        """Time spent running the network (``model`` stage; falls back to the wall time)."""
        return float(self.seconds.get("model", self.wall_s))


def model_key(predictor: Predictor) -> str:
    """Identity of a loaded model for caching: name, weights hash, device."""
    card = predictor.card
    gate = getattr(predictor, "gate", None)
    g = f"|gate:{gate.card.name}:{gate.card.tensors_sha256}" if gate is not None else ""
    return f"{card.name}|{card.tensors_sha256 or card.created}|{predictor.device}{g}"


def _prob_cache() -> "OrderedDict[tuple[str, str, str], ProbResult]":
    cache = st.session_state.get(state.Predict.PROB_CACHE)
    if not isinstance(cache, OrderedDict):
        cache = OrderedDict()
        st.session_state[state.Predict.PROB_CACHE] = cache
    return cache


def model_runs() -> int:
    """How many forward passes this session has run (cache misses)."""
    return int(st.session_state.get(state.Predict.MODEL_RUNS, 0))


def predict_probs(predictor: Predictor, inp: InputImage, img: np.ndarray, tta: str = "none") -> ProbResult:
    """Probabilities of ``img`` from ``predictor`` with ``tta``, from the session cache when possible.

    A miss runs the model once (:meth:`engine.inference.Predictor.predict_raw`: no post-processing)
    and stores the result; the cache is bounded by :data:`PROB_CACHE_ENTRIES` and
    :data:`PROB_CACHE_BYTES`. Masks are made from it with :func:`engine.inference.finish_mask`.
    """
    from engine.inference import check_tta

    check_tta(tta)
    cache = _prob_cache()
    key = (inp.key, model_key(predictor), tta)
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return ProbResult(hit.probs, hit.presence, hit.seconds, hit.wall_s, cached=True, gate=hit.gate)
    t0 = time.perf_counter()
    pred = predictor.predict_raw(img, tta=tta)
    wall = time.perf_counter() - t0
    st.session_state[state.Predict.MODEL_RUNS] = model_runs() + 1
    probs = np.ascontiguousarray(pred.probs, dtype=np.float32)
    probs.setflags(write=False)
    res = ProbResult(probs, pred.presence, dict(pred.seconds), wall, cached=False, gate=pred.gate)
    cache[key] = res
    total = sum(r.probs.nbytes for r in cache.values())
    while len(cache) > 1 and (len(cache) > PROB_CACHE_ENTRIES or total > PROB_CACHE_BYTES):
        _, old = cache.popitem(last=False)
        total -= old.probs.nbytes
    return res


def post_config(card_post: PostProcessConfig, threshold: float | None = None, min_area: int | None = None,
                keep_largest: int | None = None, fill_holes: bool | None = None,
                presence_threshold: float | None = None, use_triplet: bool = True) -> PostProcessConfig:
    """The card's :class:`~engine.postprocess.PostProcessConfig` with the page's overrides.

    ``None`` keeps the card's value. Moving the threshold away from the card's drops the card's
    per-class thresholds (the one slider then rules every class). ``presence_threshold`` 0 turns
    the presence gate off. ``use_triplet=False`` drops the card's triplet gate.

    Example:
        >>> from engine.postprocess import PostProcessConfig
        >>> post_config(PostProcessConfig(threshold=0.5), threshold=0.3, min_area=10).min_area
        10
    """
    changes: dict[str, Any] = {}
    if threshold is not None and float(threshold) != float(card_post.threshold):
        changes.update(threshold=float(threshold), class_thresholds=None)
    if min_area is not None:
        changes["min_area"] = int(min_area)
    if keep_largest is not None:
        changes["keep_largest"] = int(keep_largest)
    if fill_holes is not None:
        changes["fill_holes"] = bool(fill_holes)
    if presence_threshold is not None:
        changes["presence_threshold"] = float(presence_threshold) if presence_threshold > 0 else None
    if not use_triplet:
        changes["triplet"] = None
    return card_post.replace(**changes) if changes else card_post


def class_areas(mask: np.ndarray, labels: Mapping[int, str]) -> dict[str, int]:
    """Pixels per foreground class name."""
    counts = np.bincount(np.asarray(mask, np.int64).ravel(), minlength=max(labels) + 1)
    return {labels[k]: int(counts[k]) for k in sorted(labels) if k != 0}


@dataclass
class PredictedImage:
    """One processed input: decoded image, cached probabilities, current mask, timings (s).

    ``decode_s``/``post_s`` are measured on this run; ``total_s`` = decode + prediction (when
    the model ran on this run) + post-processing.
    """

    inp: InputImage
    img: np.ndarray
    meta: dict[str, Any]
    res: ProbResult
    mask: np.ndarray
    decode_s: float = 0.0
    post_s: float = 0.0
    gate_threshold: float | None = None  # the gate threshold the mask was made with (None = ungated)

    @property
    def total_s(self) -> float:
        return self.decode_s + (0.0 if self.res.cached else self.res.wall_s) + self.post_s


def run_batch(predictor: Predictor, inputs: Sequence[InputImage], tta: str, post: PostProcessConfig,
              progress: ProgressFn | None = None, gate_threshold: float | None = None
              ) -> tuple[list[PredictedImage], list[str]]:
    """Decode, predict (cached) and post-process every input; a bad file never stops the batch.

    Returns:
        ``(results in input order, error messages naming each failed file)``.
    """
    from engine.inference import finish_mask

    done: list[PredictedImage] = []
    errors: list[str] = []
    for i, inp in enumerate(inputs):
        try:
            t0 = time.perf_counter()
            img, meta = decode_image(inp)
            t1 = time.perf_counter()
            res = predict_probs(predictor, inp, img, tta)
            t2 = time.perf_counter()
            mask = finish_mask(res.probs, post, presence=res.presence, gate=res.gate, gate_threshold=gate_threshold)
            t3 = time.perf_counter()
            done.append(PredictedImage(inp, img, meta, res, mask, decode_s=t1 - t0, post_s=t3 - t2,
                                       gate_threshold=gate_threshold if res.gate is not None else None))
        except Exception as exc:  # noqa: BLE001 - reported per file, the others go on
            errors.append(error_text(exc, inp.name))
        if progress:
            progress(i + 1, len(inputs), f"predicting {inp.name}")
    return done, errors


@st.cache_resource(show_spinner=False, max_entries=64)
def _ground_truth(dataset: str, case_id: str, key: str) -> np.ndarray | None:
    from ui.loaders import load_dataset

    ds = load_dataset(dataset, options=None)
    case = ds.case(case_id)
    if not case.labelled:
        return None
    gt = ds.load_mask(case)
    gt.setflags(write=False)
    return gt


def ground_truth(inp: InputImage) -> tuple[np.ndarray | None, dict[int, str] | None]:
    """Ground truth and label map of a dataset input (``(None, None)`` for uploads/unlabelled)."""
    if inp.source != "dataset" or not inp.dataset or inp.case_id is None:
        return None, None
    from ui.loaders import load_dataset

    ds = load_dataset(inp.dataset, options=None)
    return _ground_truth(inp.dataset, inp.case_id, inp.key), dict(ds.labels)


def summary_frame(items: Sequence[PredictedImage], labels: Mapping[int, str]) -> pd.DataFrame:
    """pandas DataFrame, one row per image: size, source, area per class, presence, timings."""
    import pandas as pd

    rows = []
    for it in items:
        h, w = it.mask.shape
        row: dict[str, Any] = {"image": it.inp.name, "size": f"{h}×{w}",
                               "source": "dataset" if it.inp.source == "dataset" else "upload"}
        for name, px in class_areas(it.mask, labels).items():
            row[f"{name} (px)"] = px
        row["presence"] = it.res.presence
        if it.res.gate is not None:
            row["P(present), classifier"] = round(float(it.res.gate), 4)
        row["model s"] = round(it.res.model_s, 3)
        row["total s"] = round(it.total_s, 3)
        row["cached"] = it.res.cached
        rows.append(row)
    df = pd.DataFrame(rows)
    if "presence" in df and df["presence"].isna().all():
        df = df.drop(columns="presence")
    return df


# ---------------------------------------------------------------------------------------------
# Metadata


def safe_meta_rows(meta: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows ``{"field", "value"}`` for the metadata panel: the PHI-free DICOM table fields and the
    basic image facts. Patient name/ID, birth date, institution and every other
    :data:`engine.dicom_meta.PHI_KEYWORDS` entry are never included, whatever ``meta`` holds.
    """
    from engine.dicom_meta import PHI_KEYWORDS, SAFE_COLUMNS

    phi = {k.lower() for k in PHI_KEYWORDS}
    basic = ("format", "height", "width", "channels", "dtype", "bit_depth")
    rows = []
    for k in list(SAFE_COLUMNS) + [b for b in basic if b not in SAFE_COLUMNS]:
        if k.lower() in phi or k not in meta:
            continue
        v = meta[k]
        if v is None or v == "":
            continue
        if isinstance(v, (list, tuple)):
            v = " × ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
        rows.append({"field": k, "value": str(v)})
    return rows


def is_dicom(meta: Mapping[str, Any]) -> bool:
    return str(meta.get("format", "")).lower() == "dicom"


# ---------------------------------------------------------------------------------------------
# Downloads (bytes)


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """The label map as an 8-bit palette PNG (index = class id, drawn in class colours so it is not
    black in a viewer), exactly as :func:`engine.io.write_mask_png` writes it (same checks, same encoder)."""
    from engine.io import write_mask_png

    with tempfile.TemporaryDirectory(prefix="segwb-mask-") as tmp:
        path = write_mask_png(Path(tmp) / "mask.png", mask, palette=True)
        return path.read_bytes()


def overlay_rgb(img: np.ndarray, mask: np.ndarray, alpha: float = 0.45, hidden: Sequence[int] = (),
                contour: bool = True) -> np.ndarray:
    from engine.visualize import overlay

    return overlay(img, mask, alpha=alpha, contour=contour, hidden=tuple(hidden))


def overlay_png_bytes(img: np.ndarray, mask: np.ndarray, alpha: float = 0.45, hidden: Sequence[int] = (),
                      contour: bool = True) -> bytes:
    from engine.visualize import png_bytes

    return png_bytes(overlay_rgb(img, mask, alpha, hidden, contour))


def rle_strings(mask: np.ndarray) -> dict[str, str]:
    """The foreground (any class) as RLE in both competitions' conventions.

    ``kaggle``: Ultrasound Nerve Segmentation, ``start length`` pairs, 1-based, column-major,
    ``""`` when empty. ``siim``: SIIM-ACR Pneumothorax, relative offsets, ``-1`` when empty.
    """
    from engine.rle import encode

    fg = np.asarray(mask) > 0
    return {"kaggle": encode(fg, "kaggle"), "siim": encode(fg, "siim")}


def rle_preview(rle: str, max_chars: int = 4000) -> tuple[str, int]:
    """The leading whole ``start length`` pairs of ``rle`` that fit in ``max_chars`` characters,
    and how many pairs were left out (0 when all fit). Never cuts a pair or a number in two."""
    if len(rle) <= max_chars:
        return rle, 0
    toks = rle.split()
    used, n = 0, 0
    while n + 1 < len(toks):
        step = len(toks[n]) + len(toks[n + 1]) + (2 if n else 1)
        if used + step > max_chars:
            break
        used += step
        n += 2
    return " ".join(toks[:n]), (len(toks) - n) // 2


def image_ids(name: str, meta: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Row ids for the two CSV formats: Kaggle ``img`` = file stem; SIIM ``ImageId`` = the
    DICOM SOPInstanceUID when known, else the file stem."""
    stem = Path(name).stem
    sop = (meta or {}).get("sop_instance_uid")
    return {"kaggle": stem, "siim": str(sop) if sop else stem}


def rle_csv_bytes(items: Sequence[tuple[str, np.ndarray]], convention: str) -> bytes:
    """A submission CSV for ``(image id, mask)`` pairs, written by the engine's writers:
    ``kaggle`` → ``img,pixels`` (:func:`engine.rle.write_kaggle_uns_submission`), ``siim`` →
    ``ImageId,EncodedPixels`` one row per image (:func:`engine.rle.write_siim_submission`)."""
    from engine.rle import CONVENTIONS, write_kaggle_uns_submission, write_siim_submission

    if convention not in CONVENTIONS:
        from engine.errors import unknown_name

        raise unknown_name("RLE convention", convention, CONVENTIONS)
    items = [(i, np.asarray(m) > 0) for i, m in items]
    with tempfile.TemporaryDirectory(prefix="segwb-rle-") as tmp:
        path = Path(tmp) / "rle.csv"
        if convention == "kaggle":
            write_kaggle_uns_submission(path, items)
        else:
            write_siim_submission(path, items)
        return path.read_bytes()


def masks_zip_bytes(items: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """A ZIP of ``<name>_mask.png`` label maps (see :func:`mask_png_bytes`)."""
    buf = io.BytesIO()
    used: set[str] = set()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, mask in items:
            from engine.fsutil import safe_name

            base = f"{safe_name(Path(str(name).replace(chr(92), '/')).stem)}_mask"  # a zip entry never climbs out
            arc, n = f"{base}.png", 1
            while arc in used:
                n += 1
                arc = f"{base}_{n}.png"
            used.add(arc)
            zf.writestr(arc, mask_png_bytes(mask))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Compare page: evaluations and the comparison table


def find_evaluation(dataset: Dataset, card: ModelCard, case_ids: Sequence[str], tta: str = "none"
                    ) -> EvalResult | None:
    """A cached evaluation of ``card``'s weights on ``dataset`` whose saved predictions cover
    ``case_ids`` with the card's default post-processing and ``tta``, or None.

    Lets the Compare page reuse the Metrics dashboard's evaluations instead of predicting again.
    """
    from engine.evaluation import list_evals, load_eval, prediction_path

    want_post = card.postprocess.to_dict()
    for entry in list_evals(dataset):
        if entry.get("model") != card.name:
            continue
        res = load_eval(entry["folder"])
        if res is None:
            continue
        s = res.summary.get("settings") or {}
        if (s.get("weights_sha256") != card.tensors_sha256 or s.get("tta", "none") != tta
                or s.get("post") != want_post or not s.get("save_predictions", True)):
            continue
        have = set(res.per_image["case_id"].astype(str))
        if not set(case_ids) <= have:
            continue
        if all(prediction_path(res.folder, c).exists() for c in case_ids):
            return res
    return None


def evaluate_models(dataset: Dataset, names: Sequence[str], case_ids: Sequence[str], tta: str = "none",
                    device: str | None = None, progress: ProgressFn | None = None) -> dict[str, EvalResult]:
    """``{model name: EvalResult}`` for ``case_ids``: reused from the disk cache when an evaluation
    covers them, else :func:`engine.evaluation.evaluate` (saved predictions, no sweep)."""
    from engine.evaluation import EvalConfig, evaluate
    from engine.progress import scaled
    from ui import state
    from ui.loaders import load_predictor

    out: dict[str, EvalResult] = {}
    n = len(names)
    for i, name in enumerate(names):
        pred = load_predictor(name, device)
        found = find_evaluation(dataset, pred.card, case_ids, tta)
        if found is not None:
            out[name] = found
            if progress:
                progress(i + 1, n, f"{name}: cached evaluation")
            continue
        cfg = EvalConfig(tta=tta, sweep=False, save_predictions=True,
                         device=device or state.current_device())
        out[name] = evaluate(pred, dataset, cfg, case_ids=list(case_ids),
                             progress=scaled(progress, i / n, (i + 1) / n) if progress else None)
    return out


def comparison_key(dataset: Dataset, results: Mapping[str, EvalResult], case_ids: Sequence[str]) -> str:
    h = hashlib.sha1(str(dataset.root).encode())
    for name, res in results.items():
        h.update(f"{name}|{res.folder}|{res.summary.get('key')}".encode())
    h.update("\n".join(case_ids).encode())
    return h.hexdigest()[:16]


def comparison_table(dataset: Dataset, results: Mapping[str, EvalResult], case_ids: Sequence[str],
                     progress: ProgressFn | None = None) -> pd.DataFrame:
    """:func:`engine.compare.compare_models`, kept per session so reruns do not re-read masks."""
    from engine.compare import compare_models

    tables = st.session_state.setdefault(state.Compare.TABLES, {})
    key = comparison_key(dataset, results, case_ids)
    if key not in tables:
        if len(tables) > 8:
            tables.clear()
        tables[key] = compare_models(dataset, results, case_ids=case_ids, progress=progress)
    return tables[key]


# ---------------------------------------------------------------------------------------------
# Renderers


def show_image(rgb: np.ndarray, caption: str | None = None, max_side: int = 900) -> None:
    from engine.visualize import resize_rgb

    st.image(resize_rgb(rgb, max_side), caption=caption, width="stretch")


def class_toggles(labels: Mapping[int, str], key: str) -> list[int]:
    """One checkbox per foreground class; returns the hidden class ids."""
    fg = [k for k in sorted(labels) if k != 0]
    if len(fg) <= 1:
        return []
    cols = st.columns(min(len(fg), 6))
    hidden = []
    for i, k in enumerate(fg):
        if not cols[i % len(cols)].checkbox(f"Show {labels[k]}", value=True, key=f"{key}_cls{k}"):
            hidden.append(k)
    return hidden


def render_side_by_side(img: np.ndarray, masks: Mapping[str, np.ndarray], labels: Mapping[str, Mapping[int, str]],
                        gt: np.ndarray | None = None, gt_labels: Mapping[int, str] | None = None,
                        key: str = "cmp", alpha: float = 0.45) -> ImageComparison:
    """Overlays of every model (and the ground truth), a disagreement map with legend and
    pixel counts, inter-model Dice and Dice vs ground truth. Returns the ImageComparison."""
    from engine.compare import compare_masks, model_letters
    from engine.visualize import DISAGREEMENT_COLOURS, disagreement_map
    from ui.widgets import colour_legend, legend

    names = list(masks)
    letters = model_letters(names)
    cmp = compare_masks(masks, gt=gt, labels=labels, gt_labels=gt_labels)
    panels: list[tuple[str, np.ndarray]] = []
    if gt is not None:
        panels.append(("Ground truth", overlay_rgb(img, gt, alpha)))
    for letter, name in letters.items():
        area = cmp.areas[name]["foreground"]
        panels.append((f"{letter.upper()}: {name} ({area:,} px)", overlay_rgb(img, masks[name], alpha)))
    cols = st.columns(len(panels))
    for col, (cap, rgb) in zip(cols, panels):
        with col:
            show_image(rgb, cap, max_side=600)
    all_labels: dict[int, str] = {}
    for lab in list(labels.values()) + ([gt_labels] if gt_labels else []):
        for k, v in lab.items():
            all_labels.setdefault(int(k), v)
    legend(all_labels)
    st.markdown("#### Disagreement map")
    pairs = [(a, b) for i, a in enumerate(letters) for b in list(letters)[i + 1:]]
    if len(pairs) > 1:
        choice = st.radio("Models", [f"{a.upper()} vs {b.upper()}" for a, b in pairs], horizontal=True,
                          key=f"{key}_pair")
        a, b = pairs[[f"{x.upper()} vs {y.upper()}" for x, y in pairs].index(choice)]
    else:
        a, b = pairs[0]
    rgb, counts = disagreement_map(gt, masks[letters[a]], masks[letters[b]], img)
    c1, c2 = st.columns([3, 2])
    with c1:
        show_image(rgb, f"A = {letters[a]}, B = {letters[b]}" + ("" if gt is not None else " (no ground truth)"),
                   max_side=700)
    with c2:
        st.caption("Pixels by who calls them foreground (A and B as named below the map):")
        if counts:
            colour_legend(DISAGREEMENT_COLOURS, counts)
        else:
            st.write("No foreground anywhere: ground truth and both models are empty.")
        pd_ = cmp.dice_pairs[a + b]
        st.metric(f"Dice {a.upper()} vs {b.upper()} (foreground)", f"{pd_['foreground']:.3f}")
    st.markdown("#### Agreement")
    st.dataframe(cmp.pair_table(), hide_index=True, width="stretch")
    st.dataframe(cmp.model_table(), hide_index=True, width="stretch")
    st.caption("Dice of two empty masks counts as 1 (they agree). Models with different classes are "
               "compared on the foreground (any class) and on the class names they share.")
    return cmp
