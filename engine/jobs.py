"""Background training jobs: ``python -m engine train`` in its own process, watched through its run folder.

The Streamlit Train page must never run training in its own process (a long loop in a script
thread blocks the page, dies with the session and cannot be cancelled cleanly). Instead
:func:`start_training` writes the config into a new run folder and launches::

    python -m engine train --config RUN/config.json --out RUN --quiet [--export]

in a new session (its own process group, so it survives page reloads and a restarted server and
can be stopped as a whole), with stdout/stderr in ``RUN/train.log`` and ``$SEGWB_WORKSPACE`` set
to the workspace. Everything the page shows is read back from the run folder (see
:mod:`engine.training.runlog`): ``status.json`` (state, epoch, step), ``history.json``,
``preview/``; plus ``RUN/job.json``, written here: the process id, command, start time and a
pending cancel request. So the page keeps no state of its own: any session, after any reload,
sees the same jobs.

States (:func:`job_status`): ``starting``, ``running``, ``finished``, ``failed``, ``cancelled``
(from ``status.json``) and ``died``: the status still says starting/running but the process is
gone (killed, out of memory, a crash before Python could write the final state). A process id
that the system has since given to another program is not mistaken for the run: the process
must have started before the run did.

Cancellation (:func:`cancel`): the ``CANCEL`` file asks the loop to stop after its current step
(it saves ``last/`` and ends as ``cancelled``); a process that has not ended after ``grace``
seconds (e.g. still reading a large dataset) gets SIGTERM on its process group, then SIGKILL,
and its status is set to ``cancelled`` here.

Example:
    >>> from engine.training import TrainConfig
    >>> job = start_training(TrainConfig(data="demo_data/nerve", epochs=5, name="nerve-unet"))  # doctest: +SKIP
    >>> job_status(job.run_dir)["state"]                                                       # doctest: +SKIP
    'starting'
    >>> cancel(job.run_dir)["state"]                                                           # doctest: +SKIP
    'cancelled'
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.fsutil import atomic_write_json, read_json_dict
from engine.workspace import Workspace

__all__ = ["Job", "start_training", "check_config", "job_status", "cancel", "list_jobs", "tail_log",
           "ACTIVE_STATES", "FINAL_STATES", "JOB_FILE", "LOG_FILE"]

REPO = Path(__file__).resolve().parents[1]
JOB_FILE = "job.json"
LOG_FILE = "train.log"
ACTIVE_STATES = ("starting", "running")
FINAL_STATES = ("finished", "failed", "cancelled", "died")
#: Seconds of slack when comparing a process's start time with the run's (clock granularity).
_START_SLACK = 5.0

# Processes started by this Python process, by pid: ``poll()`` reaps them (a finished child stays a
# zombie until its parent waits for it, and a zombie still "exists" for os.kill(pid, 0)).
_CHILDREN: dict[int, subprocess.Popen] = {}


def _track_child(proc: subprocess.Popen) -> None:
    """Remember a started process and reap it the moment it exits (finished, failed or cancelled),
    even when nobody asks for its status again: otherwise it stays a ``<defunct>`` zombie under the
    server until the next poll."""
    _CHILDREN[proc.pid] = proc
    threading.Thread(target=proc.wait, name=f"segwb-reap-{proc.pid}", daemon=True).start()


@dataclass(frozen=True)
class Job:
    """A launched training process.

    Attributes:
        run_dir: the run folder (config.json, status.json, history, checkpoints, train.log, job.json).
        pid: process id (also its process-group id: the job runs in its own session).
        name: the model name (``<workspace>/models/<name>`` when exported).
        command: the command line that was started.
    """

    run_dir: Path
    pid: int
    name: str
    command: tuple[str, ...] = ()

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _workspace(workspace: Workspace | str | Path | None) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


# ------------------------------------------------------------------------------------------ start

def _claim_run_dir(ws: Workspace, name: str) -> Path:
    """Create ``<ws>/runs/<name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... when taken) and return it."""
    runs = ws.subdir("runs")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = runs / (f"{name}-{stamp}" if i == 1 else f"{name}-{stamp}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError("cannot create a run folder", path=runs, hint="clean up the runs folder")  # pragma: no cover


def check_config(config: Any) -> None:
    """Fail fast, in this process, on what the training process would reject after its start-up.

    Builds the (randomly initialised, never downloaded) segmentation model to validate the
    architecture, encoder and options, and checks the input size against the model's size divisor.

    Raises:
        ConfigError: with the same message and hint the training would give.
    """
    if config.task != "segment":
        return
    from engine.models import build_model

    net = build_model(config.model, load_pretrained=False)
    d = int(getattr(net, "size_divisor", 1) or 1)
    pre = config.preprocess
    if config.patch_size is None and pre.resize_policy != "pad" and d > 1 and any(int(s) % d for s in pre.size):
        raise ConfigError(f"preprocess size {tuple(pre.size)} is not divisible by the model's {d}",
                          hint=f"use multiples of {d}, e.g. {tuple(max(d, int(s) // d * d) for s in pre.size)}")
    if pre.resize_policy == "pad" and pre.pad_multiple % d:
        raise ConfigError(f"pad_multiple {pre.pad_multiple} is not a multiple of the model's {d}",
                          hint=f"set preprocess.pad_multiple to {d} or a multiple of it")


def start_training(config: Any, workspace: Workspace | str | Path | None = None, *, export: bool = True,
                   check: bool = True, python: str | None = None,
                   extra_env: dict[str, str] | None = None) -> Job:
    """Launch ``python -m engine train`` for ``config`` in a separate process and return at once.

    Args:
        config: an :class:`engine.training.TrainConfig`. ``config.out`` (when set) is the run
            folder; else ``<workspace>/runs/<name>-<timestamp>``. ``config.data`` is resolved to an
            absolute path.
        workspace: the workspace the job uses (runs, caches, exported models); None = the default
            (``$SEGWB_WORKSPACE`` or ``~/.cache/segwb``). Passed to the job as ``$SEGWB_WORKSPACE``.
        export: copy the best model to ``<workspace>/models/<name>/`` at the end (so the app's model
            pickers list it).
        check: validate the model and input size here first (:func:`check_config`).
        python: interpreter to run (default: this one, ``sys.executable``).
        extra_env: more environment variables for the job (e.g. ``CUDA_VISIBLE_DEVICES``).

    Returns:
        :class:`Job` (run folder and process id). Progress: :func:`job_status`.

    Raises:
        ConfigError: missing data, a run folder that already holds a run, a config the model
            factory rejects, or (exporting) a name a shipped model in ``weights/`` already has (the
            export would be hidden behind it) or a workspace model has (unless ``config.replace_model``).
            Nothing is started then.

    Example:
        >>> job = start_training(TrainConfig(data="demo_data/nerve", epochs=2, name="demo"))   # doctest: +SKIP
        >>> job.run_dir.name                                                                   # doctest: +SKIP
        'demo-20250101-120000'
    """
    from engine.training.prepare import resolve_data_path

    ws = _workspace(workspace)
    data = resolve_data_path(config.data)
    if check:
        check_config(config)
    do_export = bool(export or config.export)
    if do_export:
        from engine.training.loop import check_export_name

        check_export_name(config.name, config.replace_model, ws)
    if config.out:
        run_dir = Path(config.out).expanduser().resolve()
        if any((run_dir / f).exists() for f in ("status.json", "resume.pt", JOB_FILE)):
            raise ConfigError("the output folder already holds a training run", path=run_dir,
                              hint="choose another output folder (or leave it empty for a new one)")
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = _claim_run_dir(ws, config.name)
    cfg = config.replace(data=data, out=str(run_dir), export=do_export)
    cfg_path = run_dir / "config.json"
    cfg.save(cfg_path)
    cmd = [python or sys.executable, "-m", "engine", "train", "--config", str(cfg_path), "--out", str(run_dir),
           "--quiet"] + (["--export"] if cfg.export else [])
    env = dict(os.environ)
    env.update(extra_env or {})
    env["SEGWB_WORKSPACE"] = str(ws.root)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(f"[{_now_iso()}] {' '.join(cmd)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise ConfigError(f"cannot start the training process ({exc})", path=run_dir,
                              hint="check the Python interpreter and the repository path") from None
    launched = time.time()
    _track_child(proc)
    atomic_write_json(run_dir / JOB_FILE, {
        "pid": proc.pid, "command": cmd, "started": _now_iso(), "launched": launched, "name": cfg.name,
        "workspace": str(ws.root), "config": str(cfg_path), "log": str(run_dir / LOG_FILE),
        "export": cfg.export, "cancel_requested": None, "cancel_grace": None})
    return Job(run_dir, proc.pid, cfg.name, tuple(cmd))


# ------------------------------------------------------------------------------------------ processes

def _proc_stat(pid: int) -> tuple[str, float | None] | None:
    """``(state letter, start time in epoch seconds)`` from /proc (Linux); None when unavailable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    if not fields:
        return None
    start = None
    try:
        ticks = int(fields[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        start = btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return fields[0], start


def _alive(pid: Any, not_after: float | None = None) -> bool:
    """Is process ``pid`` running (not a zombie) and, when ``not_after`` is given, started by then?"""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    st = _proc_stat(pid)
    if st is not None:
        state, start = st
        if state in ("Z", "X", "x"):
            return False
        if not_after is not None and start is not None and start > not_after + _START_SLACK:
            return False  # the pid now belongs to a newer process
    return True


def _iso_to_epoch(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _read(path: Path) -> dict[str, Any]:
    return read_json_dict(path)


def _int(v: Any) -> int:
    try:
        return max(0, int(v or 0))
    except (TypeError, ValueError):
        return 0


def _returncode(pid: Any) -> int | None:
    proc = _CHILDREN.get(pid) if isinstance(pid, int) else None
    return None if proc is None else proc.poll()


# ------------------------------------------------------------------------------------------ status

def tail_log(run_dir: str | Path, n: int = 40) -> str:
    """The last ``n`` lines of ``RUN/train.log`` ("" when there is none; a line rewritten with
    carriage returns shows its last version)."""
    path = Path(run_dir) / LOG_FILE
    if n <= 0 or not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 256 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    # a carriage return rewrites the line (progress bars): keep what was written last
    lines = [_last_segment(ln) for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines[-n:])


def _last_segment(line: str) -> str:
    parts = [p for p in line.split("\r") if p.strip()]
    return parts[-1].rstrip() if parts else ""


def _last_error_line(log: str) -> str:
    for line in reversed(log.splitlines()):
        s = line.strip()
        if s and not s.startswith(("File ", "^", "~")) and not s.startswith("Traceback"):
            return s
    return ""


def job_status(run_dir: str | Path, log_lines: int = 20) -> dict[str, Any]:
    """The state of the run in ``run_dir``, for display.

    Returns:
        ``state`` (``starting | running | finished | failed | cancelled | died | unknown``),
        ``active`` (bool), ``alive`` (the process exists), ``name`` (model name), ``run``
        (folder name), ``run_dir``, ``pid``, ``epoch``, ``epochs``, ``step``, ``steps_per_epoch``,
        ``fraction`` (0..1 of the planned steps), ``message``, ``best_metric``, ``best_epoch``,
        ``metric``, ``train_loss``, ``device``, ``started``, ``updated``, ``launched`` (epoch
        seconds of the launch, from job.json), ``exported`` (folder) and ``exported_name``,
        ``cancel_requested`` (bool), ``returncode`` (when this process started it and it ended),
        ``error`` (failed/died: the last error line of the log) and ``log`` (the last
        ``log_lines`` lines of ``train.log``).

    A pending cancel whose grace period is over is enforced here (SIGTERM to the job).
    """
    run = Path(run_dir)
    job = _read(run / JOB_FILE)
    status = _read(run / "status.json")
    state = str(status.get("state") or ("starting" if job else "unknown"))
    pid = status.get("pid") or job.get("pid")
    not_after = job.get("launched") if job.get("pid") == pid and job.get("launched") else \
        _iso_to_epoch(status.get("started"))
    alive = _alive(pid, not_after)
    if state in ACTIVE_STATES and not alive:
        again = _read(run / "status.json")  # it may have finished between the two reads
        if again.get("state") not in ACTIVE_STATES and again.get("state"):
            status, state = again, str(again["state"])
        else:
            state = "died"
    requested = job.get("cancel_requested")
    if state in ACTIVE_STATES and alive and requested is not None:
        grace = float(job.get("cancel_grace") or 0.0)
        if time.time() - float(requested) > grace:
            _terminate(run, pid)
            return job_status(run, log_lines)
    epochs, epoch = _int(status.get("epochs")), _int(status.get("epoch"))
    step, spe = _int(status.get("step")), _int(status.get("steps_per_epoch"))
    if state == "finished":
        fraction = 1.0
    elif epochs and spe:
        fraction = min(1.0, max(0.0, ((max(epoch, 1) - 1) * spe + step) / (epochs * spe)))
    else:
        fraction = 0.0
    exported = status.get("exported") or None
    info: dict[str, Any] = {
        "state": state, "active": state in ACTIVE_STATES, "alive": alive,
        "name": status.get("name") or job.get("name") or run.name, "run": run.name, "run_dir": str(run),
        "pid": pid, "epoch": epoch, "epochs": epochs, "step": step, "steps_per_epoch": spe,
        "fraction": fraction, "message": str(status.get("message") or ""),
        "best_metric": status.get("best_metric"), "best_epoch": status.get("best_epoch"),
        "metric": status.get("metric"), "train_loss": status.get("train_loss"), "device": status.get("device"),
        "started": status.get("started") or job.get("started"), "updated": status.get("updated"),
        "launched": job.get("launched"),
        "exported": exported, "exported_name": Path(exported).name if exported else None,
        "task": status.get("task") or "segment",
        "cancel_requested": requested is not None or (run / "CANCEL").exists(),
        "returncode": _returncode(pid),
    }
    want = max(log_lines, 40) if state in ("failed", "died") else log_lines
    log = tail_log(run, want) if want > 0 else ""
    if state == "died":
        info["message"] = ("the training process ended without writing a final state (killed, out of "
                           "memory or crashed); see the log")
    if state in ("failed", "died"):
        info["error"] = _last_error_line(log) or info["message"]
    info["log"] = "\n".join(log.splitlines()[-log_lines:]) if log_lines > 0 else ""
    return info


# ------------------------------------------------------------------------------------------ cancel

def _terminate(run: Path, pid: Any, wait: float = 5.0) -> None:
    """SIGTERM the job's process group (SIGKILL after ``wait`` s) and record the run as cancelled."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return
    try:
        group = os.getpgid(pid)
    except OSError:
        group = None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if group == pid:  # the job leads its own session: stop the whole group (data workers too)
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if not _alive(pid):
            break
    status = _read(run / "status.json")
    if status.get("state") in (None, *ACTIVE_STATES):
        status.update(state="cancelled", updated=_now_iso(),
                      message="cancelled: stopped by a signal (the run did not reach a step boundary in time)")
        atomic_write_json(run / "status.json", status)
    _clear_cancel(run)


def _clear_cancel(run: Path) -> None:
    try:
        (run / "CANCEL").unlink()
    except FileNotFoundError:
        pass
    job = _read(run / JOB_FILE)
    if job.get("cancel_requested") is not None:
        job.update(cancel_requested=None, cancel_grace=None)
        atomic_write_json(run / JOB_FILE, job)


def cancel(run_dir: str | Path, grace: float = 15.0, wait: bool = True, poll: float = 0.2) -> dict[str, Any]:
    """Stop a run: ask it to stop after its current step, and force it after ``grace`` seconds.

    Args:
        run_dir: the run folder.
        grace: seconds to let the run stop by itself (it saves ``last/``) before SIGTERM.
        wait: block until the run has ended (at most ``grace`` + ~10 s). With ``wait=False`` the
            call returns at once; the next :func:`job_status` after the grace period enforces it.
        poll: seconds between checks while waiting.

    Returns:
        :func:`job_status` after the request (``cancelled`` when ``wait``; a run that had already
        ended keeps its state).
    """
    from engine.training import request_cancel

    run = Path(run_dir)
    info = job_status(run, log_lines=0)
    if not info["active"]:
        return job_status(run)
    request_cancel(run)
    job = _read(run / JOB_FILE)
    if job:
        job.update(cancel_requested=time.time(), cancel_grace=float(grace))
        atomic_write_json(run / JOB_FILE, job)
    if not wait:
        return job_status(run)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        info = job_status(run, log_lines=0)
        if not info["active"]:
            end = time.monotonic() + 10.0  # the final state is written just before the process exits
            while info["alive"] and time.monotonic() < end:
                time.sleep(poll)
                info = job_status(run, log_lines=0)
            _clear_cancel(run)
            return job_status(run)
        time.sleep(poll)
    _terminate(run, info["pid"])
    return job_status(run)


# ------------------------------------------------------------------------------------------ list

def list_jobs(workspace: Workspace | str | Path | None = None) -> list[dict[str, Any]]:
    """Training runs under ``<workspace>/runs``, newest first, as :func:`job_status` dicts (no log).

    A run is a folder with ``job.json`` (started by :func:`start_training`) or ``status.json``
    (any ``python -m engine train`` run). Each dict also has ``mtime``.
    """
    root = _workspace(workspace).root / "runs"
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if not d.is_dir() or not ((d / JOB_FILE).is_file() or (d / "status.json").is_file()):
            continue
        info = job_status(d, log_lines=0)
        info.pop("log", None)
        files = [d / f for f in (JOB_FILE, "status.json", "history.json") if (d / f).is_file()]
        info["mtime"] = max(f.stat().st_mtime for f in files)
        out.append(info)
    return sorted(out, key=lambda r: (-_order(r), r["run"]))


def _order(info: dict[str, Any]) -> float:
    """When the user launched the run (sub-second, job.json), else when its process started."""
    launched = info.get("launched")
    if isinstance(launched, (int, float)):
        return float(launched)
    return _iso_to_epoch(info.get("started")) or info["mtime"]
