"""Scanning machinery shared by the layouts: file listing and the per-file cache (the parallel
maps are in :mod:`engine.parallel`).

The index cache is one JSON file per dataset and layout in the workspace. Each entry is
keyed by the image's path and remembers the ``(size, mtime)`` stamps of every file it was
derived from (image, mask file or RLE CSV). A rescan lists the folder (cheap ``stat``
calls), reuses every entry whose stamps still match, and only reads changed files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from engine.fsutil import atomic_write_json
from engine.parallel import parallel_map
from engine.progress import ProgressFn, as_progress

CACHE_VERSION = 3
T = TypeVar("T")
R = TypeVar("R")

Stamp = tuple[int, int]


def list_files(root: Path, max_depth: int = 6, suffixes: Sequence[str] | None = None,
               skipped: list[str] | None = None) -> dict[Path, Stamp]:
    """All files under ``root`` (hidden entries skipped) with their (size, mtime_ns) stamps.

    Symbolic links are followed only when their target lies inside ``root`` (a link to ``/`` or to
    another patient folder is not walked); each folder is visited once (no link loops). The links
    left out are appended to ``skipped`` as ``"path -> target"`` when a list is given.
    """
    out: dict[Path, Stamp] = {}
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    try:
        real_root = Path(os.path.realpath(root))
    except OSError:
        return out
    visited: set[str] = set()

    def inside(target: str) -> bool:
        return target == str(real_root) or target.startswith(str(real_root).rstrip(os.sep) + os.sep)

    def walk(folder: Path, depth: int) -> None:
        real = os.path.realpath(folder)
        if real in visited:
            return
        visited.add(real)
        try:
            entries = list(os.scandir(folder))
        except (PermissionError, FileNotFoundError, NotADirectoryError, OSError):
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_symlink():
                    target = os.path.realpath(e.path)
                    if not inside(target):
                        if skipped is not None:
                            skipped.append(f"{e.path} -> {target}")
                        continue
                if e.is_dir(follow_symlinks=True):
                    if depth < max_depth:
                        walk(Path(e.path), depth + 1)
                elif e.is_file(follow_symlinks=True):
                    if wanted is None or e.name.lower().endswith(wanted):
                        st = e.stat(follow_symlinks=True)
                        out[Path(e.path)] = (st.st_size, st.st_mtime_ns)
            except OSError:
                continue

    walk(Path(root), 0)
    return out


def walk_files(root: Path, max_depth: int = 16) -> list[Path]:
    """The files of :func:`list_files` (links out of ``root`` not followed), sorted."""
    return sorted(list_files(Path(root), max_depth=max_depth))


def cached_map(cache: "ScanCache", jobs: Sequence[T], key_of: Callable[[T], tuple[str, list[Stamp | None]]],
               compute: Callable[[T], dict[str, Any]], progress: ProgressFn | None, message: str,
               verify: bool = False) -> list[dict[str, Any]]:
    """Per-file index records: cached ones from ``cache`` (stamps checked), the rest computed by
    ``compute`` (in worker processes for large cold scans, see :func:`parallel_map`) and put in
    the cache here, in the order of ``jobs``.

    Args:
        key_of: job → (cache key, stamps of every file the record is derived from).
        compute: job → JSON-safe record (errors recorded in it, not raised).
    """
    keys = [key_of(j) for j in jobs]
    out: list[dict[str, Any] | None] = [cache.get(k, st, need_verified=verify) for k, st in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    fresh = parallel_map(compute, [jobs[i] for i in todo], progress, message, processes=True)
    for i, value in zip(todo, fresh):
        cache.put(keys[i][0], keys[i][1], value, verified=verify)
        out[i] = value
    if not todo:
        as_progress(progress)(len(jobs), len(jobs), message)
    return out  # type: ignore[return-value]


def _patient_key_id() -> str:
    """Fingerprint of the install secret behind cached ``patient_key`` values (engine.phi): a
    new secret invalidates the cache instead of mixing keys of two secrets."""
    from engine.errors import WorkbenchError
    from engine.phi import secret_id

    try:
        return secret_id()
    except WorkbenchError:
        return "none"


class ScanCache:
    """Per-file scan results keyed by path and validated by file stamps.

    Args:
        path: cache JSON file, or None to disable caching.
        layout: layout name; options: layout options (a change invalidates everything).
    """

    def __init__(self, path: Path | None, layout: str, options: dict[str, Any]):
        self.path = path
        self.key = json.dumps({"v": CACHE_VERSION, "layout": layout, "options": options,
                               "pk": _patient_key_id()}, sort_keys=True, default=str)
        self.old: dict[str, Any] = {}
        self.new: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("key") == self.key:
                    self.old = data.get("entries", {})
            except (OSError, ValueError):
                self.old = {}  # corrupt cache: rebuilt below

    def get(self, key: str, stamps: Iterable[Stamp | None], need_verified: bool = False) -> Any | None:
        """The cached entry for ``key`` if its stamps match, else None."""
        entry = self.old.get(key)
        want = [list(s) if s else None for s in stamps]
        if entry is not None and entry.get("stamps") == want and (entry.get("verified") or not need_verified):
            self.hits += 1
            self.new[key] = entry
            return entry["value"]
        self.misses += 1
        return None

    def put(self, key: str, stamps: Iterable[Stamp | None], value: Any, verified: bool = False) -> None:
        self.new[key] = {"stamps": [list(s) if s else None for s in stamps], "value": value, "verified": verified}

    def save(self) -> None:
        if self.path is None:
            return
        if self.misses == 0 and set(self.new) == set(self.old):
            return  # nothing changed
        try:
            # not fsynced: a damaged cache is not loaded (rebuilt by the next scan)
            atomic_write_json(self.path, {"key": self.key, "entries": self.new}, indent=None, durable=False)
        except OSError:
            pass  # a read-only workspace only costs speed
