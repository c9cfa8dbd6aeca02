"""OIDC sign-in (Streamlit's ``st.login``) against a REAL OpenID Connect provider started locally: the npm
package ``oidc-provider`` (tests/browser/oidc/provider.mjs) on 127.0.0.1, the app in team mode with an
``[auth]`` section in a secrets file of its own (``--secrets.files``), Chromium going through the
provider's login and consent pages and back.

Optional: needs Node.js and an installed ``oidc-provider`` (nothing is downloaded by the test)::

    mkdir -p /tmp/oidc && cd /tmp/oidc && npm install oidc-provider@8
    SEGWB_OIDC_NODE_MODULES=/tmp/oidc/node_modules python -m pytest tests/browser/test_oidc_browser.py

Skipped with that instruction when either is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser.support import (
    _INIT_SCRIPT,
    CHROMIUM,
    CHROMIUM_ARGS,
    LOAD_TIMEOUT,
    VIEWPORT,
    _free_port,
    alerts,
    headings,
    wait_idle,
    wait_until,
)

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
PROVIDER = Path(__file__).resolve().parent / "oidc" / "provider.mjs"
MODULES = os.environ.get("SEGWB_OIDC_NODE_MODULES", "")


def _skip_reason() -> str | None:
    if not shutil.which("node"):
        return "Node.js not installed (needed for the local OIDC provider)"
    if not MODULES or not (Path(MODULES) / "oidc-provider").is_dir():
        return ("set SEGWB_OIDC_NODE_MODULES to a node_modules folder holding oidc-provider "
                "(mkdir -p /tmp/oidc && cd /tmp/oidc && npm install oidc-provider@8)")
    return None


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def oidc_app(browser_env, tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from engine.store import LOCAL_OPERATOR, ReviewStore, default_store_url

    root = tmp_path_factory.mktemp("oidc")
    ws = root / "workspace"
    ws.mkdir()
    with ReviewStore(default_store_url(ws)) as s:
        s.add_user("ada", "admin", "harbor-violet-piano-42", actor=LOCAL_OPERATOR)
        s.add_user("rita@hospital.test", "reviewer", "unused-long-random-1", actor=LOCAL_OPERATOR)
        s.set_data_roots([browser_env.demo], actor=LOCAL_OPERATOR)
    app_port, idp_port = _free_port(), _free_port()
    app_url, idp_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{idp_port}"
    secrets = root / "secrets.toml"
    secrets.write_text(f'''[auth]
redirect_uri = "{app_url}/oauth2callback"
cookie_secret = "test-cookie-secret-0123456789abcdef"
client_id = "segwb"
client_secret = "segwb-test-secret"
server_metadata_url = "{idp_url}/.well-known/openid-configuration"
client_kwargs = {{ prompt = "login" }}
''')
    idp_log = root / "idp.log"
    # ESM imports ignore NODE_PATH: a node_modules link beside a copy of the script resolves the package
    script = root / "provider.mjs"
    shutil.copy(PROVIDER, script)
    (root / "node_modules").symlink_to(MODULES)
    idp = subprocess.Popen(["node", str(script), str(idp_port), app_url], cwd=root, stdout=open(idp_log, "wb"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    app_log = root / "streamlit.log"
    env = dict(os.environ, SEGWB_WORKSPACE=str(ws), SEGWB_DEMO_DATA=str(browser_env.demo), SEGWB_MODE="team",
               PYTHONUNBUFFERED="1", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.pop("SEGWB_STORE_URL", None)
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(app_port),
                            "--server.address", "127.0.0.1", "--server.headless", "true",
                            "--server.fileWatcherType", "none", "--secrets.files", str(secrets)],
                           cwd=REPO, env=env, stdout=open(app_log, "wb"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        _wait_http(f"{idp_url}/.well-known/openid-configuration", idp, idp_log)
        _wait_http(f"{app_url}/_stcore/health", app, app_log)
        yield app_url, ws
    finally:
        _stop(app)
        _stop(idp)


@pytest.fixture()
def page(oidc_app, playwright_session):
    browser = playwright_session.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.add_init_script(_INIT_SCRIPT)
    ctx.set_default_timeout(60_000)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()
        browser.close()


def _through_provider(page, app_url: str, login: str) -> None:
    page.goto(app_url + "/", wait_until="domcontentloaded", timeout=LOAD_TIMEOUT * 1000)
    page.wait_for_selector('[data-testid="stApp"]', timeout=LOAD_TIMEOUT * 1000)
    wait_idle(page)
    assert headings(page) == ["Sign in"]
    page.get_by_role("button", name="Sign in with the identity provider").click()
    try:
        page.wait_for_selector('input[name="login"]', timeout=60_000)  # the provider's own login page
    except Exception as exc:  # noqa: BLE001 - say where the browser ended up
        raise AssertionError(f"no provider login page: at {page.url}: {page.inner_text('body')[:1500]}") from exc
    page.fill('input[name="login"]', login)
    page.fill('input[name="password"]', "anything")
    page.locator('button[type="submit"]').first.click()
    page.wait_for_load_state("domcontentloaded")
    with contextlib.suppress(Exception):  # consent page (first authorisation of the client)
        page.locator('button[type="submit"]').first.click(timeout=10_000)
    page.wait_for_url(app_url + "/**", timeout=60_000)
    page.wait_for_selector('[data-testid="stApp"]', timeout=LOAD_TIMEOUT * 1000)
    wait_idle(page)


def test_oidc_sign_in_maps_to_the_account(page, oidc_app):
    app_url, _ = oidc_app
    _through_provider(page, app_url, "rita")

    def signed() -> bool:
        side = page.locator('[data-testid="stSidebar"]')
        return side.count() > 0 and "rita@hospital.test" in side.first.inner_text()

    try:
        wait_until(signed, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"not signed in: at {page.url}: {page.inner_text('body')[:1500]}") from exc
    side = page.locator('[data-testid="stSidebar"]').first.inner_text()
    assert "reviewer" in side, side
    assert headings(page)[0] != "Sign in"


def test_oidc_unknown_identity_refused(page, oidc_app):
    app_url, _ = oidc_app
    _through_provider(page, app_url, "mallory")
    try:
        errs = wait_until(lambda: [e for e in alerts(page, "error") if "mallory@hospital.test" in e], timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"not refused: at {page.url}: {page.inner_text('body')[:1500]}") from exc
    assert "no account here" in errs[0], errs
    assert page.locator('[data-testid="stSidebar"]').count() == 0 or \
        "mallory" not in page.locator('[data-testid="stSidebar"]').first.inner_text()
