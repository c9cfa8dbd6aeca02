"""``bench/run_all.py`` (``make bench``) and the result history of ``bench/_common.py``.

The runner is exercised on stand-in benchmarks in a temporary ``bench/`` folder (the real ones
take minutes); the discovery test looks at the real folder.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture()
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    common = importlib.import_module("_common")
    run_all = importlib.import_module("run_all")
    fake = tmp_path / "bench"
    results = fake / "results"
    results.mkdir(parents=True)
    monkeypatch.setattr(run_all, "BENCH_DIR", fake)
    monkeypatch.setattr(run_all, "RESULTS", results)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(common, "RESULTS", results)
    return run_all, common, fake, results


def _fake_bench(folder: Path, name: str, code: int = 0) -> None:
    (folder / f"{name}.py").write_text(
        "import json, sys\n"
        "from pathlib import Path\n"
        f"out = Path(__file__).parent / 'results' / '{name}.json'\n"
        "out.write_text(json.dumps({'benchmark': '" + name + "', 'created': 'now', 'args': sys.argv[1:]}))\n"
        f"sys.exit({code})\n")


def test_discovery_lists_every_real_benchmark() -> None:
    run_all = importlib.import_module("bench.run_all")
    names = run_all.discover()
    assert {"conflicts", "indexing", "inference", "training", "app_pages"} <= set(names)
    assert "run_all" not in names and not any(n.startswith("_") for n in names)
    assert set(run_all.KNOWN) <= set(names)  # no stale entries


def test_runner_runs_the_selection_and_summarises(runner, capsys: pytest.CaptureFixture[str]) -> None:
    run_all, _, fake, results = runner
    _fake_bench(fake, "alpha")
    _fake_bench(fake, "beta", code=3)
    _fake_bench(fake, "gamma")
    (fake / "_helper.py").write_text("raise SystemExit('helpers are not benchmarks')\n")
    rc = run_all.main(["--skip", "gamma"])
    out = capsys.readouterr().out
    assert rc == 1  # beta failed
    assert "alpha" in out and "rc=3" in out and "gamma" in out and "--skip" in out
    summary = json.loads((results / "run_all.json").read_text())
    by_name = {r["name"]: r for r in summary["runs"]}
    assert set(by_name) == {"alpha", "beta"} and summary["skipped"] == {"gamma": "--skip"}
    assert by_name["alpha"]["exit_code"] == 0 and by_name["beta"]["exit_code"] == 3
    assert by_name["alpha"]["results"] == ["bench/results/alpha.json"]
    assert len(summary["load_at_start"]) == 3 and by_name["alpha"]["load_before"] is not None
    assert not (results / "gamma.json").exists()

    assert run_all.main(["--only", "alpha"]) == 0
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.main(["--only", "nope"])


def test_skip_slow_and_quick_arguments(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    run_all, _, fake, results = runner
    _fake_bench(fake, "fast")
    _fake_bench(fake, "heavy")
    monkeypatch.setattr(run_all, "KNOWN", {"heavy": run_all.BenchInfo(slow=True),
                                           "fast": run_all.BenchInfo(quick_args=("--repeat", "1"))})
    assert run_all.main(["--skip-slow", "--quick"]) == 0
    assert json.loads((results / "fast.json").read_text())["args"] == ["--repeat", "1"]
    assert not (results / "heavy.json").exists()


def test_previous_results_go_to_history(runner) -> None:
    _, common, _, results = runner
    first = common.save_result("thing", {"x": 1})
    assert not (results / "history").exists()  # nothing to keep yet
    second = common.save_result("thing", {"x": 2})
    assert first == second
    kept = list((results / "history").glob("thing-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["x"] == 1
    assert common.archive_previous(second) is not None
    assert len(list((results / "history").glob("thing-*.json"))) == 2  # the current one, archived once
    common.archive_previous(second)
    assert len(list((results / "history").glob("thing-*.json"))) == 2  # never twice
