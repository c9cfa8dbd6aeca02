"""engine.serving: the team-mode preflight (also through the CLI), folder rules with symlinks, the
sign-in throttle, OIDC account mapping, and the two make targets' command lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ConfigError, PermissionDenied
from engine.serving import (
    check_data_path,
    check_write_path,
    is_loopback,
    oidc_account,
    serve_check,
    serve_mode,
)
from engine.store import LOCAL_OPERATOR, ReviewStore

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, ws: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, SEGWB_WORKSPACE=str(ws))
    env.pop("SEGWB_STORE_URL", None)
    env.pop("SEGWB_PASSWORD", None)
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_serve_check_refuses_without_admin_and_says_how(tmp_path):
    r = _cli("serve-check", ws=tmp_path)
    assert r.returncode == 2
    assert "no" in r.stderr and "python -m engine users add NAME --role admin" in r.stderr
    assert _cli("users", "add", "rev", "--role", "reviewer", ws=tmp_path, stdin="harbor-violet-42\n").returncode == 0
    assert _cli("serve-check", ws=tmp_path).returncode == 2  # accounts, but no admin
    assert _cli("users", "add", "boss", "--role", "admin", ws=tmp_path, stdin="quiet-lantern-7\n").returncode == 0
    r = _cli("serve-check", "--json", str(tmp_path / "c.json"), ws=tmp_path)
    assert r.returncode == 0 and "boss" in r.stdout and "no data roots yet" in r.stdout
    r = _cli("users", "disable", "boss", ws=tmp_path)  # the store keeps the last admin
    assert r.returncode != 0 and "last active admin" in r.stderr


def test_serve_check_api(tmp_path):
    with ReviewStore(tmp_path / "s.sqlite") as s:
        with pytest.raises(ConfigError, match="no"):
            serve_check(s)
        s.add_user("ada", "admin", "harbor-violet-piano-42", actor=LOCAL_OPERATOR)
        s.set_data_roots([tmp_path], actor=LOCAL_OPERATOR)
        info = serve_check(s)
    assert info["admins"] == ["ada"] and info["data_roots"] == [str(tmp_path.resolve())]


def test_modes_and_loopback(monkeypatch):
    monkeypatch.delenv("SEGWB_MODE", raising=False)
    assert serve_mode() == "demo"
    monkeypatch.setenv("SEGWB_MODE", "team")
    assert serve_mode() == "team"
    monkeypatch.setenv("SEGWB_MODE", "public")
    with pytest.raises(ConfigError):
        serve_mode()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("::") and not is_loopback("10.0.0.5")


def test_data_roots_resolve_symlinks_and_dotdot(tmp_path):
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "nerve").mkdir(parents=True)
    other.mkdir()
    assert check_data_path(root / "nerve", [root]) == (root / "nerve").resolve()
    with pytest.raises(PermissionDenied, match="outside the data roots"):
        check_data_path(other, [root])
    with pytest.raises(PermissionDenied):
        check_data_path(root / ".." / "other", [root])
    (root / "escape").symlink_to(other)  # a link inside a root pointing out of it
    with pytest.raises(PermissionDenied):
        check_data_path(root / "escape", [root])
    (other / "in").symlink_to(root / "nerve")  # a link outside pointing in is judged by its target
    assert check_data_path(other / "in", [root]) == (root / "nerve").resolve()
    with pytest.raises(PermissionDenied, match="no data roots"):
        check_data_path(root, [])
    ws, ex = tmp_path / "ws", tmp_path / "exports"
    assert check_write_path(ws / "exports" / "x", ws, [ex]) and check_write_path(ex / "m.json", ws, [ex])
    with pytest.raises(PermissionDenied, match="export root"):
        check_write_path(tmp_path / "weights" / "card.json", ws, [ex])


def test_oidc_account_mapping(tmp_path):
    with ReviewStore(tmp_path / "s.sqlite") as s:
        s.add_user("ada", "admin", "harbor-violet-piano-42", actor=LOCAL_OPERATOR)
        s.add_user("rita@h.org", "reviewer", "quiet-lantern-meadow-7", actor=LOCAL_OPERATOR)
        assert oidc_account(s, {"email": "rita@h.org", "email_verified": True, "sub": "x1"}).role == "reviewer"
        with pytest.raises(PermissionDenied, match="no account here"):
            oidc_account(s, {"email": "mallory@h.org", "sub": "m"})
        with pytest.raises(PermissionDenied):  # an unverified email is not trusted: falls back to sub
            oidc_account(s, {"email": "rita@h.org", "email_verified": False, "sub": "x1"})
        u = oidc_account(s, {"email": "new@h.org"}, unknown="viewer")
        assert (u.name, u.role) == ("new@h.org", "viewer") and s.user("new@h.org").role == "viewer"
        s.disable_user("rita@h.org", actor=LOCAL_OPERATOR)
        with pytest.raises(PermissionDenied, match="disabled"):
            oidc_account(s, {"email": "rita@h.org"})


def test_make_targets_bind_as_documented():
    out = subprocess.run(["make", "-n", "run", "serve", "PORT=8612", "UPLOAD_MB=50"], cwd=REPO, capture_output=True,
                         text=True, timeout=60).stdout.replace("\\\n", " ")
    run = next(ln for ln in out.splitlines() if "streamlit run" in ln and "SEGWB_MODE=demo" in ln)
    serve = next(ln for ln in out.splitlines() if "streamlit run" in ln and "SEGWB_MODE=team" in ln)
    assert "--server.address 127.0.0.1" in run and "--server.port 8612" in run
    assert "--server.address 0.0.0.0" in serve and "--server.port 8612" in serve
    assert "--server.maxUploadSize 50" in serve and "--server.enableXsrfProtection true" in serve
    checks = [ln for ln in out.splitlines() if "serve-check" in ln]
    assert checks and out.index(checks[0]) < out.index(serve)  # the preflight runs first
