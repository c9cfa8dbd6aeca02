"""Self-describing, offline weights: ``<folder>/model.safetensors`` + ``<folder>/card.json``.

The card says everything needed to rebuild and use the model without any code or network:
architecture spec, label map, preprocessing, post-processing defaults, training data and
split, metrics, license attribution and the command that reproduces it. Loading never
unpickles (safetensors only) and never touches the network. A card that does not match
the tensors (missing/unexpected keys, wrong shapes, hash mismatch after a crash between
the two writes) raises :class:`~engine.errors.CheckpointError`.

Weights are found by name in the search path: ``./weights`` of the repository, then
``<workspace>/models`` (where training exports), or given as a folder path.

Two kinds of model share this code (``kind``): ``segment`` (a :class:`ModelCard` in ``card.json``)
and ``classify`` (a presence classifier's :class:`ClassifierCard` in ``classifier.json``, so a
classifier never appears in the segmentation pickers). Saving, resolving, reading, loading and
listing are the same functions for both.

A segmentation card may name a presence classifier that gates it (:class:`GateConfig`, the
two-stage pipeline) and may store a :mod:`~engine.domain_profile` (out-of-domain profile) of its training inputs.

Example:
    >>> save_checkpoint("weights/my-model", net, ModelCard(name="my-model", spec=net.spec,
    ...                 labels={0: "background", 1: "lung"}, preprocess=Preprocess(size=(256, 256))))  # doctest: +SKIP
    >>> net, card = load_checkpoint("my-model")                                                    # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from engine.augment import Preprocess
from engine.config import JsonConfig
from engine.errors import CheckpointError, ConfigError, WorkbenchError
from engine.fsutil import atomic_path, atomic_write_json, read_json
from engine.models import ClassifierSpec, ModelSpec
from engine.postprocess import PostProcessConfig
from engine.workspace import Workspace

FORMAT = "segwb-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CLASSIFIER_CARD = "classifier.json"
CLASSIFIER_FORMAT = "segwb-classifier"
CLASSIFIER_VERSION = 1
KINDS = ("segment", "classify")


@dataclass(frozen=True)
class GateConfig(JsonConfig):
    """The presence classifier that gates a segmenter (classifier → segmenter).

    Attributes:
        weights: classifier weights name or folder (``demo-nerve-presence``).
        threshold: ``P(present) < threshold`` → the mask is emptied; None = the classifier card's.
    """

    weights: str
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not str(self.weights).strip():
            raise ConfigError("gate.weights is empty", hint="name a presence classifier (see `weights list`)")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"gate threshold must be in [0, 1], got {self.threshold}")
REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class ModelCard(JsonConfig):
    """Everything about a trained model except its tensors.

    Attributes:
        name: short id, also the folder name (``nerve-vessel-us``).
        spec: architecture to rebuild.
        labels: ``{class id: name}`` including 0 = background; K = ``spec.num_classes``.
        preprocess: how images become model input (stored with the model).
        postprocess: default post-processing for predictions.
        tile: inference tile (H, W) for overlap-tile prediction of large images with the
            ``pad`` policy; None = whole image.
        description: one paragraph for people.
        training: data (path/name), split description, config, epochs, seed, command.
        metrics: measured validation figures (with the split and empty policy they used).
        license: data license and the attribution text to show.
        dtype: tensor dtype on disk (``float32`` or ``float16``); weights load as float32.
        synthetic: trained on synthetic phantoms only (demo models).
        gate: the presence classifier that gates this segmenter by default (None = no gate).
        fingerprint: compact description of the training inputs (:mod:`engine.domain_profile`),
            used to warn when an input is unlike them; empty for older cards.
    """

    name: str
    spec: ModelSpec
    labels: dict[int, str]
    preprocess: Preprocess = Preprocess()
    postprocess: PostProcessConfig = PostProcessConfig()
    tile: tuple[int, int] | None = None
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    license: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    synthetic: bool = False
    gate: GateConfig | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    created: str = ""
    tensors_sha256: str = ""
    n_parameters: int = 0

    def __post_init__(self) -> None:
        labels = {int(k): str(v) for k, v in self.labels.items()}
        object.__setattr__(self, "labels", labels)
        if sorted(labels) != list(range(self.spec.num_classes)):
            raise ConfigError(f"model card '{self.name}': labels {labels} "
                              f"do not name classes 0..{self.spec.num_classes - 1}",
                              hint="give one name per class id, 0 = background")
        if self.preprocess.in_channels != self.spec.in_channels:
            raise ConfigError(f"model card '{self.name}': preprocess.in_channels={self.preprocess.in_channels} "
                              f"but the model takes {self.spec.in_channels}", hint="make them equal")

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def foreground(self) -> dict[int, str]:
        return {k: v for k, v in self.labels.items() if k != 0}


@dataclass(frozen=True)
class ClassifierCard(JsonConfig):
    """Everything about a trained presence classifier except its tensors (``classifier.json``).

    Attributes:
        name: short id (folder name).
        classifier: :class:`~engine.models.ClassifierSpec` to rebuild the network.
        preprocess: how images become input (same :class:`~engine.augment.Preprocess` as segmenters).
        threshold: ``P(present) >= threshold`` → "present".
        labels: ``{0: "absent", 1: <structure>}`` — what "present" means (the segmenter's class).
        description, training, metrics, license, dtype, synthetic, fingerprint: as in :class:`ModelCard`.
    """

    name: str
    classifier: ClassifierSpec
    preprocess: Preprocess = Preprocess()
    threshold: float = 0.5
    labels: dict[int, str] = field(default_factory=dict)
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    license: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    synthetic: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)
    format: str = CLASSIFIER_FORMAT
    format_version: int = CLASSIFIER_VERSION
    created: str = ""
    tensors_sha256: str = ""
    n_parameters: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", {int(k): str(v) for k, v in self.labels.items()})
        if self.preprocess.in_channels != self.classifier.in_channels:
            raise ConfigError(f"classifier card '{self.name}': preprocess.in_channels="
                              f"{self.preprocess.in_channels} but the classifier takes {self.classifier.in_channels}",
                              hint="make them equal")
        if not 0 <= float(self.threshold) <= 1:
            raise ConfigError(f"classifier threshold must be in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class _Kind:
    """How one model family is stored: card class and file, format tag, what to tell people."""

    card_cls: type[ModelCard] | type[ClassifierCard]
    card_file: str
    format: str
    version: int
    what: str
    train_hint: str


_KINDS = {
    "segment": _Kind(ModelCard, CARD_FILE, FORMAT, FORMAT_VERSION, "model",
                     "train a model (`python -m engine train`) or give a folder with model.safetensors + card.json"),
    "classify": _Kind(ClassifierCard, CLASSIFIER_CARD, CLASSIFIER_FORMAT, CLASSIFIER_VERSION, "classifier",
                      "train one with `python -m engine train --task classify`"),
}


def _kind(kind: str) -> _Kind:
    if kind not in _KINDS:
        raise ConfigError(f"unknown model kind {kind!r}", hint="use " + " or ".join(KINDS))
    return _KINDS[kind]


def card_kind(card: ModelCard | ClassifierCard) -> str:
    """``segment`` for a :class:`ModelCard`, ``classify`` for a :class:`ClassifierCard`."""
    return "classify" if isinstance(card, ClassifierCard) else "segment"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(folder: str | Path, model: Any, card: ModelCard | ClassifierCard, dtype: str | None = None) -> Path:
    """Write ``model.safetensors`` then the card (``card.json`` / ``classifier.json``) atomically into ``folder``.

    Args:
        folder: destination folder (created).
        model: a :class:`~engine.models.SegmentationNet` (or any module whose state dict matches ``card.spec``),
            or a :class:`~engine.models.PresenceClassifier` for a :class:`ClassifierCard`.
        card: the model card; ``created``, ``tensors_sha256``, ``n_parameters`` and ``dtype`` are filled in.
        dtype: ``float32`` (default: the card's) or ``float16`` to halve the file size.

    Returns:
        The folder.
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = dtype or card.dtype
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"unsupported weights dtype {dtype!r}", hint="use float32 or float16")
    target = getattr(torch, dtype)
    module = getattr(model, "module", model)  # DDP / SWA wrappers
    state = {}
    for k, v in module.state_dict().items():
        t = v.detach().cpu()
        if t.is_floating_point():
            t = t.to(target)
        state[k] = t.contiguous()
    n_params = int(sum(p.numel() for p in module.parameters()))
    kind = _kind(card_kind(card))
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": kind.format, "name": card.name})
    sha = _sha256(folder / WEIGHTS_FILE)
    final = card.replace(created=card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         tensors_sha256=sha, n_parameters=n_params, dtype=dtype)
    atomic_write_json(folder / kind.card_file, final.to_dict())
    return folder


def search_dirs(workspace: Workspace | None = None) -> list[Path]:
    """Folders searched for weights by name: repo ``weights/``, then ``<workspace>/models``."""
    ws = workspace or Workspace()
    return [REPO_WEIGHTS, ws.root / "models"]


def resolve_weights(name_or_dir: str | Path, workspace: Workspace | None = None, kind: str = "segment") -> Path:
    """Folder of a weights name (``lung-cxr``) or path. Raises CheckpointError listing what exists.

    ``kind="classify"`` resolves presence classifiers (folders with ``classifier.json``)."""
    k = _kind(kind)
    p = Path(name_or_dir).expanduser()
    if (p / k.card_file).exists() or (kind == "segment" and (p / WEIGHTS_FILE).exists()
                                       and not (p / CLASSIFIER_CARD).exists()):
        return p
    if p.name in (k.card_file, WEIGHTS_FILE) and (p.parent / k.card_file).exists():
        return p.parent
    for d in search_dirs(workspace):
        cand = d / str(name_or_dir)
        if (cand / k.card_file).exists():
            return cand
    names = [w["name"] for w in list_weights(workspace, kind=kind)]
    raise CheckpointError(f"no {'weights' if kind == 'segment' else 'classifier'} named {str(name_or_dir)!r}",
                          hint=("available: " + ", ".join(names)) if names else k.train_hint)


@overload
def read_card(folder: str | Path, kind: Literal["segment"] = "segment") -> ModelCard: ...
@overload
def read_card(folder: str | Path, kind: Literal["classify"]) -> ClassifierCard: ...
@overload
def read_card(folder: str | Path, kind: str) -> ModelCard | ClassifierCard: ...
def read_card(folder: str | Path, kind: str = "segment") -> ModelCard | ClassifierCard:
    """Read and validate the card (``card.json``; ``classifier.json`` for ``kind="classify"``) in ``folder``.

    Returns:
        :class:`ModelCard` or :class:`ClassifierCard`.
    """
    k = _kind(kind)
    folder = Path(folder)
    path = folder / k.card_file
    if not path.exists():
        raise CheckpointError(f"{k.card_file} is missing", path=folder,
                              hint=f"a weights folder needs model.safetensors and {k.card_file}; "
                                   f"re-export the {k.what}")
    try:
        data = read_json(path)
    except WorkbenchError as exc:
        raise CheckpointError(exc.message, path=path, hint=f"the card is corrupt; re-export the {k.what}") from None
    if not isinstance(data, dict) or data.get("format") != k.format:
        raise CheckpointError(f"not a segwb {k.what} card", path=path,
                              hint=f"re-export the {k.what} with this workbench")
    if int(data.get("format_version", 0)) > k.version:
        raise CheckpointError(f"card format version {data.get('format_version')} is newer than this program "
                              f"supports ({k.version})", path=path, hint="upgrade the workbench")
    check_card_sizes(data, path)
    try:
        return k.card_cls.from_dict(data)
    except ConfigError as exc:
        raise CheckpointError(f"invalid {k.what} card: {exc.message}", path=path, hint=exc.hint) from None


def _build(card: ModelCard | ClassifierCard):
    from engine.models import build_classifier, build_model

    if isinstance(card, ClassifierCard):
        return build_classifier(card.classifier, load_pretrained=False)
    return build_model(card.spec, load_pretrained=False)


#: Upper bounds a model card's sizes must respect before anything is built or allocated. Far above
#: every model this workbench trains (base width 64, input ≤ 1024², ≤ 32 classes); a card beyond
#: them is damaged or hostile (``base_channels: 512`` with a 40000² input asks for terabytes).
CARD_LIMITS: dict[str, int] = {"base_channels": 256, "decoder_channel": 2048, "in_channels": 16,
                               "num_classes": 256, "encoder_depth": 8, "input_side": 8192}


def check_card_sizes(data: Any, path: str | Path | None = None) -> None:
    """Refuse a raw card dict whose sizes are absurd, before any model is built.

    Checks ``spec.base_channels``, ``spec.decoder_channels``, ``spec.in_channels``,
    ``spec.num_classes``, ``spec.encoder_depth`` against :data:`CARD_LIMITS`, and
    ``preprocess.size`` / ``tile`` against the side limit and the image pixel limit
    (:func:`engine.io.limits.max_pixels`).

    Raises:
        CheckpointError: naming the field, its value and the limit.
    """
    from engine.io.limits import max_pixels

    def refuse(what: str, value: Any, limit: Any) -> None:
        raise CheckpointError(f"model card asks for {what} = {value!r}, over the limit of {limit}", path=path,
                              hint="the card is damaged or not from this workbench; re-export the model")

    def as_int(what: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or int(value) != value:
            raise CheckpointError(f"model card field {what} = {value!r} is not a whole number", path=path,
                                  hint="the card is damaged; re-export the model")
        return int(value)

    if not isinstance(data, dict):
        return
    spec_data = data.get("spec")
    spec = spec_data if isinstance(spec_data, dict) else {}
    for key in ("base_channels", "in_channels", "num_classes", "encoder_depth"):
        if spec.get(key) is not None:
            v = as_int(f"spec.{key}", spec[key])
            if not 0 < v <= CARD_LIMITS[key]:
                refuse(f"spec.{key}", v, CARD_LIMITS[key])
    dec = spec.get("decoder_channels")
    for v in (dec if isinstance(dec, (list, tuple)) else [dec] if dec is not None else []):
        if not 0 < as_int("spec.decoder_channels", v) <= CARD_LIMITS["decoder_channel"]:
            refuse("spec.decoder_channels", dec, CARD_LIMITS["decoder_channel"])
    pre_data = data.get("preprocess")
    pre = pre_data if isinstance(pre_data, dict) else {}
    for what, size in (("preprocess.size", pre.get("size")), ("tile", data.get("tile"))):
        if size is None:
            continue
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise CheckpointError(f"model card field {what} = {size!r} is not (height, width)", path=path,
                                  hint="the card is damaged; re-export the model")
        h, w = as_int(what, size[0]), as_int(what, size[1])
        if max(h, w) > CARD_LIMITS["input_side"]:
            refuse(what, [h, w], f"{CARD_LIMITS['input_side']} pixels a side")
        channels = as_int("spec.in_channels", spec.get("in_channels", 1) or 1)
        if h * w * channels > max_pixels():
            refuse(f"{what} × channels", h * w * channels, f"{max_pixels():,} pixel values (--max-pixels)")


def load_checkpoint(name_or_dir: str | Path, device: str = "cpu", verify_hash: bool = True,
                    workspace: Workspace | None = None, kind: str = "segment"):
    """Rebuild the model from its card and load the tensors (float32, eval mode).

    Returns:
        ``(SegmentationNet, ModelCard)``; with ``kind="classify"`` ``(PresenceClassifier, ClassifierCard)``.

    Raises:
        CheckpointError: missing files, corrupt tensors, or a card that does not match them.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    k = _kind(kind)
    folder = resolve_weights(name_or_dir, workspace, kind=kind)
    card = read_card(folder, kind=kind)
    wpath = folder / WEIGHTS_FILE
    if not wpath.exists():
        raise CheckpointError("model.safetensors is missing", path=folder, hint=f"re-export the {k.what}")
    if verify_hash and card.tensors_sha256 and _sha256(wpath) != card.tensors_sha256:
        raise CheckpointError(f"model.safetensors does not match the hash in {k.card_file}", path=wpath,
                              hint=f"the folder was modified or a save was interrupted; re-export the {k.what}")
    try:
        state = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read tensors ({exc})", path=wpath,
                              hint="the file is corrupt; re-export it") from None
    try:
        model = _build(card)
    except WorkbenchError as exc:
        raise CheckpointError(f"card describes a model that cannot be built: {exc.message}", path=folder / k.card_file,
                              hint=exc.hint) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) e.g. {unexpected[:3]}")
        if wrong:
            w = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es) e.g. {w}: card {tuple(expected[w].shape)} "
                         f"vs file {tuple(state[w].shape)}")
        raise CheckpointError(f"{k.card_file} does not match model.safetensors: " + "; ".join(parts), path=folder,
                              hint="the card's spec (architecture, encoder, channels, classes) must be the one "
                                   f"the tensors were trained with; re-export the {k.what}")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    model.to(torch.device(device))
    return model, card


#: A model trained here whose validation Dice is below this is "weak": kept out of the pickers unless asked
#: (``$SEGWB_MIN_USEFUL_DICE`` overrides it; 0 lists every finished model).
MIN_USEFUL_DICE = 0.2
MIN_USEFUL_DICE_ENV = "SEGWB_MIN_USEFUL_DICE"


def min_useful_dice() -> float:
    """:data:`MIN_USEFUL_DICE`, or ``$SEGWB_MIN_USEFUL_DICE`` when it is a number."""
    try:
        return float(os.environ.get(MIN_USEFUL_DICE_ENV, "") or MIN_USEFUL_DICE)
    except ValueError:
        return MIN_USEFUL_DICE


def weak_reason(training: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Why a model trained here should stay out of the model pickers unless asked ('' when it is fine):
    its run failed or was cancelled, or its validation Dice is below :func:`min_useful_dice`."""
    end = str(training.get("end_state") or "")
    if end in ("failed", "cancelled"):
        return f"its training run {'was cancelled' if end == 'cancelled' else 'failed'}"
    dice, floor = metrics.get("val_dice"), min_useful_dice()
    if isinstance(dice, (int, float)) and not isinstance(dice, bool) and dice == dice and dice < floor:
        return f"validation Dice {dice:.3f} (below {floor:g})"
    return ""


def list_weights(workspace: Workspace | None = None, kind: str = "segment") -> list[dict[str, Any]]:
    """Every weights folder of one kind in the search path: name, folder, classes, size, metrics, origin
    (segmenters also arch/encoder/gate; classifiers backbone/threshold), and ``weak``: why a model
    trained here should stay out of the pickers unless asked ('' for usable and shipped models)."""
    k = _kind(kind)
    out = []
    seen: set[str] = set()
    for d in search_dirs(workspace):
        if not d.is_dir():
            continue
        for folder in sorted(p for p in d.iterdir() if (p / k.card_file).exists()):
            if folder.name in seen:
                continue
            seen.add(folder.name)
            entry: dict[str, Any] = {"name": folder.name, "folder": str(folder),
                                     "origin": "shipped" if d == REPO_WEIGHTS else "trained here"}
            try:
                card = read_card(folder, kind=kind)
                size = (folder / WEIGHTS_FILE).stat().st_size if (folder / WEIGHTS_FILE).exists() else 0
                entry.update(classes=[card.labels[i] for i in sorted(card.labels)], size_mb=round(size / 1e6, 2),
                             metrics=card.metrics, synthetic=card.synthetic, description=card.description,
                             weak="" if d == REPO_WEIGHTS else weak_reason(card.training or {}, card.metrics or {}))
                if isinstance(card, ClassifierCard):
                    entry.update(backbone=card.classifier.name, threshold=card.threshold,
                                 in_channels=card.classifier.in_channels)
                else:
                    entry.update(arch=card.spec.arch, encoder=card.spec.encoder,
                                 presence_head=card.spec.presence_head, in_channels=card.spec.in_channels,
                                 gate=card.gate.to_dict() if card.gate else None)
            except WorkbenchError as exc:
                entry["error"] = str(exc)
            out.append(entry)
    return out


def publish(run_best: str | Path, dest: str | Path, *, name: str | None = None, command: str | None = None,
            extra_training: dict[str, Any] | None = None, dtype: str | None = None) -> Path:
    """Copy a trained model (a run's ``best/`` folder) to ``dest`` (e.g. ``weights/<name>``) for shipping.

    The card gets the reproduce ``command``, ``extra_training`` entries (e.g. validation case ids)
    and, with ``dtype="float16"``, half-size tensors. Evaluations are added with :func:`add_evaluation`.

    Returns:
        ``dest``.
    """
    model, card = load_checkpoint(run_best, kind=folder_kind(run_best))
    training = dict(card.training)
    if command:
        training["command"] = command
    training.update(extra_training or {})
    for key in ("run_dir", "argv"):
        training.pop(key, None)  # machine-specific
    training = portable_paths(training)
    config = training.get("config")
    if isinstance(config, dict) and str(config.get("out") or "").startswith("/"):
        # a run folder outside the checkout names one machine: the reproduce script's folder instead
        training["config"] = {**config, "out": f".workspace/runs/{name or card.name}"}
    new = card.replace(name=name or card.name, training=training, created="", tensors_sha256="")
    return save_checkpoint(dest, model, new, dtype=dtype or card.dtype)


def portable_paths(obj: Any, root: str | Path | None = None) -> Any:
    """``obj`` (nested dicts/lists) with absolute paths inside the checkout ``root`` (default: the
    repository holding ``weights/``) or inside ``<root>/../shared`` (the shared data beside it) made
    relative to ``root``, so a shipped card names no machine's folders. Other paths are kept."""
    base = Path(root or REPO_WEIGHTS.parent).resolve()
    prefixes = (str(base).rstrip("/") + "/", str(base.parent / "shared").rstrip("/") + "/")
    if isinstance(obj, dict):
        return {k: portable_paths(v, base) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable_paths(v, base) for v in obj]
    if isinstance(obj, str) and obj.startswith(prefixes) and "\n" not in obj:
        return os.path.relpath(obj, base)
    return obj


def add_evaluation(folder: str | Path, entry: dict[str, Any]) -> ModelCard | ClassifierCard:
    """Append an evaluation record to ``card.metrics["evaluations"]`` (replacing one with the same ``id``)."""
    folder = Path(folder)
    kind = folder_kind(folder)
    card = read_card(folder, kind=kind)
    metrics = dict(card.metrics)
    evals = [e for e in metrics.get("evaluations", []) if e.get("id") != entry.get("id")]
    metrics["evaluations"] = evals + [portable_paths(entry)]
    new = card.replace(metrics=metrics)
    write_card(folder, new)
    return new


def write_card(folder: str | Path, card: ModelCard | ClassifierCard) -> Path:
    """Replace the card of an existing weights folder atomically (tensors and their hash unchanged)."""
    path = Path(folder) / _kind(card_kind(card)).card_file
    atomic_write_json(path, card.to_dict())
    return path


def folder_kind(name_or_dir: str | Path, workspace: Workspace | None = None) -> str:
    """``classify`` when the weights folder (path or name) holds ``classifier.json``, else ``segment``."""
    p = Path(name_or_dir).expanduser()
    if (p / CLASSIFIER_CARD).exists():
        return "classify"
    if (p / CARD_FILE).exists():
        return "segment"
    for d in search_dirs(workspace):
        if (d / str(name_or_dir) / CARD_FILE).exists():
            return "segment"
        if (d / str(name_or_dir) / CLASSIFIER_CARD).exists():
            return "classify"
    return "segment"


def classifier_markdown(card: ClassifierCard, size_bytes: int | None = None) -> str:
    """A presence classifier's card as a Markdown section (for ``weights/README.md``): what it gates,
    backbone, input, training data and split, validation and held-out presence metrics, license and
    the reproduce command. Every figure is read from the card."""
    tr, m = card.training or {}, card.metrics or {}
    split = tr.get("split") or {}
    pre = card.preprocess
    rows = [("Task", f"presence classifier: P({card.labels.get(1, 'present')} is in the image); gates a segmenter "
                     f"(masks emptied below the threshold {card.threshold:g})"),
            ("Backbone", f"{card.classifier.name}; {card.n_parameters:,} parameters" if card.n_parameters
             else card.classifier.name),
            ("Input", f"{pre.in_channels} channel(s), resized to {pre.size[0]}×{pre.size[1]} ({pre.resize_policy})"
                      + (f", median filter {pre.median_filter}" if pre.median_filter else "")),
            ("File", f"model.safetensors, {card.dtype}" + (f", {size_bytes / 1e6:.2f} MB" if size_bytes else "")),
            ("Training data", f"`{tr.get('data', '?')}` ({tr.get('layout', '?')}, {tr.get('n_labelled_cases', '?')} "
                              f"labelled cases)" + (" — synthetic" if card.synthetic else "")),
            ("Split", f"{split.get('source', '?')}, k = {split.get('k', '?')}, validation fold "
                      f"{split.get('val_fold', '?')}, grouped by {split.get('grouped_by', 'group')}: "
                      f"{split.get('n_train', '?')} train / {split.get('n_val', '?')} validation cases "
                      f"({split.get('n_train_positive', '?')} / {split.get('n_val_positive', '?')} positive)"),
            ("Training", f"{tr.get('epochs_run', '?')} of {tr.get('epochs_planned', '?')} epochs, best epoch "
                         f"{tr.get('best_epoch', '?')}, device {tr.get('device', '?')}, torch {tr.get('torch', '?')}")]
    if m.get("val_auc") is not None:
        rows.append(("Validation (during training)",
                     f"ROC AUC {m['val_auc']:.4f}, AP {m.get('val_ap', float('nan')):.4f}, "
                     f"sensitivity {m.get('val_sensitivity', float('nan')):.3f}, specificity "
                     f"{m.get('val_specificity', float('nan')):.3f} at {card.threshold:g} "
                     f"({m.get('n_val', '?')} cases)"))
    lic = card.license or {}
    rows.append(("License / attribution", f"{lic.get('license', '?')}; {lic.get('attribution', '?')}"))
    rows.append(("Reproduce", f"`{tr.get('command', '?')}`"))
    lines = [f"### `{card.name}`", "", card.description or "", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows] + [""]
    evals = m.get("evaluations") or []
    if evals:
        lines += ["Held-out presence metrics:", "",
                  "| evaluation | cases | positive / negative | ROC AUC | AP | sensitivity | specificity | PPV | NPV |",
                  "|---|---|---|---|---|---|---|---|---|"]
        f = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) and v == v else "—"  # noqa: E731
        for e in evals:
            lines.append(f"| `{e.get('dataset')}` ({e.get('cases')}) | {e.get('n_cases')} | {e.get('n_positive')} / "
                         f"{e.get('n_negative')} | {f(e.get('roc_auc'))} | {f(e.get('average_precision'))} | "
                         f"{f(e.get('sensitivity'))} | {f(e.get('specificity'))} | {f(e.get('ppv'))} | "
                         f"{f(e.get('npv'))} |")
        lines += (["", "Reproduce each row with:", ""] + [f"- `{e['command']}`" for e in evals if e.get("command")]
                  + [""])
    return "\n".join(lines)


def card_markdown(card: ModelCard, size_bytes: int | None = None) -> str:
    """A model card as a Markdown section (for ``weights/README.md``): description, architecture,
    labels, preprocessing, training data and split, validation and held-out figures, license and
    attribution, and the command that reproduces it. Every figure is read from the card."""
    tr, m = card.training or {}, card.metrics or {}
    split = tr.get("split") or {}
    spec = card.spec
    lines = [f"### `{card.name}`", "", card.description or "", ""]
    arch = f"{spec.arch}" + (f" / {spec.encoder}" if spec.encoder else "") + \
        (f", base {spec.base_channels} channels" if spec.base_channels else "") + \
        (", presence head" if spec.presence_head else "")
    rows = [("Architecture", f"{arch}; {card.n_parameters:,} parameters" if card.n_parameters else arch),
            ("Classes", ", ".join(f"{k} = {v}" for k, v in sorted(card.labels.items()))),
            ("Input", f"{card.preprocess.in_channels} channel(s), resized to {card.preprocess.size[0]}×"
                      f"{card.preprocess.size[1]} ({card.preprocess.resize_policy})"
                      + (f", median filter {card.preprocess.median_filter}" if card.preprocess.median_filter else "")
                      + (f", CLAHE clip {card.preprocess.clahe:g} ({card.preprocess.clahe_tiles}×"
                         f"{card.preprocess.clahe_tiles} tiles)" if card.preprocess.clahe else "")
                      + (f", normalisation {card.preprocess.normalize}"
                         if card.preprocess.normalize != "none" else "")),
            ("File", f"model.safetensors, {card.dtype}" + (f", {size_bytes / 1e6:.2f} MB" if size_bytes else "")),
            ("Training data", f"`{tr.get('data', '?')}` ({tr.get('layout', '?')}, {tr.get('n_labelled_cases', '?')} "
                              f"labelled cases)" + (" — synthetic" if card.synthetic else "")),
            ("Split", f"{split.get('source', '?')}, k = {split.get('k', '?')}, validation fold "
                      f"{split.get('val_fold', '?')}, grouped by {split.get('grouped_by', 'group')}: "
                      f"{split.get('n_train', '?')} train cases ({split.get('n_train_groups', '?')} groups) / "
                      f"{split.get('n_val', '?')} validation cases ({split.get('n_val_groups', '?')} groups)"),
            ("Training", f"{tr.get('epochs_run', '?')} of {tr.get('epochs_planned', '?')} epochs, best epoch "
                         f"{tr.get('best_epoch', '?')}, device {tr.get('device', '?')}, torch {tr.get('torch', '?')}, "
                         f"{tr.get('end_state', '?')}")]
    if m.get("val_dice") is not None:
        per = ", ".join(f"{k} {v:.4f}" for k, v in (m.get("per_class_dice") or {}).items())
        rows.append(("Validation (during training)",
                     f"mean Dice {m['val_dice']:.4f} ({per}), empty policy {m.get('empty_policy', '?')}, "
                     f"{m.get('n_val_cases', '?')} cases, at {m.get('resolution', 'model input')}"
                     + (f"; presence ROC AUC {m['presence_auc']:.3f}" if m.get("presence_auc") is not None else "")))
    if card.gate:
        rows.append(("Gate", f"presence classifier `{card.gate.weights}` (threshold "
                             f"{card.gate.threshold if card.gate.threshold is not None else 'of its card'})"))
    lic = card.license or {}
    rows.append(("License / attribution", f"{lic.get('license', '?')}; {lic.get('attribution', '?')}"))
    rows.append(("Reproduce", f"`{tr.get('command', '?')}`"))
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    evals = m.get("evaluations") or []
    if evals:
        lines += ["Held-out evaluations (`python -m engine weights publish`, masks at the original image size):", "",
                  "| evaluation | cases | empty policy | mean Dice | per class | Dice on non-empty GT | presence AUC |",
                  "|---|---|---|---|---|---|---|"]
        for e in evals:
            per = ", ".join(f"{k} {v:.4f}" for k, v in (e.get("per_class") or {}).items())
            ne = ", ".join(f"{k} {v:.4f}" for k, v in (e.get("dice_gt_nonempty") or {}).items() if v is not None)
            auc = f"{e['presence_auc']:.3f}" if e.get("presence_auc") is not None else "—"
            tags = (f"; **includes {e['n_training_cases']} training cases**" if e.get("n_training_cases") else "") + \
                (f"; gated by `{e['gate']['weights']}` at {e['gate']['threshold']:.2f} (ungated "
                 f"{e['ungated_mean_dice']:.4f})" if e.get("gate") and e.get("ungated_mean_dice") is not None else "")
            lines.append(f"| `{e.get('dataset')}` ({e.get('cases')}{tags}) | {e.get('n_cases')} | "
                         f"{e.get('empty_policy')} | "
                         f"{e.get('mean_dice', float('nan')):.4f} | {per} | {ne or '—'} | {auc} |")
        cmds = list(dict.fromkeys(re.sub(r"--empty-policy (kaggle|exclude)\b", "--empty-policy kaggle|exclude",
                                         str(e["command"])) for e in evals if e.get("command")))
        lines += ["", "Reproduce each row with:", ""] + [f"- `{c}`" for c in cmds] + [""]
    return "\n".join(lines)
