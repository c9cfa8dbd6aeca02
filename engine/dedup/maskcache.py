"""Small per-dataset caches that make warm duplicate searches fast.

- :class:`MaskCache`: run-length copies of the ground-truth masks of cases in verified pairs,
  keyed by what the mask came from (file path + size + mtime, or a hash of the RLE strings)
  and the dataset's decoding options, so warm runs do not decode mask files again.
- :class:`PairCache`: SSIM of candidate pairs, keyed by both images' path + size + mtime and
  the SSIM size; a pair of unchanged files always has the same SSIM, so it is computed once.
- :class:`CandidateCache`: the candidate pairs of the last search per scope, keyed by a hash of
  the fingerprints, the scopes and the search options (a warm global search over 5,640 images
  is ~10¹⁰ multiply-adds otherwise).

Both are JSON/NPZ files in ``dataset.workdir / "dedup"``, written atomically; a corrupt or
outdated file is ignored and rebuilt.

Example:
    >>> mc = MaskCache(Path("/tmp/ws/dedup"), options_key="{}")        # doctest: +SKIP
    >>> m = mc.get_or_load(ds, case)                                     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from engine.fsutil import atomic_path, atomic_write_json

if TYPE_CHECKING:
    from engine.datasets.base import Case, Dataset

MASK_CACHE_VERSION = 2


def _encode_runs(mask: np.ndarray) -> tuple[list[int], list[int]]:
    flat = np.ascontiguousarray(mask, np.uint8).ravel()
    if flat.size == 0:
        return [], []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    return starts.astype(np.int64).tolist(), flat[starts].astype(np.int64).tolist()


def _decode_runs(shape: Sequence[int], starts: Sequence[int], values: Sequence[int]) -> np.ndarray:
    n = int(shape[0]) * int(shape[1])
    if not starts:
        return np.zeros((int(shape[0]), int(shape[1])), np.uint8)
    st = np.asarray(starts, np.int64)
    lengths = np.diff(np.concatenate([st, [n]]))
    return np.repeat(np.asarray(values, np.uint8), lengths).reshape(int(shape[0]), int(shape[1]))


def mask_source_key(case: Case) -> str | None:
    """Identity of a case's ground truth: changes when the mask file or the RLE changes."""
    src = case.mask
    if src.kind == "none":
        return None
    if src.kind == "empty":
        return f"empty:{case.height}x{case.width}"
    if src.kind == "file":
        if src.path is None:  # Path(None) would raise TypeError: same answer
            return None
        try:
            st = Path(src.path).stat()
        except (OSError, TypeError):
            return None
        return f"file:{src.path}:{st.st_size}:{st.st_mtime_ns}:{case.height}x{case.width}"
    h = hashlib.sha1("\n".join(src.rle).encode()).hexdigest()
    return f"rle:{src.convention}:{h}:{case.height}x{case.width}"


class MaskCache:
    """Run-length copies of masks (see the module docstring).

    Args:
        folder: cache folder (None = no caching).
        options_key: the dataset's decoding options as a string (threshold, colour map, LUT).
    """

    def __init__(self, folder: Path | None, options_key: str):
        self.path = folder / "masks-rle.json" if folder is not None else None
        self.options_key = options_key
        self.entries: dict[str, Any] = {}
        self.dirty = False
        self.hits = 0
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == MASK_CACHE_VERSION and data.get("options") == options_key:
                    self.entries = data.get("entries", {})
            except (OSError, ValueError):
                self.entries = {}

    def has(self, case: Case) -> bool:
        """Whether the case's mask is cached and its source unchanged."""
        entry = self.entries.get(case.case_id)
        return entry is not None and entry.get("key") == mask_source_key(case)

    def get_or_load(self, ds: Dataset, case: Case) -> Any:
        """The case's mask as a :class:`engine.dedup.scoring.CroppedMask` (cached when unchanged)."""
        from engine.dedup.scoring import CroppedMask

        key = mask_source_key(case)
        entry = self.entries.get(case.case_id) if key is not None else None
        if entry is not None and entry.get("key") == key:
            with self._lock:
                self.hits += 1
            box = tuple(entry["box"]) if entry["box"] else None
            crop = (_decode_runs((box[1] - box[0], box[3] - box[2]), entry["starts"], entry["values"])
                    if box else np.zeros((0, 0), np.uint8))
            return CroppedMask(tuple(entry["shape"]), box, crop)
        cm, new = self.load_entry(ds, case)
        if new is not None:
            self.put(case.case_id, new)
        return cm

    @staticmethod
    def load_entry(ds: Dataset, case: Case) -> tuple[Any, dict[str, Any] | None]:
        """Read the case's mask, without touching any cache: ``(CroppedMask, cache entry)`` (the
        entry is None when the mask source has no stable key). For worker processes; the caller
        stores the entry with :meth:`put`.

        Raises:
            WorkbenchError: the mask cannot be read.
        """
        from engine.dedup.scoring import CroppedMask

        key = mask_source_key(case)
        cm = CroppedMask.from_mask(ds.load_mask(case))
        if key is None:
            return cm, None
        starts, values = _encode_runs(cm.crop)
        return cm, {"key": key, "shape": list(cm.shape), "box": list(cm.box) if cm.box else None,
                    "starts": starts, "values": values}

    def put(self, case_id: str, entry: dict[str, Any]) -> None:
        """Store an entry made by :meth:`load_entry`."""
        with self._lock:
            self.entries[case_id] = entry
            self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            atomic_write_json(self.path, {"version": MASK_CACHE_VERSION, "options": self.options_key,
                                          "entries": self.entries}, indent=None, durable=False)
        except OSError:
            pass


def image_key(path: str, stamp: Sequence[int] | None) -> int:
    """64-bit identity of an image file version (path, size, mtime)."""
    text = f"{path}\0{stamp[0]}\0{stamp[1]}" if stamp else f"{path}\0?"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class PairCache:
    """SSIM values of image pairs (see the module docstring).

    Args:
        folder: cache folder (None = no caching). size: SSIM size (part of the file name).
    """

    def __init__(self, folder: Path | None, size: tuple[int, int]):
        self.path = folder / f"ssim-pairs-{int(size[0])}x{int(size[1])}.npz" if folder is not None else None
        self.table: dict[tuple[int, int], float] = {}
        self.dirty = False
        if self.path is not None and self.path.exists():
            try:
                with np.load(self.path) as z:
                    ka, kb, s = z["ka"], z["kb"], z["ssim"]
                self.table = dict(zip(zip(ka.tolist(), kb.tolist()), s.tolist()))
            except (OSError, ValueError, KeyError):
                self.table = {}

    @staticmethod
    def _key(a: int, b: int) -> tuple[int, int]:
        return (a, b) if a <= b else (b, a)

    def lookup(self, ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
        """Cached SSIM for key pairs (NaN where unknown): float64 (P,)."""
        get = self.table.get
        return np.array([get(self._key(a, b), np.nan) for a, b in zip(ka.tolist(), kb.tolist())], np.float64)

    def add(self, ka: np.ndarray, kb: np.ndarray, ssim: np.ndarray) -> None:
        for a, b, s in zip(ka.tolist(), kb.tolist(), ssim.tolist()):
            self.table[self._key(a, b)] = float(s)
        self.dirty = self.dirty or len(ssim) > 0

    def save(self, live_keys: set[int] | None = None) -> None:
        """Write the table (dropping pairs whose images are gone when ``live_keys`` is given)."""
        if self.path is None:
            return
        items: Iterable[tuple[tuple[int, int], float]] = self.table.items()
        if live_keys is not None:
            kept = [(k, v) for k, v in items if k[0] in live_keys and k[1] in live_keys]
            if len(kept) != len(self.table):
                self.dirty = True
            items = kept
        if not self.dirty:
            return
        items = list(items)
        ka = np.array([k[0] for k, _ in items], np.uint64)
        kb = np.array([k[1] for k, _ in items], np.uint64)
        s = np.array([v for _, v in items], np.float64)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, ka=ka, kb=kb, ssim=s)
        except OSError:
            pass


class CandidateCache:
    """Candidate pairs of the last search (see the module docstring), one file per scope and size.

    Args:
        folder: cache folder (None = no caching). scope: ``group``/``global``. size: SSIM size.
    """

    VERSION = 1

    def __init__(self, folder: Path | None, scope: str, size: tuple[int, int]):
        self.path = (folder / f"candidates-{scope}-{int(size[0])}x{int(size[1])}.npz"
                     if folder is not None else None)

    def key(self, fps: Any, scopes: Sequence[np.ndarray], options: Sequence[Any]) -> str:
        """Hash of everything the search depends on: descriptors, brightness, texture, the scopes
        (row indices) and the options."""
        if self.path is None:
            return ""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps([self.VERSION, [str(o) for o in options]]).encode())
        for arr in (fps.fp, fps.mean, fps.texture):
            h.update(np.ascontiguousarray(arr).tobytes())
        for sc in scopes:
            h.update(np.ascontiguousarray(sc, np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()

    def load(self, key: str) -> Any | None:
        """The cached :class:`engine.dedup.search.Candidates` for ``key``, or None."""
        if self.path is None or not self.path.exists():
            return None
        from engine.dedup.search import Candidates

        try:
            with np.load(self.path) as z:
                if str(z["key"]) != key:
                    return None
                return Candidates(z["i"].astype(np.int64), z["j"].astype(np.int64), z["sim"].astype(np.float32),
                                  str(z["backend"]), int(z["n_flat"]), int(z["n_scopes"]))
        except (OSError, ValueError, KeyError):
            return None  # corrupt or old: searched again

    def save(self, key: str, cand: Any) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, key=np.array(key), i=cand.i, j=cand.j, sim=cand.sim, backend=np.array(cand.backend),
                             n_flat=np.array(cand.n_flat), n_scopes=np.array(cand.n_scopes))
        except OSError:
            pass
