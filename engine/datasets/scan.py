"""Scanning machinery shared by the layouts: file listing, per-file cache, parallel map.

The index cache is one JSON file per dataset and layout in the workspace. Each entry is
keyed by the image's path and remembers the ``(size, mtime)`` stamps of every file it was
derived from (image, mask file or RLE CSV). A rescan lists the folder (cheap ``stat``
calls), reuses every entry whose stamps still match, and only reads changed files.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from engine.fsutil import atomic_write_json
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


#: a process pool pays for itself from about this many items (forking 2 workers costs ~20 ms)
PROCESS_MIN_ITEMS = 1000
_FORK_JOB: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def can_fork_workers() -> bool:
    """True when forked worker processes are safe here: Linux, several usable cores, no other
    Python thread running (a fork copies locks another thread may hold, e.g. inside the app's
    server) and torch not loaded (its OpenMP pool does not survive a fork)."""
    import sys
    import threading

    return (sys.platform.startswith("linux") and usable_cores() > 1 and threading.active_count() == 1
            and "torch" not in sys.modules)


def _fork_chunk(bounds: tuple[int, int]) -> list[Any]:
    assert _FORK_JOB is not None
    fn, items = _FORK_JOB
    return [fn(items[k]) for k in range(*bounds)]


def shared_empty(shape: tuple[int, ...], dtype: Any) -> Any:
    """A zero-filled numpy array in anonymous shared memory: what forked workers
    (:func:`parallel_map` with ``processes=True``) write into it, this process sees."""
    import mmap

    import numpy as np

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype, count=int(np.prod(shape))).reshape(shape)


def fork_map(fn: Callable[[T], R], items: Sequence[T], report: Callable[[int, int, str], None],
             message: str, size: int | None = None) -> list[R] | None:
    """``[fn(x) for x in items]`` in forked worker processes (``fn`` and ``items`` reach them
    through the fork, only results are pickled back; writes into :func:`shared_empty` arrays are
    seen here), in order, ``size`` items per task (default: a few per worker). Call only when
    :func:`can_fork_workers`. Returns None when the pool broke (a worker killed, e.g. for memory):
    the caller then computes the items in threads."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    global _FORK_JOB
    n = len(items)
    workers = usable_cores()
    size = size or max(16, min(256, n // (4 * workers)))
    bounds = [(s, min(n, s + size)) for s in range(0, n, size)]
    results: list[R] = []
    _FORK_JOB = (fn, items)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
            for part in pool.map(_fork_chunk, bounds):
                results.extend(part)
                report(len(results), n, message)
    except BrokenProcessPool:
        return None
    finally:
        _FORK_JOB = None
    return results


def parallel_map(fn: Callable[[T], R], items: Sequence[T], progress: ProgressFn | None = None,
                 message: str = "", workers: int | None = None, *, processes: bool | int = False) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (image decoders release the GIL), in order.

    ``processes=True``: work that is mostly Python (header parsing, small decodes) runs in forked
    worker processes instead (:func:`fork_map`) when there are at least :data:`PROCESS_MIN_ITEMS`
    items (or ``processes`` items when it is a number) and :func:`can_fork_workers` (threads would
    only take turns holding the GIL); ``fn`` must not rely on side effects in this process (its
    results are what comes back).
    """
    report = as_progress(progress)
    n = len(items)
    if n == 0:
        return []
    least = PROCESS_MIN_ITEMS if processes is True else int(processes)
    if processes and n >= least and can_fork_workers():
        done = fork_map(fn, items, report, message)
        if done is not None:
            return done
    workers = workers or min(8, max(2, usable_cores() * 2))
    results: list[R] = []
    step = max(1, n // 200)
    if workers <= 1 or n < 16:
        for i, x in enumerate(items):
            results.append(fn(x))
            if (i + 1) % step == 0 or i + 1 == n:
                report(i + 1, n, message)
        return results
    # a few dozen items per task: one future per item costs ~40 µs of scheduling, as much as a
    # cached item's whole work
    size = max(1, min(64, n // (8 * workers)))
    chunks = [items[s:s + size] for s in range(0, n, size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(lambda chunk: [fn(x) for x in chunk], chunks):
            results.extend(part)
            report(len(results), n, message)
    return results


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
