"""Cleaned manifests: the list of cases and mask sources that training accepts.

A manifest is JSON written by review tools (``python -m engine manifest``): the dataset it
came from, the label map, every kept case with its (possibly corrected) mask source, and
the dropped cases with reasons. :func:`engine.datasets.open_dataset` opens a manifest like
a folder, so training and evaluation take either. :func:`save_manifest` is the safe way to write
one where a user chose the path: it never replaces a file this program did not write
(:func:`is_product_manifest`).

Example:
    >>> write_manifest("clean.json", ds, ds.cases[:10], dropped=[("2_5", "conflict")])  # doctest: +SKIP
    >>> open_dataset("clean.json").layout                                             # doctest: +SKIP
    'manifest'
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from engine.datasets.base import BadFile, Case, Dataset
from engine.errors import ConfigError, LayoutError, unknown_name
from engine.fsutil import atomic_write_json

if TYPE_CHECKING:
    from engine.workspace import Workspace

MANIFEST_FORMAT = "segwb-manifest"
MANIFEST_VERSION = 1


def is_manifest(path: str | Path) -> bool:
    """True when ``path`` is a JSON file starting like a manifest (cheap sniff)."""
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        with open(p, "rb") as fh:
            head = fh.read(256).decode("utf-8", errors="replace")
    except OSError:
        return False
    return MANIFEST_FORMAT in head


def write_manifest(path: str | Path, source: Dataset, cases: Sequence[Case],
                   dropped: Sequence[tuple[str, str]] = (), info: dict[str, Any] | None = None) -> Path:
    """Write a manifest atomically.

    Args:
        path: output ``.json``.
        source: the dataset the cases come from (root, layout, labels, options are recorded).
        cases: kept cases; their ``mask`` sources may differ from the source dataset's.
        dropped: ``(case_id, reason)`` of removed cases.
        info: extra provenance (policy, decision counts, store path, ...).
    """
    data = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"root": str(source.root), "layout": source.layout,
                   "options": source.options},
        "labels": {str(k): v for k, v in source.labels.items()},
        "label_lut": source.label_lut.tolist() if source.label_lut is not None else None,
        "info": info or {},
        "n_cases": len(cases),
        "cases": [c.to_dict() for c in cases],
        "dropped": [{"case_id": cid, "reason": why} for cid, why in dropped],
    }
    atomic_write_json(path, data, indent=1)
    return Path(path)


def read_manifest(path: str | Path, workspace: Workspace | str | Path | None = None) -> Dataset:
    """Open a manifest as a :class:`Dataset` (layout ``manifest``); its workspace folder (review
    store, caches) is keyed by the manifest file in ``workspace`` (default: the current one).

    Cases whose image (or mask file) no longer exists are listed in ``bad_files``.

    Raises:
        LayoutError: not a manifest, or an unsupported version.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayoutError(f"cannot read manifest ({exc})", path=path,
                          hint="re-export it with `python -m engine manifest`") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise LayoutError("not a segwb manifest", path=path, hint="pass a dataset folder or a manifest JSON")
    if int(data.get("version", 0)) > MANIFEST_VERSION:
        raise LayoutError(f"manifest version {data.get('version')} is newer than this program supports",
                          path=path, hint="upgrade the workbench")
    cases, bad = [], []
    for d in data.get("cases", []):
        c = Case.from_dict(d)
        if not Path(c.image_path).exists():
            bad.append(BadFile(c.image_path, f"case {c.case_id}: image listed in the manifest no longer exists"))
            continue
        if c.mask.kind == "file" and c.mask.path and not Path(c.mask.path).exists():
            bad.append(BadFile(c.mask.path, f"case {c.case_id}: mask listed in the manifest no longer exists"))
            continue
        cases.append(c)
    src = data.get("source", {})
    notes = [f"manifest {path.name}: {len(cases)} cases from {src.get('root')} ({src.get('layout')}), "
             f"{len(data.get('dropped', []))} dropped"]
    from engine.workspace import Workspace

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ds = Dataset(src.get("root", str(path.parent)), "manifest", cases,
                 {int(k): v for k, v in data.get("labels", {"0": "background", "1": "foreground"}).items()},
                 bad, notes, src.get("options") or {}, data.get("label_lut"),
                 workdir=ws.dataset_dir(path))  # keyed by the manifest file: its own store/caches
    ds.manifest_path = path
    ds.manifest_info = data.get("info", {})
    ds.dropped = [(d["case_id"], d.get("reason", "")) for d in data.get("dropped", [])]
    return ds


def is_product_manifest(path: str | Path) -> bool:
    """True when ``path`` is a JSON document whose ``format`` is this program's manifest format
    (parsed fully: a file that merely mentions the format string is not enough)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT


def save_manifest(path: str | Path, ds: Dataset, cases: Sequence[Case], dropped: Sequence[tuple[str, str]],
                  info: dict[str, Any] | None = None, *,
                  on_exists: str = "refuse") -> tuple[Path, str | None]:
    """Write a manifest without ever replacing a file this program did not write.

    An existing file at ``path`` is replaced only when it is a manifest of this program
    (:func:`is_product_manifest`). Anything else (a model's ``card.json``, a config, a folder) is
    kept: ``on_exists="refuse"`` raises, ``"rename"`` writes ``<stem>-1.json``, ``-2``... instead
    (created exclusively, so a file appearing meanwhile is not replaced either).

    Args:
        path: the ``.json`` to write.
        ds, cases, dropped, info: as :func:`write_manifest`.
        on_exists: ``refuse`` (CLI) or ``rename`` (review page).

    Returns:
        ``(path written, note or None)``; the note says when another name was chosen, and why.

    Raises:
        ConfigError: ``path`` holds a foreign file and ``on_exists="refuse"``; not writable.
    """
    if on_exists not in ("refuse", "rename"):
        raise unknown_name("on_exists", on_exists, ("refuse", "rename"))
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".json", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write_manifest(tmp, ds, cases, dropped, info)
    except OSError as exc:
        raise ConfigError(f"cannot write the manifest ({exc.strerror or exc})", path=path,
                          hint="choose a folder you can write to") from None
    note = None
    try:
        for n in range(0, 1000):
            target = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix or '.json'}")
            exists = target.exists() or target.is_symlink()
            if exists and not target.is_symlink() and target.is_file() and is_product_manifest(target):
                os.replace(tmp, target)  # an earlier manifest of ours: replaced atomically
                return target, note
            if not exists:
                try:
                    os.link(tmp, target)  # fails if the name appeared meanwhile: nothing replaced
                except FileExistsError:
                    continue
                return target, note
            if on_exists == "refuse":
                raise ConfigError("the file exists and is not a manifest written by this program: it was "
                                  "not overwritten", path=target,
                                  hint="choose another output path (a new .json, or an earlier manifest to replace)")
            if note is None:
                note = (f"{path} exists and is not a manifest written by this program, so it was kept; "
                        f"the manifest was written under another name")
        raise ConfigError("no free file name next to the manifest path", path=path,
                          hint="choose another output path")
    finally:
        tmp.unlink(missing_ok=True)
