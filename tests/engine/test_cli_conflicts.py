"""CLI contract of ``python -m engine conflicts`` and ``python -m engine manifest``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.__main__ import main
from engine.datasets import open_dataset

REPO = Path(__file__).resolve().parents[2]
PAIR_KEYS = {"a", "b", "ssim", "category", "mask_dice", "area_a", "area_b", "severity"}


@pytest.fixture(scope="session")
def nerve_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.phantoms import generate_nerve_phantom

    out = tmp_path_factory.mktemp("phantom_cli") / "nerve"
    generate_nerve_phantom(out, subjects=3, frames=12, seed=0)
    return out


def test_conflicts_command_writes_the_json_contract(nerve_tiny: Path, workspace: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from engine.phantoms import load_planted_pairs

    out = tmp_path / "conflicts.json"
    assert main(["conflicts", str(nerve_tiny), "--json", str(out), "--scope", "global", "--ssim", "0.99",
                 "--ssim-size", "64x80"]) == 0
    printed = capsys.readouterr()
    assert "verified" in printed.out and "ceiling" in printed.out and "conflict" in printed.out
    data = json.loads(out.read_text())
    assert {"pairs", "groups", "ceiling", "leakage", "timing"} <= set(data)
    assert data["pairs"] and all(PAIR_KEYS <= set(p) for p in data["pairs"])
    planted = {tuple(sorted((p["a"], p["b"]))) for p in load_planted_pairs(nerve_tiny)}
    assert {(p["a"], p["b"]) for p in data["pairs"]} == planted
    assert data["config"]["scope"] == "global" and data["config"]["ssim_size"] == [64, 80]
    assert {"n_affected", "mean_affected", "dataset", "n_labelled"} <= set(data["ceiling"])
    assert "n_groups_split" in data["leakage"]
    assert data["timing"]["total"] > 0 and "ssim" in data["timing"]
    # the latest result is also kept in the dataset's workspace folder for the review page
    ds = open_dataset(nerve_tiny)
    latest = json.loads((Path(ds.workdir) / "conflicts.json").read_text())
    assert latest["pairs"] == data["pairs"]


def test_conflicts_command_options_and_errors(nerve_tiny: Path, workspace: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.json"
    assert main(["conflicts", str(nerve_tiny), "--json", str(out), "--ssim", "0.5", "--ssim-size", "32x40",
                 "--no-cache", "--candidate-k", "2", "--top", "3"]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["ssim_size"] == [32, 40] and data["config"]["candidate_k"] == 2
    assert data["stats"]["cache_hits"] == 0
    with pytest.raises(SystemExit) as e:
        main(["conflicts", str(nerve_tiny), "--ssim-size", "64"])
    assert e.value.code == 2
    assert main(["conflicts", str(tmp_path / "missing")]) == 2  # user error: one readable line
    assert "error:" in capsys.readouterr().err


def test_manifest_command_applies_policy_and_store(nerve_tiny: Path, workspace: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from engine.store import ReviewStore

    report = tmp_path / "c.json"
    assert main(["conflicts", str(nerve_tiny), "--json", str(report)]) == 0
    conflicts = [p for p in json.loads(report.read_text())["pairs"] if p["category"] == "conflict"]
    assert len(conflicts) == 3
    out = tmp_path / "clean.json"
    assert main(["manifest", str(nerve_tiny), "--out", str(out), "--policy", "drop-empty"]) == 0
    data = json.loads(out.read_text())
    empties = {p["a"] if p["area_a"] == 0 else p["b"] for p in conflicts}
    assert {d["case_id"] for d in data["dropped"]} == empties
    assert data["info"]["policy"] == "drop-empty" and data["n_cases"] == 36 - 3
    # an explicit decision overrides the proposal for its pair
    ds = open_dataset(nerve_tiny)
    keep = conflicts[0]
    with ReviewStore.for_dataset(ds) as store:
        store.record_decision(keep["a"], keep["b"], "keep_both", "alice")
    assert main(["manifest", str(nerve_tiny), "--out", str(out), "--policy", "drop-empty",
                 "--conflicts", str(report)]) == 0
    data = json.loads(out.read_text())
    assert len(data["dropped"]) == 2 and data["info"]["n_policy_proposals_overridden"] == 1
    clean = open_dataset(out)
    assert len(clean) == 34 and {keep["a"], keep["b"]} <= set(clean.case_ids)
    assert "34 of 36 cases kept" in capsys.readouterr().out
    assert main(["manifest", str(nerve_tiny), "--out", str(out), "--store", str(tmp_path / "nope.sqlite")]) == 2


def test_python_dash_m_engine_entry_point(nerve_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    env = {"SEGWB_WORKSPACE": str(tmp_path / "ws"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "engine", "conflicts", str(nerve_tiny), "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout and "timing" in proc.stdout  # the summary (the bar is tty-only)
    assert np.isclose(json.loads(out.read_text())["ceiling"]["mean_affected"], 0.5, atol=0.2)


def test_only_the_commands_module_is_imported_and_no_heavy_libraries(nerve_tiny: Path, tmp_path: Path) -> None:
    """A lighter start-up: `conflicts` imports engine/cli/conflicts.py only (other commands and
    --help still see every module), and the scan never loads torch, scipy, pandas or skimage."""
    from engine.__main__ import _command_of, build_parser

    assert _command_of(["--workspace", "w", "conflicts", "x"]) == "conflicts"
    assert _command_of(["--workspace=w", "info", "x"]) == "info" and _command_of(["-h"]) is None
    sub = next(a for a in build_parser("conflicts")._actions if a.dest == "command")
    assert set(sub.choices) == {"conflicts", "manifest"}
    for command in ("info", None):  # `info` lives in data.py: every module is registered
        sub = next(a for a in build_parser(command)._actions if a.dest == "command")
        assert {"conflicts", "manifest", "info", "demo", "train"} <= set(sub.choices)
    code = ("import sys; from engine.__main__ import main; "
            f"rc = main(['conflicts', {str(nerve_tiny)!r}, '--json', {str(tmp_path / 'c.json')!r}]); "
            "heavy = sorted(m for m in ('torch', 'scipy', 'pandas', 'skimage', 'sklearn', 'engine.cli.models', "
            "'engine.cli.train', 'engine.store') if m in sys.modules); print('HEAVY', heavy); sys.exit(rc)")
    env = {"SEGWB_WORKSPACE": str(tmp_path / "ws"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


def test_cli_progress_bar_starts_no_thread() -> None:
    """tqdm's monitor thread would keep scans from forking worker processes (can_fork_workers)."""
    import threading

    from engine.cli.common import tqdm_progress

    before = threading.active_count()
    with tqdm_progress("scan", delay=0) as report:
        report(1, 10, "reading")
        report(5, 10, "reading")
        assert threading.active_count() == before
