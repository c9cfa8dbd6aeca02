"""Parallel maps and thread limits shared by scans, fingerprints, SSIM and conversions.

- :func:`parallel_map`: ``[fn(x) for x in items]`` on threads, or in forked worker processes
  (:func:`fork_map`) for large mostly-Python jobs when :func:`can_fork_workers`.
- :func:`shared_empty`: numpy arrays in anonymous shared memory that forked workers write into.
- :func:`usable_cores`, :func:`default_workers`: how many cores/threads to use.
- :func:`limit_blas`: cap BLAS threads inside a block (many small products, decoder pools).

Example:
    >>> parallel_map(lambda x: x * x, [1, 2, 3])
    [1, 4, 9]
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar

from engine.progress import ProgressFn, as_progress

T = TypeVar("T")
R = TypeVar("R")

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


def default_workers() -> int:
    """Decoding threads: twice the usable CPU cores (libtiff, Pillow and BLAS release the GIL
    while they work; a second thread per core fills the gaps of Python work and file reads, and
    keeps the scan's share of a machine shared with other processes), between 2 and 8."""
    return max(2, min(8, 2 * usable_cores()))


_CONTROLLER: list[Any] = []


@contextlib.contextmanager
def limit_blas(threads: int | None = 1) -> Iterator[None]:
    """Limit BLAS threads inside the block (None = no limit). Enter it from one thread only.

    Small matrix products are much slower with several BLAS threads on a busy machine
    (thread wake-up and spinning dominate), and a thread pool of decoders must not
    oversubscribe cores. Uses ``threadpoolctl`` when installed (it comes with scikit-learn),
    else does nothing. The limit is process-wide, so nested use from several threads at
    once could restore the wrong value: engine code enters it only from the calling thread.
    """
    if threads is None:
        yield
        return
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional
            _CONTROLLER.append(None)
        else:
            _CONTROLLER.append(ThreadpoolController())
    ctl = _CONTROLLER[0]
    if ctl is None:
        yield
        return
    with ctl.limit(limits=threads, user_api="blas"):
        yield
