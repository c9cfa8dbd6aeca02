"""Dataset layouts → one case index. Start here: :func:`open_dataset`.

Example:
    >>> from engine.datasets import open_dataset
    >>> ds = open_dataset("../shared/data/montgomery-lung")           # doctest: +SKIP
    >>> ds.layout, len(ds), ds.labels                                  # doctest: +SKIP
    ('paired', 138, {0: 'background', 1: 'foreground'})
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engine.datasets.base import BadFile, Case, Dataset, MaskSource, load_mask_source
from engine.datasets.layouts import Detection
from engine.datasets.manifest import is_manifest, read_manifest, write_manifest
from engine.datasets.registry import LAYOUTS, describe_expected, detect_all
from engine.datasets.scan import ScanCache, list_files
from engine.errors import LayoutError, unknown_name
from engine.progress import ProgressFn
from engine.workspace import Workspace

__all__ = ["open_dataset", "detect_layout", "Dataset", "Case", "MaskSource", "BadFile", "Detection",
           "LAYOUTS", "load_mask_source", "read_manifest", "write_manifest", "is_manifest"]


def detect_layout(path: str | Path) -> list[Detection]:
    """Every layout that claims the folder, best first (empty when none does)."""
    root = Path(path).expanduser().resolve()
    return detect_all(root, list_files(root))


def open_dataset(path: str | Path, layout: str | None = None, *, options: dict[str, Any] | None = None,
                 workspace: Workspace | str | Path | None = None, use_cache: bool = True, verify: bool = False,
                 progress: ProgressFn | None = None) -> Dataset:
    """Open a dataset folder (or a manifest JSON) as a case index.

    Args:
        path: dataset folder in any supported layout, or a cleaned-manifest ``.json``.
        layout: force a layout (``kaggle_uns``, ``siim``, ``paired``); None = auto-detect.
        options: layout options, e.g. ``{"threshold": 127, "label_names": ["nerve", "vessel"],
            "rle_csv": "...", "mask_suffixes": ["_mask"], "group_regex": "..."}``.
        workspace: where the index cache lives (default: :func:`engine.workspace.default_root`).
        use_cache: reuse cached per-file results whose file stamps still match.
        verify: fully decode every image (slow once, then cached) so corrupt files are listed.
        progress: ``(done, total, message)`` callback.

    Raises:
        LayoutError: not a folder, or no layout matches (the message lists what was looked for).
    """
    root = Path(path).expanduser()
    if root.is_file() and is_manifest(root):
        return read_manifest(root, workspace=workspace)
    if not root.exists():
        raise LayoutError("folder not found", path=root, hint="check the path")
    if not root.is_dir():
        raise LayoutError("not a folder", path=root, hint="pass a dataset folder (or a manifest .json)")
    root = root.resolve()
    options = dict(options or {})
    t0 = time.perf_counter()
    skipped_links: list[str] = []
    files = list_files(root, skipped=skipped_links)
    if layout is None:
        found = detect_all(root, files)
        if not found:
            n = len(files)
            raise LayoutError(f"no known dataset layout found ({n} files looked at)", path=root,
                              hint="arrange the data as one of: " + describe_expected())
        layout_cls = LAYOUTS[found[0].layout]
    else:
        if layout not in LAYOUTS:
            raise unknown_name("dataset layout", layout, list(LAYOUTS))
        layout_cls = LAYOUTS[layout]
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    workdir = ws.dataset_dir(root) if use_cache else None
    cache_path = workdir / f"index-{layout_cls.name}.json" if workdir else None
    from engine.io.limits import max_pixels

    # the pixel limit decides which files are bad: a changed limit must not reuse cached verdicts
    cache = ScanCache(cache_path, layout_cls.name, {**options, "_max_pixels": max_pixels()})
    result = layout_cls.scan(root, files, options, cache, progress, verify)
    cache.save()
    notes = list(result.notes)
    used = {str(c.image_path) for c in result.cases} | {str(c.mask.path) for c in result.cases if c.mask.path}
    used |= {str(b.path) for b in result.bad_files} | set(result.used)
    used |= {str(v) for v in (result.options or {}).values() if isinstance(v, str)}
    bad_stems = {Path(b.path).stem for b in result.bad_files}  # a bad image's mask is not "unrelated"
    ignored = sorted(str(p.relative_to(root)) for p in files if str(p) not in used
                     and not any(p.stem == s or p.stem.startswith(s + "_") for s in bad_stems))
    if ignored:
        notes.append(f"{len(ignored)} file(s) not used by the {layout_cls.name} layout (not images, masks or "
                     f"mask CSVs it recognises), e.g. {', '.join(ignored[:3])}")
    if skipped_links:
        notes.append(f"{len(skipped_links)} symbolic link(s) pointing outside the dataset folder were not "
                     f"followed, e.g. {skipped_links[0]}")
    ds = Dataset(root, layout_cls.name, result.cases, result.labels, result.bad_files, notes,
                 {**options, **result.options}, result.label_lut, workdir)
    ds.scan_stats = {"seconds": round(time.perf_counter() - t0, 4), "cache_hits": cache.hits,
                     "cache_misses": cache.misses, "n_files": len(files)}
    return ds
