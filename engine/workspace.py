"""Where the engine keeps derived data: caches, review stores, evaluations, runs.

Nothing is ever written inside a dataset folder (it may be read-only, and the
original ground truth must never change). Each dataset gets its own folder under
the workspace root, keyed by a hash of its resolved path.

Root resolution order: explicit argument, ``$SEGWB_WORKSPACE``, ``~/.cache/segwb``.

Example:
    >>> ws = Workspace("/tmp/ws")
    >>> ws.dataset_dir("/data/nerve").name.startswith("nerve-")
    True
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def default_root() -> Path:
    """The workspace root from ``$SEGWB_WORKSPACE`` or ``~/.cache/segwb``."""
    env = os.environ.get("SEGWB_WORKSPACE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segwb"


class Workspace:
    """A folder holding per-dataset derived data.

    Args:
        root: workspace folder; created on first use. None → :func:`default_root`.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser().resolve() if root else default_root().resolve()

    def dataset_dir(self, dataset_path: str | Path, create: bool = True) -> Path:
        """Folder for one dataset's caches/store: ``<root>/datasets/<name>-<hash8>``."""
        resolved = Path(dataset_path).expanduser().resolve()
        digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.name or "root")[:40]
        folder = self.root / "datasets" / f"{name}-{digest}"
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def subdir(self, *parts: str) -> Path:
        """A general-purpose folder under the root (e.g. ``runs``), created on demand."""
        folder = self.root.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"
