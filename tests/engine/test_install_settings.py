"""engine.install.resolve_settings (one resolution of workspace, store, masks and secret), store URL
validation (engine.store.location) and the rule that a filesystem root or the home folder is a data or
export root only when confirmed (engine.store.settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.__main__ import main
from engine.errors import ConfigError
from engine.install import resolve_settings
from engine.store import LOCAL_OPERATOR, ReviewStore
from engine.store.location import check_store_location, check_store_url, display_store_url, sqlite_file
from engine.store.settings import broad_folder

BAD_URLS = ["sqlite:/:/bad", "sqlite:/x.sqlite", "sqlite://host/x.sqlite", "sqlite://", "sqlite:///",
            "mysql://u@h/db", "http://example.org/store", "postgresql://", "postgresql:db", "  "]
GOOD_URLS = ["sqlite:////abs/dir/x.sqlite", "sqlite:///rel/x.sqlite", "sqlite:///:memory:",
             "postgresql://u@h/db", "postgres://u:pw@h:5432/db", "plain/file.sqlite", "/abs/file.sqlite",
             "./odd:name.sqlite"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_malformed_store_urls_are_refused_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_store_url(url)
    assert "sqlite:///" in str(err.value) and "postgresql://" in str(err.value)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_accepted_store_urls(url: str) -> None:
    assert check_store_url(url) == url


def test_opening_a_malformed_url_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="malformed"):
        ReviewStore("sqlite:/:/bad")
    assert list(tmp_path.iterdir()) == []  # no folder named 'sqlite:'


def test_sqlite_file_and_password_hiding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:////a/b.sqlite") == Path("/a/b.sqlite")
    assert sqlite_file("sqlite:///b.sqlite") == tmp_path / "b.sqlite"
    assert sqlite_file("b.sqlite") == tmp_path / "b.sqlite"
    assert sqlite_file("postgresql://u@h/db") is None and sqlite_file("sqlite:///:memory:") is None
    assert display_store_url("postgresql://ana:s3cret@db.example/segwb") == "postgresql://ana:***@db.example/segwb"
    cfg = resolve_settings(workspace=tmp_path / "ws", store="postgresql://ana:s3cret@db.example/segwb")
    assert "s3cret" not in cfg.describe() and "s3cret" not in str(cfg.to_dict())


def test_a_new_sqlite_store_only_in_an_existing_folder_or_the_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with pytest.raises(ConfigError, match="does not exist") as err:
        check_store_location("sqlite:////nonexistent/dir/x.sqlite", ws)
    assert "mkdir -p /nonexistent/dir" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        check_store_location(str(tmp_path / "missing" / "x.sqlite"), ws)
    assert not Path("/nonexistent").exists() and not (tmp_path / "missing").exists()
    check_store_location("sqlite:///" + str(tmp_path / "x.sqlite"), ws)  # existing folder
    check_store_location("sqlite:///" + str(ws / "sub" / "x.sqlite"), ws)  # inside the workspace
    check_store_location("postgresql://u@h/db", ws)


def test_cli_refuses_a_store_in_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings", "--store", "sqlite:////nonexistent/dir/x.sqlite"]) == 2
    assert "does not exist" in capsys.readouterr().err and not Path("/nonexistent").exists()
    assert main(["users", "list", "--store", "sqlite:/:/bad"]) == 2
    assert "malformed" in capsys.readouterr().err


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.workspace as wsmod

    for var in ("SEGWB_WORKSPACE", "SEGWB_STORE_URL", "SEGWB_MASKS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # inside a checkout: <checkout>/.workspace
    cfg = resolve_settings()
    assert wsmod.checkout_root() is not None
    assert (cfg.workspace, cfg.workspace_from) == ((wsmod.checkout_root() / ".workspace").resolve(), "checkout")
    # an installed engine (no checkout): ~/.cache/segwb, as before
    monkeypatch.setattr(wsmod, "checkout_root", lambda: None)
    cfg = resolve_settings()
    home_ws = (tmp_path / "home" / ".cache" / "segwb").resolve()
    assert (cfg.workspace, cfg.workspace_from) == (home_ws, "home")
    assert cfg.store_url == f"sqlite:///{home_ws / 'segwb.sqlite'}" and cfg.store_from == "default"
    assert cfg.masks_dir == home_ws / "masks" and cfg.secret_file == home_ws / "secret.key"
    # the environment wins over the default, an argument over the environment
    monkeypatch.setenv("SEGWB_WORKSPACE", str(tmp_path / "env_ws"))
    assert resolve_settings().workspace == (tmp_path / "env_ws").resolve()
    assert resolve_settings().workspace_from == "$SEGWB_WORKSPACE"
    cfg = resolve_settings(workspace=tmp_path / "arg_ws")
    assert (cfg.workspace, cfg.workspace_from) == ((tmp_path / "arg_ws").resolve(), "argument")
    assert cfg.secret_file == (tmp_path / "arg_ws").resolve() / "secret.key"
    # PostgreSQL: masks follow the workspace (the CLI finds what the app wrote)
    monkeypatch.setenv("SEGWB_STORE_URL", "postgresql://u@h/db")
    cfg = resolve_settings()
    assert cfg.store_from == "$SEGWB_STORE_URL" and cfg.masks_dir == (tmp_path / "env_ws").resolve() / "masks"
    assert resolve_settings(store=str(tmp_path / "x.sqlite")).store_from == "argument"
    monkeypatch.setenv("SEGWB_MASKS_DIR", str(tmp_path / "shared_masks"))
    assert resolve_settings().masks_dir == (tmp_path / "shared_masks").resolve()
    monkeypatch.setenv("SEGWB_STORE_URL", "sqlite:/:/bad")
    with pytest.raises(ConfigError, match="SEGWB_STORE_URL"):
        resolve_settings()


def test_note_about_an_earlier_home_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.workspace as wsmod

    monkeypatch.delenv("SEGWB_WORKSPACE", raising=False)
    monkeypatch.delenv("SEGWB_STORE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(wsmod, "checkout_root", lambda: checkout)
    assert resolve_settings().note == ""
    old = tmp_path / "home" / ".cache" / "segwb"
    old.mkdir(parents=True)
    (old / "segwb.sqlite").write_bytes(b"x")
    note = resolve_settings().note
    assert str(old) in note and "--workspace" in note


@pytest.mark.parametrize("setter", ["set_data_roots", "set_export_roots"])
def test_broad_roots_need_confirmation(setter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "users" / "ana"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    assert broad_folder("/") and broad_folder(home) and broad_folder(tmp_path / "users")
    assert broad_folder(tmp_path) == "" and broad_folder(home / "data") == ""
    with ReviewStore(tmp_path / "s.sqlite") as store:
        set_roots = getattr(store, setter)
        for broad in ("/", str(home), str(tmp_path / "users")):
            with pytest.raises(ConfigError, match="every file below") as err:
                set_roots([broad], actor=LOCAL_OPERATOR)
            assert "--allow-root" in str(err.value)
        assert set_roots(["/"], actor=LOCAL_OPERATOR, confirm_broad=True) == [Path("/")]
        assert set_roots([tmp_path], actor=LOCAL_OPERATOR) == [tmp_path.resolve()]


def test_cli_settings_root_needs_allow_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "s.sqlite")
    assert main(["settings", "--store", store, "--data-roots", "/"]) == 2
    err = capsys.readouterr().err
    assert "filesystem root" in err and "--allow-root" in err
    assert main(["settings", "--store", store, "--export-roots", "/", "--allow-root"]) == 0
    out = capsys.readouterr()
    assert "export roots  /" in out.out and out.err.startswith("segwb: store ")
