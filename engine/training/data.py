"""Training data pipeline: read + preprocess every case once, then augment per step.

Cost model (why it looks like this): decoding a 420×580 TIFF or a 1024² DICOM and resizing it
costs milliseconds; a light augmentation of a 256² image costs under one. So each case is read
and run through :func:`engine.augment.preprocess_pair` (``normalize=False``) exactly once and
kept in memory — images as ``uint8`` (or ``float16``), masks as ``uint8``, U-Net weight maps as
``float16`` — and every step only does: [random patch] → :func:`engine.augment.apply_transform`
→ :func:`engine.augment.normalize_image` → tensors. With ``cache_preprocessed`` the preprocessed
arrays are also written to ``<dataset workspace>/train-cache/<key>/`` (``.npz`` per case,
validated by the source files' size and mtime), so the next run skips decoding.

**Border weight maps** (``border_ce``): computed once per preprocessed mask
(:class:`engine.losses.WeightMapCache`, on the whole preprocessed image, so crops keep correct
border terms) and carried through augmentation as a second channel of the albumentations
``mask`` target: every geometric transform moves it with nearest-neighbour sampling exactly like
the label mask, intensity transforms never touch it, and border fill gives weight 0 (pixels
invented by a shift/rotation do not count). Recomputing maps after augmentation would cost
~10 ms per 256² mask per step and change them only by interpolation detail.

**Randomness** is a pure function of ``(seed, epoch, sample index)``: the sampler yields
``(epoch, index)`` keys and the dataset reseeds the transform with
:func:`engine.augment.worker_seed` ``(seed, index, epoch)`` for every sample (~0.3 ms). So the
augmentation stream does not depend on the number of DataLoader workers or processes, workers can
be persistent, and ``--resume`` replays exactly what an uninterrupted run would have seen.

Example:
    >>> items, skipped = build_cache(ds, ds.cases, Preprocess(size=(128, 128)))      # doctest: +SKIP
    >>> train_set = SegTrainSet(items, Preprocess(size=(128, 128)), AugmentConfig.preset("light"))  # doctest: +SKIP
    >>> train_set[(0, 0)]["image"].shape                                               # doctest: +SKIP
    torch.Size([1, 128, 128])
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, cast

import numpy as np

from engine.augment import (
    AugmentConfig,
    Geometry,
    Preprocess,
    apply_transform,
    build_train_transform,
    normalize_image,
    plan_geometry,
    preprocess_pair,
    reseed_transform,
    worker_seed,
)
from engine.errors import ConfigError, WorkbenchError
from engine.fsutil import atomic_path, file_stamp
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from engine.datasets.base import Case
    from engine.datasets.base import Dataset as CaseDataset

__all__ = ["CachedCase", "build_cache", "SegTrainSet", "EpochSampler", "make_train_loader",
           "default_num_workers", "weight_cache_for"]

CACHE_VERSION = 1


@dataclass
class CachedCase:
    """One preprocessed case held in memory.

    Attributes:
        case_id: the dataset's case id.
        image: ``uint8`` (value × 255) or ``float16`` array ``(C, h, w)``: the preprocessed image in
            [0, 1] before normalisation; ``(h, w)`` = ``geometry.out_hw``.
        mask: ``uint8 (h, w)`` labels at the same geometry.
        weight: ``float16 (h, w)`` U-Net weight map, or None when the loss does not use one.
        geometry: where the original image sits in ``image`` (for cropping padding at validation).
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray
    weight: np.ndarray | None
    geometry: Geometry

    @property
    def has_mask(self) -> bool:
        return bool(self.mask.any())

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes + self.mask.nbytes + (self.weight.nbytes if self.weight is not None else 0))

    def image_float(self) -> np.ndarray:
        """float32 ``(C, h, w)`` in [0, 1]."""
        if self.image.dtype == np.uint8:
            return self.image.astype(np.float32) * np.float32(1 / 255)
        return self.image.astype(np.float32)

    def content(self, arr: np.ndarray) -> np.ndarray:
        """``arr[..., h, w]`` cropped to the original image's region (padding removed)."""
        top, bottom, left, right = self.geometry.pad
        return arr[..., top:arr.shape[-2] - bottom, left:arr.shape[-1] - right]


def _quantise(img: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return img.astype(np.float16)


def weight_cache_for(loss_name: str, loss_kwargs: dict[str, Any] | None, folder: Path | None = None):
    """A :class:`engine.losses.WeightMapCache` with the loss's ``w0``/``sigma``/``class_weights``,
    or None when the loss does not use weight maps."""
    from engine.losses import WeightMapCache, build_loss

    loss = build_loss(loss_name, **(loss_kwargs or {}))
    if not getattr(loss, "uses_weight_map", False):
        return None
    kw = loss_kwargs or {}
    return WeightMapCache(w0=float(kw.get("w0", 10.0)), sigma=float(kw.get("sigma", 5.0)),
                          class_weights=kw.get("class_weights", "balanced"), max_bytes=0, folder=folder)


def _cache_key(pre: Preprocess, dataset: CaseDataset, dtype: str, weights: Any) -> str:
    payload = {"v": CACHE_VERSION, "pre": pre.to_dict(), "options": dataset.options, "layout": dataset.layout,
               "dtype": dtype, "weights": None if weights is None else
               {"w0": weights.w0, "sigma": weights.sigma, "cw": weights.class_weights}}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _stamps(case: Case) -> np.ndarray:
    paths = [case.image_path] + ([case.mask.path] if case.mask.kind in ("file", "rle") and case.mask.path else [])
    out: list[int] = []
    for p in paths:
        try:
            out.extend(file_stamp(Path(p)))
        except OSError:
            out.extend((-1, -1))
    rle = hashlib.sha1("\n".join(case.mask.rle).encode()).digest()
    out.append(int.from_bytes(rle[:7], "little"))  # an edited RLE row invalidates the entry
    kinds = ("none", "empty", "file", "rle")
    out.append(kinds.index(case.mask.kind) if case.mask.kind in kinds else -1)  # e.g. a mask marked empty
    return np.asarray(out, dtype=np.int64)


def build_cache(dataset: CaseDataset, cases: Sequence[Case], pre: Preprocess, *, dtype: str = "uint8",
                weights: Any = None, disk_dir: str | Path | None = None,
                progress: ProgressFn | None = None, threads: int | None = None
                ) -> tuple[list[CachedCase], list[tuple[str, str]]]:
    """Read and preprocess ``cases`` once.

    Args:
        dataset: an :class:`engine.datasets.Dataset` (``load_image_float``, ``load_mask``).
        cases: the labelled cases to load.
        pre: preprocessing (geometry, median filter, channels); normalisation is NOT applied.
        dtype: in-memory image dtype, ``uint8`` or ``float16``.
        weights: a WeightMapCache (see :func:`weight_cache_for`) or None.
        disk_dir: folder for the on-disk cache (None = memory only); a key of the preprocessing
            and layout options is appended.
        progress: ``(done, total, message)``.
        threads: decoding threads (None = up to 4).

    Returns:
        ``(items in the order of cases, skipped [(case_id, reason)])``: a case that cannot be
        read is skipped with its reason, the others still load.
    """
    report = as_progress(progress)
    folder = Path(disk_dir) / _cache_key(pre, dataset, dtype, weights) if disk_dir else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    total = len(cases)

    def load_one(case: Case) -> CachedCase | str:
        try:
            path = folder / (hashlib.sha1(case.case_id.encode()).hexdigest()[:20] + ".npz") if folder else None
            stamps = _stamps(case)
            if path is not None and path.is_file():
                hit = _read_entry(path, stamps, case.case_id)
                if hit is not None:
                    return hit
            img = dataset.load_image_float(case)
            mask = dataset.load_mask(case)
            x, m = preprocess_pair(img, mask, pre, normalize=False)
            geo = plan_geometry(img.shape[1:], pre)
            w = weights.get(m).astype(np.float16) if weights is not None else None
            item = CachedCase(case.case_id, _quantise(x, dtype), np.ascontiguousarray(m, dtype=np.uint8), w, geo)
            if path is not None:
                _write_entry(path, item, stamps)
            return item
        except WorkbenchError as exc:
            return str(exc)
        except (OSError, ValueError) as exc:
            return f"{case.case_id}: {exc}"

    n_threads = threads if threads is not None else min(4, os.cpu_count() or 1)
    items: list[CachedCase] = []
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        for i, (case, res) in enumerate(zip(cases, pool.map(load_one, cases))):
            if isinstance(res, str):
                skipped.append((case.case_id, res))
            else:
                items.append(res)
            report(i + 1, total, "reading and preprocessing cases")
    return items, skipped


def _read_entry(path: Path, stamps: np.ndarray, case_id: str) -> CachedCase | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["stamps"], stamps):
                return None
            w = z["weight"] if "weight" in z.files else None
            g = z["geometry"].astype(int).tolist()
            geo = Geometry((g[0], g[1]), (g[2], g[3]), (g[4], g[5], g[6], g[7]), (g[8], g[9]))
            return CachedCase(case_id, z["image"], z["mask"], w, geo)
    except (OSError, ValueError, KeyError):
        return None  # corrupt: rebuilt and overwritten


def _write_entry(path: Path, item: CachedCase, stamps: np.ndarray) -> None:
    g = item.geometry
    geo = np.asarray([*g.original_hw, *g.scaled_hw, *g.pad, *g.out_hw], np.int64)
    arrays: dict[str, Any] = {"image": item.image, "mask": item.mask, "stamps": stamps, "geometry": geo}
    if item.weight is not None:
        arrays["weight"] = item.weight
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except OSError:
        pass  # the disk cache is an optimisation; a full or read-only disk must not stop training


# ----------------------------------------------------------------------------------- datasets

def _crop_or_pad(arrs: list[np.ndarray], top: int, left: int, ph: int, pw: int) -> list[np.ndarray]:
    """Crop ``(…, H, W)`` arrays to ``(ph, pw)`` at (top, left), reflect-padding when too small."""
    out = []
    for a in arrs:
        h, w = a.shape[-2:]
        if h < ph or w < pw:
            extra_h, extra_w = max(0, ph - h), max(0, pw - w)
            widths = [(0, 0)] * (a.ndim - 2) + [(extra_h // 2, extra_h - extra_h // 2),
                                               (extra_w // 2, extra_w - extra_w // 2)]
            a = np.pad(a, widths, mode="reflect" if min(h, w) > max(extra_h, extra_w) else "edge")
        out.append(np.ascontiguousarray(a[..., top:top + ph, left:left + pw]))
    return out


class SegTrainSet:
    """torch-style dataset over cached cases: random patch → augmentation → normalisation.

    ``dataset[(epoch, i)]`` (or ``dataset[i]`` = epoch 0) returns a dict of tensors:
    ``image`` float32 ``(C, h, w)`` normalised, ``mask`` uint8 ``(h, w)`` (8x less memory traffic
    than int64 per batch; the loss casts it on the device), ``present`` float32 scalar (mask
    non-empty), and ``weight`` float32 ``(h, w)`` when weight maps are cached.

    Args:
        items: from :func:`build_cache`.
        pre: the preprocessing (for :func:`engine.augment.normalize_image`).
        aug: augmentation config (identity = no transform).
        seed: base seed; sample randomness = f(seed, epoch, index).
        patch_size: random crop ``(h, w)`` or None for whole images.
        fg_oversample: probability that a patch is centred on a foreground pixel.
    """

    def __init__(self, items: Sequence[CachedCase], pre: Preprocess, aug: AugmentConfig, seed: int = 0,
                 patch_size: tuple[int, int] | None = None, fg_oversample: float = 0.33):
        self.items = list(items)
        self.pre = pre
        self.aug = aug
        self.seed = int(seed)
        self.patch_size = tuple(patch_size) if patch_size else None
        self.fg_oversample = float(fg_oversample)
        self.transform = None if aug.is_identity else build_train_transform(aug, seed=self.seed)
        self.with_weight = bool(self.items) and self.items[0].weight is not None
        self._fg_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def presence_labels(self) -> list[bool]:
        return [it.has_mask for it in self.items]

    def _patch(self, i: int, rng: np.random.Generator, arrs: list[np.ndarray]) -> list[np.ndarray]:
        assert self.patch_size is not None
        ph, pw = self.patch_size
        h, w = arrs[0].shape[-2:]
        top = int(rng.integers(0, max(h - ph, 0) + 1))
        left = int(rng.integers(0, max(w - pw, 0) + 1))
        if self.fg_oversample > 0 and rng.random() < self.fg_oversample:
            fg = self._fg_cache.get(i)
            if fg is None:
                fg = np.flatnonzero(self.items[i].mask.ravel()).astype(np.int64)
                self._fg_cache[i] = fg
            if fg.size:
                y, x = divmod(int(fg[int(rng.integers(0, fg.size))]), w)
                top = int(np.clip(y - ph // 2, 0, max(h - ph, 0)))
                left = int(np.clip(x - pw // 2, 0, max(w - pw, 0)))
        return _crop_or_pad(arrs, top, left, ph, pw)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        import torch

        epoch, i = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))
        item = self.items[i]
        s = worker_seed(self.seed, i, epoch)
        rng = np.random.default_rng(s)
        img = item.image_float()
        mask = item.mask
        weight = item.weight.astype(np.float32) if item.weight is not None else None
        if self.patch_size is not None:
            parts = self._patch(i, rng, [img, mask] + ([weight] if weight is not None else []))
            img, mask = parts[0], parts[1]
            weight = parts[2] if weight is not None else None
        if self.transform is not None:
            reseed_transform(self.transform, s)
            if weight is None:
                img, new_mask = apply_transform(self.transform, img, mask)
                assert new_mask is not None  # a mask went in, so one comes back
                mask = new_mask
            else:
                img, mask, weight = _transform_with_weight(self.transform, img, mask, weight)
        x = normalize_image(img, self.pre)
        out = {"image": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
               "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8)),
               "present": torch.tensor(float(mask.any()), dtype=torch.float32)}
        if weight is not None:
            out["weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        return out


def _transform_with_weight(transform: Any, img: np.ndarray, mask: np.ndarray,
                           weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment image, label mask and weight map together: (label, weight) ride as a 2-channel
    float32 ``mask`` target, so both get the identical nearest-neighbour geometric warp."""
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    packed = np.stack([mask.astype(np.float32), weight.astype(np.float32)], axis=-1)
    out = transform(image=hwc, mask=packed)
    y = np.asarray(out["image"], dtype=np.float32)
    if y.ndim == 2:
        y = y[:, :, None]
    y = np.clip(np.ascontiguousarray(y.transpose(2, 0, 1)), 0.0, 1.0)
    m = np.asarray(out["mask"])
    return y, np.rint(m[..., 0]).astype(np.uint8), np.ascontiguousarray(m[..., 1], dtype=np.float32)


class EpochSampler:
    """Yields ``(epoch, index)`` keys: a :class:`torch.utils.data.DistributedSampler` (shuffle seeded
    by ``seed + epoch``; ``num_replicas=1`` outside torchrun) whose indices carry the epoch, so the
    dataset can derive per-sample randomness from it (even in persistent workers)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 drop_last: bool = False):
        from torch.utils.data import Dataset, DistributedSampler

        self.epoch = 0
        # the sampler only needs len(); a range stands in for the dataset
        self.base: DistributedSampler[int] = DistributedSampler(
            cast(Dataset[int], range(n)), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
            drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.base.set_epoch(int(epoch))

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for i in self.base:
            yield epoch, int(i)


def default_num_workers(device_type: str, local_world: int = 1) -> int:
    """DataLoader workers when ``num_workers`` is None.

    CPU training: 0. The model's forward/backward already uses every core, augmenting from the
    in-memory cache costs ~1-3 ms per sample against ~100+ ms of compute per sample, and worker
    processes would steal cores from the compute (see ``bench/training.py``). GPU training:
    the GPU waits on the CPU, so up to 8 workers per process, leaving one core free.
    """
    n = os.cpu_count() or 1
    if device_type != "cuda" or n <= 2:
        return 0
    return max(0, min(8, n // max(1, local_world) - 1))


def _worker_init(worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # one worker = one core; avoid oversubscription
    try:
        import cv2

        cv2.setNumThreads(0)
    except ImportError:  # pragma: no cover - opencv is a dependency
        pass


def make_train_loader(dataset: SegTrainSet | Any, batch_size: int, *, seed: int, num_workers: int,
                      rank: int = 0, world: int = 1, pin_memory: bool = False):
    """DataLoader with an :class:`EpochSampler`; call ``loader.sampler.set_epoch(e)`` each epoch.

    The last batch is dropped only when it would hold a single sample (BatchNorm cannot train on one).
    """
    from torch.utils.data import DataLoader, Dataset

    n = len(dataset)
    if n == 0:
        raise ConfigError("no training cases", hint="check the dataset and the split (validation fold)")
    per_rank = -(-n // world)
    drop_last = per_rank % batch_size == 1 and per_rank > 1
    import torch

    sampler = EpochSampler(n, seed, shuffle=True, rank=rank, world=world)
    # SegTrainSet is a map-style dataset by protocol (len + getitem), not a torch Dataset subclass
    torch_dataset = cast(Dataset[dict[str, Any]], dataset)
    # its own generator: drawing the loader's base seed must not consume the global torch RNG
    # (that would shift dropout between an uninterrupted and a resumed run)
    return DataLoader(torch_dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(int(seed)),
                      pin_memory=pin_memory, drop_last=drop_last, persistent_workers=num_workers > 0,
                      worker_init_fn=_worker_init if num_workers > 0 else None,
                      prefetch_factor=4 if num_workers > 0 else None)
