"""Session-state keys, the workspace, demo data location and the remembered datasets.

All pages share the current dataset, model and device through ``st.session_state`` under
the keys below, so a choice made on the home page holds everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from engine.fsutil import atomic_write_json, read_json
from engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]

DATASET = "segwb_dataset"          # str path of the current dataset (folder or manifest)
DATASET_OPTIONS = "segwb_dataset_options"  # dict of layout options
MODEL = "segwb_model"              # weights name
DEVICE = "segwb_device"            # "auto" | "cpu" | "cuda" | "mps"
REFRESH = "segwb_refresh"          # int bumped to force re-indexing
BROWSER_CASE = "segwb_browser_case"  # case id opened in the browser's detail view
REVIEWER = "segwb_reviewer"        # reviewer / author name remembered for decisions and mask versions

MAX_RECENT = 8


def workspace() -> Workspace:
    """The engine workspace ($SEGWB_WORKSPACE, set by `make run`, or ~/.cache/segwb)."""
    return Workspace()


def demo_root() -> Path:
    """Where the demo phantoms live: $SEGWB_DEMO_DATA or <repo>/demo_data."""
    env = os.environ.get("SEGWB_DEMO_DATA")
    return Path(env).expanduser() if env else REPO / "demo_data"


def demo_datasets() -> dict[str, Path]:
    """The built-in demo datasets (label → folder), whether or not generated yet."""
    root = demo_root()
    return {"Demo: ultrasound nerve phantom (Kaggle UNS layout)": root / "nerve",
            "Demo: chest X-ray phantom (SIIM DICOM layout)": root / "ptx"}


def _recent_file() -> Path:
    return workspace().subdir("ui") / "recent_datasets.json"


def recent_datasets() -> list[str]:
    """Recently opened dataset paths, newest first (persisted in the workspace)."""
    try:
        items = read_json(_recent_file())
    except Exception:
        return []
    return [p for p in items if isinstance(p, str)][:MAX_RECENT] if isinstance(items, list) else []


def remember_dataset(path: str) -> None:
    items = [p for p in recent_datasets() if p != path]
    try:
        atomic_write_json(_recent_file(), [path] + items[: MAX_RECENT - 1])
    except OSError:
        pass


def get(key: str, default: Any = None) -> Any:
    return st.session_state.get(key, default)


def set(key: str, value: Any) -> None:  # noqa: A001 - mirrors st.session_state
    st.session_state[key] = value


def current_dataset_path() -> str | None:
    """The dataset chosen on the home page, else the demo nerve phantom when it exists."""
    path = st.session_state.get(DATASET)
    if path:
        return str(path)
    demo = demo_root() / "nerve"
    return str(demo) if demo.is_dir() else None


def current_model() -> str | None:
    return st.session_state.get(MODEL)


def current_device() -> str:
    return st.session_state.get(DEVICE, "auto")
