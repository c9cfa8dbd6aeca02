"""Where the engine keeps derived data: caches, review stores, evaluations, runs.

Nothing is ever written inside a dataset folder (it may be read-only, and the
original ground truth must never change). Each dataset gets its own folder under
the workspace root, keyed by a hash of its resolved path.

Root resolution order (:func:`resolve_root`; the CLI, ``make`` and the app all use it):

1. an explicit argument (the CLI's ``--workspace DIR``),
2. ``$SEGWB_WORKSPACE``,
3. ``<checkout>/.workspace`` when the engine runs from a checkout of this project (the folder
   holding ``app.py`` and ``engine/``, found from this package's own location, so the working
   directory does not matter),
4. ``~/.cache/segwb`` otherwise (an installed engine).

The store URL, the masks folder and the install secret follow the workspace
(:func:`engine.install.resolve_settings`).

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

#: Environment variable naming the workspace folder.
WORKSPACE_ENV = "SEGWB_WORKSPACE"
#: The workspace folder inside a checkout (``make`` and the CLI run from a checkout use it).
CHECKOUT_WORKSPACE = ".workspace"


def home_root() -> Path:
    """``~/.cache/segwb``: the workspace of an engine that does not run from a checkout."""
    return Path.home() / ".cache" / "segwb"


def checkout_root() -> Path | None:
    """The checkout this engine runs from (the folder holding ``app.py`` and ``engine/``), or None
    when the package is installed elsewhere."""
    repo = Path(__file__).resolve().parents[1]
    return repo if (repo / "app.py").is_file() and (repo / "engine").is_dir() else None


def resolve_root(root: str | Path | None = None) -> tuple[Path, str]:
    """The workspace folder (not resolved, not created) and where it came from.

    Returns:
        ``(folder, source)`` with source ``"argument"``, ``"$SEGWB_WORKSPACE"``, ``"checkout"`` or ``"home"``.
    """
    if root is not None and str(root).strip():
        return Path(root).expanduser(), "argument"
    env = os.environ.get(WORKSPACE_ENV, "").strip()
    if env:
        return Path(env).expanduser(), f"${WORKSPACE_ENV}"
    repo = checkout_root()
    if repo is not None:
        return repo / CHECKOUT_WORKSPACE, "checkout"
    return home_root(), "home"


def default_root() -> Path:
    """The workspace root: ``$SEGWB_WORKSPACE``, else the checkout's ``.workspace``, else ``~/.cache/segwb``."""
    return resolve_root()[0]


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
