"""Atomic file writes and file-set signatures used for cache invalidation.

Writes go to a temporary file in the destination folder, are flushed and fsynced,
then renamed over the target, so a crash leaves either the old or the new file,
never a half-written one.

Example:
    >>> from pathlib import Path; import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.json"
    >>> atomic_write_json(p, {"x": 1}); read_json(p)
    {'x': 1}
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from engine.errors import ReadError, WorkbenchError


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None, *, mode: int | None = None,
                exclusive: bool = False, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success rename it over ``path``.

    The temp file keeps ``path``'s suffix (or ``suffix``) so libraries that pick a
    format from the extension (PIL, tifffile) still work. On error the temp file is
    removed and ``path`` is untouched.

    Args:
        mode: file permissions (e.g. ``0o600`` for uploads and secrets); default ``0o666 & ~umask``.
        exclusive: never replace an existing file: the temp file is hard-linked to ``path``,
            which fails atomically with :class:`FileExistsError` when ``path`` exists (also
            when another process created it in the meantime).
        durable: fsync the file and its folder, so the new content also survives a power loss
            or kernel crash. False (derived files a rerun recreates and whose readers reject a
            damaged copy: reports, index caches) keeps the rename's atomicity against crashes of
            programs but skips the two fsyncs (~5-100 ms each here, more for large files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 (and some writers recreate the file): give it normal permissions
        os.chmod(tmp_path, (0o666 & ~_umask()) if mode is None else mode)
        if durable:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp_path, path)  # FileExistsError when path exists: nothing replaced
            tmp_path.unlink()
        else:
            os.replace(tmp_path, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None, exclusive: bool = False,
                       durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (``mode``/``exclusive``/``durable``: see :func:`atomic_path`)."""
    with atomic_path(path, mode=mode, exclusive=exclusive, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8", *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (``durable``: see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode(encoding), durable=durable)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, *, durable: bool = True) -> None:
    """Serialise ``obj`` as JSON and write it atomically (NaN is written as null; ``durable``:
    see :func:`atomic_path`)."""
    try:  # fast path: plain JSON types without NaN/inf (the walk below costs more than the dump)
        text = json.dumps(obj, indent=indent, allow_nan=False)
    except (ValueError, TypeError):  # NaN/inf or numpy scalars: convert, then dump
        text = json.dumps(_nan_to_none(obj), indent=indent, allow_nan=False)
    atomic_write_text(path, text + "\n", durable=durable)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, raising :class:`ReadError` with the file name on bad content."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReadError("file not found", path=path, hint="check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReadError(f"not valid JSON ({exc})", path=path,
                        hint="fix or delete the file; caches are rebuilt automatically") from None


def read_json_dict(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` when the file is missing, unreadable or not an object
    (for optional side files: job status, saved queue signals)."""
    from engine.errors import WorkbenchError

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (WorkbenchError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:  # NaN
        return None
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _nan_to_none(obj.item())  # numpy scalar
    return obj


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a file: the cheap identity used for cache invalidation."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


#: Longest file-name stem :func:`safe_name` returns (well under every file system's 255-byte limit,
#: leaving room for a suffix such as ``.png`` and a temp-file prefix).
MAX_NAME_LEN = 150
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")  # \Z: "$" would accept a trailing newline
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", "CLOCK$", *(f"COM{i}" for i in range(10)),
                               *(f"LPT{i}" for i in range(10))})


def safe_name(name: str, max_len: int = MAX_NAME_LEN) -> str:
    """The one function that turns a name from a file (case id, SOPInstanceUID, file stem, user text)
    into a file-name stem that is safe to join under an output folder.

    A name that is already safe is returned unchanged: ASCII letters, digits, ``.``, ``_``, ``-``,
    starting with a letter or digit, no ``..``, not ending with ``.``, not a Windows reserved device
    name (``CON``, ``NUL``, ``COM1``...), at most ``max_len`` characters. Anything else (path
    separators, ``..``, absolute paths, control characters, spaces, non-ASCII, over-long names) is
    replaced by ``_`` runs, trimmed, cut to length, and given a ``-<sha1[:8]>`` suffix of the
    *original* name, so two different names never map to the same stem (collision-safe) and the
    mapping is stable across runs.

    Example:
        >>> safe_name("1.2.840.113619.2.55"), safe_name("train/0")
        ('1.2.840.113619.2.55', 'train_0-44c6f7d3')
        >>> "/" in safe_name("../../etc/passwd") or safe_name("../../etc/passwd").startswith(".")
        False
    """
    text = str(name)
    if (len(text) <= max_len and _SAFE_NAME.match(text) and ".." not in text and not text.endswith(".")
            and text.split(".")[0].upper() not in _WINDOWS_RESERVED):
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    stem = re.sub(r"\.{2,}", ".", stem).strip("._-")
    stem = stem[: max(1, max_len - len(digest) - 1)].rstrip("._-") or "name"
    head, dot, rest = stem.partition(".")
    if head.upper() in _WINDOWS_RESERVED:  # "nul.txt" → Windows still reads the device NUL: "nul_.txt"
        stem = f"{head}_{dot}{rest}"
    return f"{stem}-{digest}"


def safe_child(folder: str | Path, name: str, suffix: str = "") -> Path:
    """``folder / (safe_name(name) + suffix)``, checked to stay inside ``folder``.

    Raises:
        WorkbenchError: never in practice (safe_name has no separators); an internal guard.
    """
    from engine.errors import WorkbenchError

    folder = Path(folder)
    path = folder / f"{safe_name(name)}{suffix}"
    if path.parent != folder or os.path.isabs(path.name) or path.name in (".", ".."):
        raise WorkbenchError(f"refusing to write {path}: outside {folder}", path=folder,
                             hint="report this as a bug")
    return path


_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}\Z")


def safe_filename(name: str, max_len: int = MAX_NAME_LEN) -> str:
    """A user-supplied file name (an upload's name) made safe to create in a folder, keeping its
    extension so readers chosen by suffix still work: ``safe_name(stem) + suffix``.

    Only the last path component counts (``C:\\x\\scan.dcm`` and ``../../scan.dcm`` → ``scan.dcm``);
    a suffix that is not 1–10 ASCII letters/digits (``.tar.gz`` keeps ``.gz``) is folded into the stem.

    Example:
        >>> safe_filename("../../scan.DCM"), safe_filename("C:\\tmp\\a b.png")[-4:]
        ('scan.DCM', '.png')
    """
    base = re.split(r"[\\/]", str(name))[-1]
    stem, dot, ext = base.rpartition(".")
    suffix = f".{ext}" if dot and stem and _SAFE_SUFFIX.match(f".{ext}") else ""
    stem = stem if suffix else base
    return safe_name(stem, max_len) + suffix


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` (resolved, symlinks followed) is ``folder`` or lies below it."""
    p = Path(path).expanduser().resolve()
    f = Path(folder).expanduser().resolve()
    return p == f or f in p.parents


# --- folders built beside their destination and renamed into place -------------------------------

#: Hidden sibling names used while a folder is being built (``.OUT.tmp-PID-RAND``) and while an
#: earlier one is being replaced (``.OUT.old-PID-RAND``).
_STAGE_KINDS = ("tmp", "staging", "old")


#: names of the staging folders this process created (a pid alone cannot tell: a restarted server in a
#: container often gets the pid of the one that was killed)
_OWN_STAGING: set[str] = set()


def staging_dir(out: str | Path, kind: str = "tmp") -> Path:
    """Create a hidden, empty folder beside ``out`` (same file system, so a rename is atomic):
    ``<parent>/.<name>.<kind>-<pid>-<random>``. The pid (with the process's start time) lets
    :func:`cleanup_staging` tell a crashed run's leftovers from a running one's."""
    if kind not in _STAGE_KINDS:
        raise ValueError(kind)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    made = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))
    _OWN_STAGING.add(made.name)
    return made


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[19])  # field 22 (starttime), counted from field 3
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_alive(pid: int, folder: Path) -> bool:
    """True when the process that made ``folder`` may still be running: this process only for the folders
    it made itself; another pid only when alive and started before the folder was last changed."""
    if pid == os.getpid():
        return folder.name in _OWN_STAGING
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    started = _process_start(pid)
    if started is None:
        return True
    try:
        changed = folder.stat().st_mtime
    except OSError:
        return False
    return started <= changed + 1.0  # a process that started after the folder was written is a reused pid


def cleanup_staging(out: str | Path) -> list[str]:
    """Tidy what a crashed (e.g. ``kill -9``) build of ``out`` left beside it; returns what was done, one line each.

    - ``.OUT.tmp-*`` / ``.OUT.staging-*`` of a process that no longer runs: removed (a half-built
      folder; the previous ``out`` was never touched), and so are the folders an export nested in
      its staging folder (``..OUT.staging-*.tmp-*``).
    - ``.OUT.old-*`` (the previous folder, moved aside just before the new one was renamed in):
      renamed back to ``out`` when ``out`` is missing (the crash fell between the two renames),
      else removed.
    Folders of a process that is still running are left alone (a pid reused by a later process, or
    this process's own pid after a restart, does not count as running).
    """
    import shutil

    out = Path(out)
    done: list[str] = []
    if not out.parent.is_dir():
        return done
    pattern = re.compile(rf"^\.\.?{re.escape(out.name)}\.({'|'.join(_STAGE_KINDS)})-(\d+)-")
    found = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return done
    for p in entries:
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and not _owner_alive(int(m.group(2)), p):
            nested = p.name.startswith("..")
            found.append(("tmp" if nested else m.group(1), p))
    for kind, p in sorted(found, key=lambda kp: -kp[1].stat().st_mtime):
        if kind == "old" and not out.exists():
            p.rename(out)
            done.append(f"restored {out} from an interrupted replacement ({p.name})")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name} left by an interrupted export")
    return done


_WRITE_ERRNOS = {
    errno.EROFS: ("the file system is read-only", "export to a folder on a writable disk"),
    errno.ENOSPC: ("the disk is full", "free some space (or export to another disk) and export again"),
    errno.EDQUOT: ("the disk quota is used up", "free some space (or export to another disk) and export again"),
    errno.EACCES: ("permission denied", "export to a folder you may write to, or ask for write access"),
    errno.EPERM: ("operation not permitted", "export to a folder you may write to, or ask for write access"),
    errno.EBUSY: ("the folder is busy or a mount point, which cannot be replaced",
                  "export into a new subfolder of it"),
    errno.EXDEV: ("the folder is a mount point (a different file system from its parent)",
                  "export into a new subfolder of it"),
}


def _shown_folder(folder: Path) -> Path:
    """The export folder a hidden staging folder ``.OUT.kind-PID-RAND`` is building (else ``folder``)."""
    m = re.match(rf"^\.(.+)\.({'|'.join(_STAGE_KINDS)})-\d+-", folder.name)
    return folder.parent / m.group(1) if m else folder


@contextlib.contextmanager
def write_errors(folder: str | Path) -> Iterator[None]:
    """Turn an OSError of writing into ``folder`` (read-only file system or mount, full disk, no
    permission, mount point) into a :class:`WorkbenchError` naming the folder and what to do.

    Example:
        >>> with write_errors("out"):     # doctest: +SKIP
        ...     export(...)
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        what, fix = _WRITE_ERRNOS[exc.errno]
        where = f" ({exc.filename})" if exc.filename else ""
        raise WorkbenchError(f"cannot write the export: {what}{where}", path=_shown_folder(Path(folder)),
                             hint=f"{fix}; nothing was changed in the folder") from None


def install_dir(tmp: str | Path, out: str | Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``; an existing ``out`` (which the caller has
    checked is its own) is moved aside first and removed after, so at every instant ``out`` is
    either the complete old folder or the complete new one (a crash in between is repaired by
    :func:`cleanup_staging`). An empty ``out`` is simply replaced."""
    import shutil

    tmp, out = Path(tmp), Path(out)
    old: Path | None = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = staging_dir(out, "old")
            os.replace(out, old)  # replaces the empty placeholder folder
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.rename(old, out)
        raise
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    os.chmod(out, 0o777 & ~_umask())


def stamp_text(path: str | Path | None) -> str:
    """:func:`file_stamp` as ``"size:mtime_ns"`` for cache keys; ``"-"`` without a path and
    ``"missing"`` when the file cannot be read."""
    if not path:
        return "-"
    try:
        return "%d:%d" % file_stamp(Path(path))
    except OSError:
        return "missing"


def signature(paths: Iterable[Path], root: Path | None = None) -> str:
    """A hash of the names, sizes and mtimes of ``paths``: changes when any file does."""
    h = hashlib.sha1()
    for p in sorted(paths):
        size, mtime = file_stamp(p)
        name = str(p.relative_to(root)) if root else str(p)
        h.update(f"{name}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()
