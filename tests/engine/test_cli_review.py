"""CLI contract of ``python -m engine users …`` and ``python -m engine review …`` (issue 9), on the
default workspace SQLite store, a ``--store`` URL and ``SEGWB_STORE_URL`` (PostgreSQL too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.__main__ import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nerve_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.phantoms import generate_nerve_phantom

    out = tmp_path_factory.mktemp("phantom_review_cli") / "nerve"
    generate_nerve_phantom(out, subjects=2, frames=4, seed=0)
    return out


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_review_decide_contract(nerve_tiny: Path, workspace: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    ds = str(nerve_tiny)
    # keep_a keeps A AS GIVEN: "1_3" sorts after "1_10"-style ids, so use an order that is not sorted
    assert main(["review", "decide", ds, "--pair", "1_2", "1_1", "--decision", "keep_a", "--user", "alice"]) == 0
    e1 = int(last_line(capsys.readouterr().out))
    # bob has not seen alice's decision: exit 3, message names who/what/when, nothing written
    assert main(["review", "decide", ds, "--pair", "1_1", "1_2", "--decision", "keep_a", "--user", "bob"]) == 3
    err = capsys.readouterr().err
    assert "alice" in err and "keep_a" in err and "UTC" in err and f"event {e1}" in err
    assert main(["review", "decide", ds, "--pair", "1_1", "1_2", "--decision", "keep_a", "--user", "bob",
                 "--base-event", str(e1 + 50)]) == 3
    capsys.readouterr()
    out_json = tmp_path / "dec.json"
    assert main(["review", "decisions", ds, "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())
    assert len(rows) == 1
    r = rows[0]
    assert (r["a"], r["b"], r["decision"], r["kept"], r["dropped"], r["user"], r["event_id"]) == \
        ("1_2", "1_1", "keep_a", ["1_2"], ["1_1"], "alice", e1)
    # bob saw it now: his keep_b on (1_1, 1_2) keeps 1_2
    assert main(["review", "decide", ds, "--pair", "1_1", "1_2", "--decision", "keep_b", "--user", "bob",
                 "--base-event", str(e1)]) == 0
    e2 = int(last_line(capsys.readouterr().out))
    assert e2 > e1
    assert main(["review", "decisions", ds, "--json", str(out_json)]) == 0
    r = json.loads(out_json.read_text())[0]
    assert (r["a"], r["b"], r["decision"], r["kept"], r["dropped"], r["user"], r["event_id"]) == \
        ("1_1", "1_2", "keep_b", ["1_2"], ["1_1"], "bob", e2)
    assert main(["review", "decide", ds, "--pair", "1_1", "1_2", "--decision", "drop_both", "--user", "carol",
                 "--force"]) == 0
    e3 = int(last_line(capsys.readouterr().out))
    assert main(["review", "undo", ds, "--pair", "1_2", "1_1", "--user", "carol"]) == 0
    capsys.readouterr()
    assert main(["review", "decisions", ds, "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())[0]["event_id"] == e2 != e3
    # unknown case ids are refused (exit 2)
    assert main(["review", "decide", ds, "--pair", "1_1", "nope", "--decision", "keep_a", "--user", "x"]) == 2
    assert (workspace / "segwb.sqlite").is_file()  # one store per workspace


def test_users_and_roles_contract(nerve_tiny: Path, workspace: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ds = str(nerve_tiny)
    monkeypatch.setenv("SEGWB_PASSWORD", "harbor-violet-piano-42")
    assert main(["users", "add", "root", "--role", "admin"]) == 0
    monkeypatch.delenv("SEGWB_PASSWORD")
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("quiet-lantern-meadow-7\n"))
    assert main(["users", "add", "vera", "--role", "viewer"]) == 0
    out = tmp_path / "users.json"
    assert main(["users", "list", "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == [{"name": "root", "role": "admin", "active": True},
                                           {"name": "vera", "role": "viewer", "active": True}]
    from engine.store import ReviewStore, default_store_url

    with ReviewStore(default_store_url()) as s:
        assert s.authenticate("vera", "quiet-lantern-meadow-7").role == "viewer"  # stdin line, newline stripped
        n_before = len(s.users())
    capsys.readouterr()
    for user in ("vera", "ghost"):  # insufficient role / unknown user: exit 4, nothing written
        assert main(["review", "decide", ds, "--pair", "1_1", "1_2", "--decision", "keep_a", "--user", user]) == 4
    assert "viewer" in capsys.readouterr().err
    assert main(["review", "decisions", ds, "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text()) == []
    assert main(["users", "set-role", "vera", "--role", "reviewer"]) == 0
    assert main(["review", "decide", ds, "--pair", "1_1", "1_2", "--decision", "keep_a", "--user", "vera"]) == 0
    assert main(["users", "disable", "vera"]) == 0
    assert main(["review", "decide", ds, "--pair", "1_1", "1_2", "--decision", "keep_b", "--user", "vera",
                 "--force"]) == 4
    assert main(["users", "list", "--json", str(out)]) == 0
    assert {"name": "vera", "role": "reviewer", "active": False} in json.loads(out.read_text())
    assert main(["users", "add", "root", "--role", "viewer"]) == 2  # exists (password from stdin: empty → error)
    with ReviewStore(default_store_url()) as s:
        assert len(s.users()) == n_before


def test_users_password_policy_locks_unlock_and_force_reset(workspace: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.errors import PermissionDenied
    from engine.store import ReviewStore, default_store_url
    from engine.store.signin import SignInPolicy

    monkeypatch.setenv("SEGWB_PASSWORD", "root1")
    assert main(["users", "add", "root", "--role", "admin"]) == 2
    err = capsys.readouterr().err
    assert "too short" in err and "at least 12" in err
    monkeypatch.setenv("SEGWB_PASSWORD", "harbor-violet-piano-42")
    assert main(["users", "add", "root", "--role", "admin"]) == 0
    with ReviewStore(default_store_url()) as s:
        s.set_signin_policy(SignInPolicy(base_delay=0.0), actor="root")
        for _ in range(10):
            with pytest.raises(PermissionDenied, match="wrong"):
                s.authenticate("root", "wrong-password-guess", address="203.0.113.9")
    capsys.readouterr()
    assert main(["users", "locks"]) == 0
    out = capsys.readouterr().out
    assert "root" in out and "10 failures" in out and "locked until" in out and "203.0.113.9" in out
    assert main(["users", "unlock", "root"]) == 0 and "unlocked account root" in capsys.readouterr().out
    assert main(["users", "unlock", "root"]) == 0 and "nothing to unlock" in capsys.readouterr().out
    assert main(["users", "unlock", "203.0.113.9", "--address"]) == 0 and "unlocked" in capsys.readouterr().out
    assert main(["users", "force-reset", "root"]) == 0
    assert main(["users", "policy", "--min-length", "16"]) == 0
    assert "min_length             16" in capsys.readouterr().out
    with ReviewStore(default_store_url()) as s:
        assert s.authenticate("root", "harbor-violet-piano-42").name == "root" and s.password_change_required("root")
        assert s.signin_failures() == [] and s.signin_policy().min_length == 16
        log = s.admin_log()
        assert [r["action"] for r in log[-5:]] == ["signin_unlock", "signin_unlock", "signin_unlock",
                                                   "user_require_password_change", "setting"]
        assert all(r["actor"].startswith("local:") for r in log[-5:])
    assert main(["users", "force-reset", "root", "--cancel"]) == 0


def test_python_m_engine_exit_codes_and_store_url(nerve_tiny: Path, pg_server, tmp_path: Path) -> None:
    """The real ``python -m engine`` process against PostgreSQL via SEGWB_STORE_URL and --store."""
    url = pg_server.new_database()
    env = {**os.environ, "SEGWB_STORE_URL": url, "SEGWB_WORKSPACE": str(tmp_path / "ws")}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, input=stdin,
                              capture_output=True, text=True, timeout=120)

    r = run("review", "decide", str(nerve_tiny), "--pair", "2_1", "1_1", "--decision", "keep_b", "--user", "alice")
    assert r.returncode == 0, r.stderr
    e1 = int(last_line(r.stdout))
    r = run("review", "decide", str(nerve_tiny), "--pair", "2_1", "1_1", "--decision", "keep_a", "--user", "bob")
    assert r.returncode == 3 and "alice" in r.stderr and "keep_b" in r.stderr
    r = run("users", "add", "root", "--role", "admin", stdin="harbor-violet-piano-42\n")
    assert r.returncode == 0, r.stderr
    r = run("review", "decide", str(nerve_tiny), "--pair", "2_1", "1_1", "--decision", "keep_a", "--user", "bob",
            "--base-event", str(e1))
    assert r.returncode == 4 and "unknown user" in r.stderr
    out = tmp_path / "dec.json"
    env.pop("SEGWB_STORE_URL")
    r = run("review", "decisions", str(nerve_tiny), "--json", str(out), "--store", url)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [(x["a"], x["b"], x["decision"], x["kept"], x["dropped"], x["user"], x["event_id"]) for x in rows] == \
        [("2_1", "1_1", "keep_b", ["1_1"], ["2_1"], "alice", e1)]
    assert not (tmp_path / "ws" / "segwb.sqlite").exists()  # everything went to PostgreSQL
