"""Tests for engine.jobs: real training subprocesses (``python -m engine train``) on a tiny dataset.

The dataset: 64×64 noise images with a bright disk (and its mask) in 2 of 3 images, 6 subjects × 4
frames (paired layout). Models are tiny (classic U-Net, width 4, 2 levels). Three jobs start at once
(module fixture) so their start-up overlaps: one runs to the end, one is cancelled, one is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine import jobs
from engine.augment import AugmentConfig, Preprocess
from engine.checkpoint import list_weights
from engine.errors import ConfigError
from engine.fsutil import atomic_write_json
from engine.models import ModelSpec
from engine.splits import SplitSpec
from engine.training import TrainConfig, read_history
from engine.workspace import Workspace
from tests.support.helpers import SIZE, make_dataset

pytestmark = pytest.mark.slow

TIMEOUT = 240.0  # seconds; 2 shared, busy cores


def config(data: Path, name: str, **kw) -> TrainConfig:
    base = dict(data=str(data), model=ModelSpec(arch="unet_classic", base_channels=4, encoder_depth=2),
                preprocess=Preprocess(size=(SIZE, SIZE)), augment=AugmentConfig(), epochs=2, batch_size=2,
                lr=3e-3, device="cpu", split=SplitSpec(k=3), val_empty_policy="exclude", preview_count=2,
                name=name, status_interval=0.0, scheduler="none", num_workers=0)
    base.update(kw)
    return TrainConfig(**base)


def wait_for(pred, timeout: float = TIMEOUT, poll: float = 0.1, what: str = "condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"{what} not reached within {timeout:.0f} s")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("jobs")
    ws = Workspace(root / "workspace")
    data = make_dataset(root / "disks")
    started: list[jobs.Job] = []
    try:
        done = jobs.start_training(config(data, "jobs-done", epochs=3), ws)
        long = jobs.start_training(config(data, "jobs-cancel", epochs=200), ws)
        killed = jobs.start_training(config(data, "jobs-killed", epochs=200), ws)
        started += [done, long, killed]
        yield {"root": root, "ws": ws, "data": data, "done": done, "cancel": long, "killed": killed}
    finally:
        for job in started:  # never leave a training process behind
            if jobs.job_status(job.run_dir, log_lines=0)["alive"]:
                _kill_group(job.pid)


# ------------------------------------------------------------------------------------------ start

def test_start_writes_config_job_file_and_launches_the_cli(env) -> None:
    job = env["done"]
    ws: Workspace = env["ws"]
    assert job.run_dir.parent == ws.root / "runs" and job.run_dir.name.startswith("jobs-done-")
    cfg = TrainConfig.load(job.run_dir / "config.json")
    assert cfg.name == "jobs-done" and cfg.epochs == 3 and cfg.export
    assert Path(cfg.data) == env["data"].resolve() and Path(cfg.out) == job.run_dir
    rec = jobs._read(job.run_dir / jobs.JOB_FILE)
    assert rec["pid"] == job.pid and rec["workspace"] == str(ws.root)
    assert rec["command"][1:4] == ["-m", "engine", "train"] and "--export" in rec["command"]
    assert rec["command"][0] == sys.executable
    assert os.getpgid(job.pid) == job.pid or not jobs._alive(job.pid)  # its own process group


def test_status_runs_to_finished_history_grows_and_model_is_exported(env) -> None:
    job = env["done"]
    seen_states: list[str] = []
    lengths: list[int] = []

    def finished() -> bool:
        info = jobs.job_status(job.run_dir, log_lines=0)
        seen_states.append(info["state"])
        lengths.append(len(read_history(job.run_dir)))
        return info["state"] in jobs.FINAL_STATES

    wait_for(finished, what="the end of the run")
    info = jobs.job_status(job.run_dir)
    assert info["state"] == "finished", (info, jobs.tail_log(job.run_dir))
    assert "running" in seen_states and seen_states.index("running") < len(seen_states) - 1
    # the history grew epoch by epoch, and the page could see the partial history while it ran
    assert lengths == sorted(lengths) and lengths[-1] == 3
    assert any(0 < n < 3 for n in lengths), lengths
    assert info["epoch"] == info["epochs"] == 3 and info["fraction"] == 1.0 and not info["active"]
    assert info["metric"] == "val_dice" and 0.0 <= info["best_metric"] <= 1.0 and 1 <= info["best_epoch"] <= 3
    hist = read_history(job.run_dir)
    assert max(r["val_dice"] for r in hist) == pytest.approx(info["best_metric"])
    # exported into <workspace>/models/<name>, hence listed by the model pickers
    assert info["exported_name"] == "jobs-done"
    names = {w["name"]: w for w in list_weights(env["ws"])}
    assert "jobs-done" in names and "error" not in names["jobs-done"]
    assert Path(names["jobs-done"]["folder"]) == env["ws"].root / "models" / "jobs-done"
    # the process has exited (reaped) with code 0, the CLI's summary is in the log
    wait_for(lambda: jobs._returncode(job.pid) is not None, 30, what="process exit")
    assert jobs._returncode(job.pid) == 0 and not jobs._alive(job.pid)
    assert "state    finished" in jobs.tail_log(job.run_dir, 10)
    assert (job.run_dir / "preview" / "epoch_003.png").is_file()


def test_cancel_stops_a_running_job(env) -> None:
    job = env["cancel"]

    def stepping():
        info = jobs.job_status(job.run_dir, log_lines=0)
        assert info["state"] in jobs.ACTIVE_STATES, (info, jobs.tail_log(job.run_dir))
        return info["state"] == "running" and info["step"] >= 1 and info["steps_per_epoch"] > 0

    wait_for(stepping, what="the first training steps")
    running = jobs.job_status(job.run_dir)
    assert running["active"] and running["alive"] and 0.0 <= running["fraction"] < 1.0
    assert running["epochs"] == 200
    info = jobs.cancel(job.run_dir, grace=120.0)
    assert info["state"] == "cancelled", info
    assert not info["active"] and not jobs._alive(job.pid)
    assert (job.run_dir / "last" / "card.json").is_file()  # the loop saved its last weights
    assert not (job.run_dir / "CANCEL").exists() and not info["cancel_requested"]
    assert len(read_history(job.run_dir)) < 200
    # cancelling an ended run changes nothing
    assert jobs.cancel(job.run_dir, grace=1.0)["state"] == "cancelled"


def test_killed_process_is_reported_died(env) -> None:
    job = env["killed"]
    wait_for(lambda: (job.run_dir / "status.json").is_file(), what="status.json")
    assert jobs.job_status(job.run_dir, log_lines=0)["state"] in jobs.ACTIVE_STATES
    os.killpg(job.pid, signal.SIGKILL)
    info = wait_for(lambda: (lambda i: i if i["state"] == "died" else None)(jobs.job_status(job.run_dir)),
                    30, what="died state")
    assert not info["alive"] and not info["active"] and info["returncode"] == -signal.SIGKILL
    assert "ended without" in info["message"] and info["error"]
    assert "engine train" in info["log"]  # the log tail (the command line is its first line)


# ------------------------------------------------------------------------------------------ list / log

def test_list_jobs_newest_first(env) -> None:
    ws: Workspace = env["ws"]
    extra = ws.root / "runs" / "cli-run-20000101-000000"  # a run started from the command line long ago
    extra.mkdir(parents=True, exist_ok=True)
    atomic_write_json(extra / "status.json", {"state": "finished", "epoch": 4, "epochs": 4, "name": "cli-run",
                                              "started": "2000-01-01T00:00:00+00:00", "best_metric": 0.5,
                                              "metric": "val_dice", "pid": 1})
    rows = jobs.list_jobs(ws)
    runs = [r["run"] for r in rows]
    assert runs[-1] == extra.name
    assert {env["done"].run_dir.name, env["cancel"].run_dir.name, env["killed"].run_dir.name} <= set(runs)
    cli = rows[-1]
    assert cli["state"] == "finished" and cli["name"] == "cli-run" and cli["best_metric"] == 0.5
    assert (cli["epoch"], cli["epochs"]) == (4, 4) and "log" not in cli
    # newest first by launch time (job.json, sub-second); a CLI run without job.json by its start time
    keys = [jobs._read(Path(r["run_dir"]) / jobs.JOB_FILE).get("launched") or jobs._iso_to_epoch(r["started"])
            for r in rows]
    assert keys == sorted(keys, reverse=True) and all(k is not None for k in keys)
    assert jobs.list_jobs(env["root"] / "empty-workspace") == []


def test_tail_log_returns_last_lines(tmp_path: Path) -> None:
    (tmp_path / jobs.LOG_FILE).write_text("".join(f"line {i}\n" for i in range(100)) + "progress 1\rprogress 2\n")
    assert jobs.tail_log(tmp_path, 3).splitlines() == ["line 98", "line 99", "progress 2"]
    assert jobs.tail_log(tmp_path / "missing") == "" and jobs.tail_log(tmp_path, 0) == ""


# ------------------------------------------------------------------------------------------ no subprocess

def test_dead_pid_and_reused_pid_are_died(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    atomic_write_json(run / "status.json", {"state": "running", "epoch": 1, "epochs": 5, "step": 2,
                                            "steps_per_epoch": 4, "pid": pid, "started": jobs._now_iso()})
    (run / jobs.LOG_FILE).write_text("epoch 1\nRuntimeError: out of memory\n")
    info = jobs.job_status(run)
    assert info["state"] == "died" and info["error"] == "RuntimeError: out of memory"
    # a live process that started AFTER the run (the pid was reused) is not the run
    atomic_write_json(run / "status.json", {"state": "running", "pid": os.getpid(),
                                            "started": "2000-01-01T00:00:00+00:00"})
    assert jobs.job_status(run)["state"] == "died"
    atomic_write_json(run / "status.json", {"state": "running", "pid": os.getpid(), "started": jobs._now_iso()})
    assert jobs.job_status(run)["state"] == "running"


@contextmanager
def sleeper() -> Iterator[subprocess.Popen]:
    """A process in its own session that sleeps 120 s and never looks at the CANCEL file; killed on exit."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cancel_escalates_to_sigterm_when_the_run_does_not_stop(tmp_path: Path) -> None:
    """A process that never looks at the CANCEL file (e.g. still reading data) is stopped by signal."""
    run = tmp_path / "stuck"
    run.mkdir()
    with sleeper() as proc:
        atomic_write_json(run / jobs.JOB_FILE, {"pid": proc.pid, "launched": time.time(), "name": "stuck"})
        atomic_write_json(run / "status.json", {"state": "starting", "pid": proc.pid, "started": jobs._now_iso(),
                                                "message": "reading and preprocessing the data"})
        assert jobs.job_status(run)["state"] == "starting"
        t0 = time.monotonic()
        info = jobs.cancel(run, grace=0.5)
        assert info["state"] == "cancelled" and "signal" in info["message"]
        assert proc.wait(timeout=10) == -signal.SIGTERM and time.monotonic() - t0 < 30
        assert not (run / "CANCEL").exists()


def test_cancel_without_waiting_is_enforced_by_a_later_status(tmp_path: Path) -> None:
    run = tmp_path / "stuck2"
    run.mkdir()
    with sleeper() as proc:
        atomic_write_json(run / jobs.JOB_FILE, {"pid": proc.pid, "launched": time.time(), "name": "stuck2"})
        atomic_write_json(run / "status.json", {"state": "running", "pid": proc.pid, "started": jobs._now_iso()})
        info = jobs.cancel(run, grace=0.3, wait=False)
        assert info["state"] == "running" and info["cancel_requested"] and (run / "CANCEL").exists()
        time.sleep(0.5)
        assert jobs.job_status(run)["state"] == "cancelled"
        assert proc.wait(timeout=10) == -signal.SIGTERM


def test_start_refuses_bad_requests_without_launching(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    data = make_dataset(tmp_path / "d", n_subjects=2, frames=2)
    with pytest.raises(ConfigError, match="not found"):
        jobs.start_training(config(tmp_path / "nowhere", "x"), ws)
    with pytest.raises(ConfigError, match="not divisible"):  # 2-level U-Net needs multiples of 4
        jobs.start_training(config(data, "x", preprocess=Preprocess(size=(66, 66))), ws)
    with pytest.raises(ConfigError, match="architecture"):
        jobs.start_training(config(data, "x", model=ModelSpec(arch="no_such_net")), ws)
    shipped = tmp_path / "weights"
    (shipped / "lung-cxr").mkdir(parents=True)
    (shipped / "lung-cxr" / "card.json").write_text("{}")
    import engine.checkpoint

    mp = pytest.MonkeyPatch()
    mp.setattr(engine.checkpoint, "REPO_WEIGHTS", shipped)
    try:
        with pytest.raises(ConfigError, match="shipped model"):
            jobs.start_training(config(data, "lung-cxr"), ws)
    finally:
        mp.undo()
    used = tmp_path / "used"
    used.mkdir()
    (used / "status.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds"):
        jobs.start_training(config(data, "x", out=str(used)), ws)
    assert not (ws.root / "runs").exists() or not any((ws.root / "runs").iterdir())


def test_a_cancelled_child_is_reaped_without_a_later_status(tmp_path: Path) -> None:
    """No <defunct> process stays under the server after a cancel, even if nobody polls again."""
    run = tmp_path / "reap"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    jobs._track_child(proc)
    try:
        atomic_write_json(run / jobs.JOB_FILE, {"pid": proc.pid, "launched": time.time(), "name": "reap"})
        atomic_write_json(run / "status.json", {"state": "running", "pid": proc.pid, "started": jobs._now_iso()})
        os.killpg(proc.pid, signal.SIGTERM)  # stopped from outside; nobody polls its status afterwards
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{proc.pid}").exists():
            time.sleep(0.05)
        assert not Path(f"/proc/{proc.pid}").exists(), "the cancelled child is still a zombie"
        assert proc.returncode == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        jobs._CHILDREN.pop(proc.pid, None)
