"""Shared pytest fixtures.

- ``shared_data``: Path to ../shared/data (skips the test when absent, as on a user's fresh clone).
- ``workspace``: a fresh engine workspace in a tmp dir (also exported as $SEGWB_WORKSPACE).
- ``one_torch_thread``: torch limited to one intra-op thread for a module
  (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

Shared helper functions (datasets, tiny models, AppTest plumbing) live in :mod:`tests.support`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGWB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _tiny_test_models_are_listed() -> None:
    """The models tests train are deliberately tiny (a few epochs, validation Dice near 0), which the
    model pickers would hide as weak; tests list them (servers they start inherit this). The tests of
    that rule remove the variable."""
    old = os.environ.get("SEGWB_MIN_USEFUL_DICE")
    os.environ["SEGWB_MIN_USEFUL_DICE"] = "0"
    yield
    if old is None:
        os.environ.pop("SEGWB_MIN_USEFUL_DICE", None)
    else:
        os.environ["SEGWB_MIN_USEFUL_DICE"] = old


@pytest.fixture(scope="session", autouse=True)
def _isolated_default_workspace(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session gets its own default workspace, so caches, review stores and models written
    by tests never land in the developer's ~/.cache/segwb or the repo's .workspace (tests that need
    their own use the ``workspace`` fixture, which overrides this per test)."""
    old = os.environ.get("SEGWB_WORKSPACE")
    os.environ["SEGWB_WORKSPACE"] = str(tmp_path_factory.mktemp("default_workspace"))
    yield
    if old is None:
        os.environ.pop("SEGWB_WORKSPACE", None)
    else:
        os.environ["SEGWB_WORKSPACE"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample data; skip when it is not beside the checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated workspace folder; engine code defaulting to $SEGWB_WORKSPACE uses it."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    monkeypatch.setenv("SEGWB_WORKSPACE", str(ws))
    return ws


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster than several fighting over a busy CPU."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """A throwaway PostgreSQL server for the whole session (tests/support/pgserver.py); skips with the reason
    when the Debian binaries are absent (``make test`` installs them)."""
    from tests.support.pgserver import PostgresServer, Unavailable

    try:
        srv = PostgresServer.start()
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield srv
    srv.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty review-store URL on each backend (SQLite file; PostgreSQL database)."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "store" / "segwb.sqlite")
    return request.getfixturevalue("pg_server").new_database()
