"""Shared helpers for the benchmarks: machine description, timers, atomic JSON results.

Benchmarks print a short table and save ``bench/results/<name>.json`` with the machine
they ran on, so figures from different machines are never compared blindly.

Example:
    >>> with Timer() as t:
    ...     sum(range(1000))
    >>> t.seconds >= 0
    True
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
if str(REPO) not in sys.path:  # `python bench/x.py` from anywhere
    sys.path.insert(0, str(REPO))


class Timer:
    """Context manager measuring wall-clock seconds (``perf_counter``)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU count (logical and usable), CPU model, memory, platform, Python and key library versions."""
    import numpy

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_model": _cpu_model(),
        "memory_gib": _meminfo_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    for mod in ("PIL", "tifffile", "pydicom", "cv2", "torch"):
        try:
            m = __import__(mod)
            info[mod if mod != "PIL" else "pillow"] = getattr(m, "__version__", "?")
        except ImportError:
            pass
    return info


def load_avg() -> list[float] | None:
    """``os.getloadavg()`` rounded (1, 5, 15 minutes), None where unsupported."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def archive_previous(path: Path, history: Path | None = None) -> Path | None:
    """Copy an existing result file to ``history/<stem>-<its created time>.json`` (kept, never
    overwritten) before a new run replaces it. Returns the copy, or None when there was none."""
    import json
    import shutil

    path = Path(path)
    if not path.is_file():
        return None
    history = history or path.parent / "history"
    try:
        created = str(json.loads(path.read_text(encoding="utf-8")).get("created") or "")
    except (OSError, ValueError, AttributeError):
        created = ""
    if not created:
        created = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    content = path.read_bytes()
    for old in history.glob(f"{path.stem}-*.json") if history.is_dir() else ():
        if old.stat().st_size == len(content) and old.read_bytes() == content:
            return old  # already archived
    stamp = created.replace(":", "").replace("+0000", "Z")
    history.mkdir(parents=True, exist_ok=True)
    dest = history / f"{path.stem}-{stamp}.json"
    k = 1
    while dest.exists():
        k += 1
        dest = history / f"{path.stem}-{stamp}-{k}.json"
    shutil.copy2(path, dest)
    return dest


def save_result(name: str, data: dict[str, Any], folder: Path | None = None, path: Path | None = None) -> Path:
    """Write ``{benchmark, created, commit, machine, **data}`` atomically to ``path``, by default
    ``folder/<name>.json``; a previous result there is first copied to ``history/``."""
    from engine.fsutil import atomic_write_json

    doc = {"benchmark": name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "commit": _git_commit(), "machine": machine_info(), **data}
    path = path or (folder or RESULTS) / f"{name}.json"
    archive_previous(path)
    atomic_write_json(path, doc)
    return path


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
