"""Real-browser suite: the running app (``streamlit run app.py``) driven by Chromium via Playwright.

Session set-up (once per pytest session):

- tiny demo phantoms (``engine.phantoms.generate_demo(root, scale="tiny")``) and an empty workspace
  in a tmp dir, handed to the app as ``$SEGWB_DEMO_DATA`` / ``$SEGWB_WORKSPACE``;
- two models in ``<workspace>/models/``: :data:`MODEL_A` trained for a few epochs on the tiny
  nerve phantom (``engine.training``; a random net when training is unavailable) and
  :data:`MODEL_B`, a randomly initialised classic U-Net. Weights shipped in ``weights/`` are
  listed by the app as well; the tests always pick these two by name;
- ``python -m streamlit run app.py`` on a free port (127.0.0.1), stopped at the end (process group);
- Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser) with a fresh profile.

The whole suite is skipped (with the reason) when Chromium or the ``playwright`` package is missing.
Every test in ``tests/browser/`` gets the ``browser`` marker automatically (``conftest.py``).

Helpers for page authors (in a test module of this folder: ``from tests.browser.support import
goto_page, ...``; the fixtures below are made available to the folder's tests by ``conftest.py``):

- navigation and waiting: :func:`goto_page` (a page by name, in a NEW session), :func:`nav_to`
  (sidebar menu, same session), :func:`wait_idle`, :func:`expect_rerun`, :func:`wait_until`,
  :func:`run_count`;
- actions: :func:`upload`, :func:`click_button`, :func:`select_option`, :func:`set_multiselect`,
  :func:`set_number`, :func:`slide`, :func:`toggle`, :func:`open_tab`, :func:`expand`;
- locating and reading: :func:`widget`, :func:`button`, :func:`active_tab`, :func:`selected`,
  :func:`alerts`, :func:`metrics`, :func:`headings`, :func:`image_captions`, :func:`loaded_images`,
  :func:`dataframe_text`, :func:`app_text`;
- checks and output: :func:`assert_healthy`, :func:`screenshot` (full-page PNG, default
  ``docs/screenshots``; failures are saved to ``tests/artifacts`` by the ``page`` fixture).

Example (a test for a new page)::

    def test_my_page(page):
        goto_page(page, "Mask editor")
        click_button(page, "Save")
        assert_healthy(page)
        assert "saved" in " ".join(alerts(page, "success"))
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES_DIR = REPO / "pages"
SCREENSHOTS = Path(os.environ.get("SEGWB_SCREENSHOTS", REPO / "docs" / "screenshots"))
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path(os.environ.get("SEGWB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                 "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 1000}

MODEL_A = "browser-nerve-a"   # trained a few epochs on the tiny nerve phantom (random if training is missing)
MODEL_B = "browser-nerve-b"   # random classic U-Net

#: Seconds: a page's first run may import torch cold on 2 busy cores; a model run on tiny data.
LOAD_TIMEOUT = 120.0
RUN_TIMEOUT = 240.0
SERVER_START_TIMEOUT = 120.0
#: After an action, how long to wait for the rerun to start before assuming the action caused none.
RERUN_GRACE = 10.0

# Counts script runs in the page: Streamlit marks <div data-testid="stApp"> with
# data-test-script-state = initial | running | notRunning | rerunRequested | ...
_INIT_SCRIPT = """
(() => {
  window.__segwbRuns = 0; window.__segwbState = null;
  const seen = () => {
    const a = document.querySelector('[data-testid="stApp"]');
    if (!a) return;
    const s = a.getAttribute('data-test-script-state');
    if (s !== window.__segwbState) { window.__segwbState = s; if (s === 'running') window.__segwbRuns++; }
  };
  const obs = new MutationObserver(seen);
  const start = () => { obs.observe(document.documentElement, {attributes: true, subtree: true, childList: true,
                                                              attributeFilter: ['data-test-script-state']}); seen(); };
  if (document.documentElement) start(); else document.addEventListener('DOMContentLoaded', start);
})();
"""

_STATE_JS = """() => {
  const a = document.querySelector('[data-testid="stApp"]');
  if (!a) return null;
  return {script: a.getAttribute('data-test-script-state'), conn: a.getAttribute('data-test-connection-state'),
          runs: window.__segwbRuns || 0, main: !!document.querySelector('[data-testid="stMainBlockContainer"]')};
}"""


# ------------------------------------------------------------------------------------ pages

def app_pages() -> list[tuple[str, str]]:
    """``[(name, script)]`` of Home (``app.py``) and every ``pages/*.py``, in menu order.

    ``name`` is the page title Streamlit derives from the file name (``2_Compare_models.py`` →
    ``Compare models``); Home is ``Home``. New pages are picked up automatically.
    """
    out = [("Home", "app.py")]
    files = sorted(PAGES_DIR.glob("*.py"), key=lambda p: (_menu_number(p.stem), p.stem))
    out += [(page_title(p.stem), f"pages/{p.name}") for p in files if not p.name.startswith("_")]
    return out


def _menu_number(stem: str) -> float:
    m = re.match(r"^(\d+)", stem)
    return float(m.group(1)) if m else float("inf")


def page_title(stem: str) -> str:
    """``3_Dataset_browser`` → ``Dataset browser`` (Streamlit's rule: drop the number, ``_`` → space)."""
    return re.sub(r"^[0-9]+[_ -]*", "", stem).replace("_", " ").strip()


def page_path(name: str) -> str:
    """URL path of a page given its title, file stem or script path (``"Predict"``, ``"1_Predict"``,
    ``"pages/1_Predict.py"``); Home (``"Home"``, ``"app"``, ``""``) is ``/``."""
    stem = Path(name).stem if name.endswith(".py") else name
    if stem.lower() in ("", "home", "app", "/"):
        return "/"
    return "/" + page_title(stem).replace(" ", "_")


def slug(name: str) -> str:
    """File-name friendly page name: ``Compare models`` → ``compare_models``."""
    stem = Path(name).stem if name.endswith(".py") else name
    if page_path(stem) == "/":
        return "home"
    return re.sub(r"[^a-z0-9]+", "_", page_title(stem).lower()).strip("_")


# ------------------------------------------------------------------------------------ waiting

def script_state(page: Any) -> dict[str, Any] | None:
    """``{"script", "conn", "runs", "main"}`` of the app in ``page`` (None before the app mounts)."""
    return page.evaluate(_STATE_JS)


def run_count(page: Any) -> int:
    """How many script runs this page has seen start (see :func:`expect_rerun`)."""
    s = script_state(page)
    return int(s["runs"]) if s else 0


def wait_idle(page: Any, timeout: float = RUN_TIMEOUT, since: int | None = None, settle: float = 0.4) -> float:
    """Wait until the app is connected, its script is not running and the main block exists.

    Args:
        since: a :func:`run_count` taken before an action: also wait for a run that started after
            it (for at most :data:`RERUN_GRACE` seconds: some actions cause no rerun).
        settle: the idle state must hold this long (fast reruns start right after a run ends).

    Returns:
        Seconds waited. Raises TimeoutError (with the last state) after ``timeout``.
    """
    t0 = time.perf_counter()
    last = None
    while True:
        now = time.perf_counter() - t0
        last = script_state(page)
        idle = bool(last) and last["conn"] == "CONNECTED" and last["main"] and \
            last["script"] in ("notRunning", "compilationError")
        started = since is None or (last is not None and last["runs"] > since) or now > RERUN_GRACE
        if idle and started:
            # The script state flips to notRunning as soon as the last message is in, but React may
            # still be rendering the elements (in time slices, before one DOM commit: ~1 s for a page
            # of thumbnails on a busy machine). An idle callback only runs once that work is done.
            _browser_idle(page, timeout - (time.perf_counter() - t0))
            time.sleep(settle)  # a rerun (st.rerun, fast reruns) starts within this
            again = script_state(page)
            if again and again["script"] == last["script"] and again["runs"] == last["runs"]:
                _browser_idle(page, timeout - (time.perf_counter() - t0))
                # images are fetched after the element that names them is drawn
                _wait_images(page, max(1.0, timeout - (time.perf_counter() - t0)))
                return time.perf_counter() - t0
        if now > timeout:
            raise TimeoutError(f"Streamlit did not become idle within {timeout:.0f} s (last state: {last})")
        time.sleep(0.1)


# The idle callback's own timeout bounds each wait: on a starved machine (CI) Chromium can go
# minutes without an idle period, and an unbounded requestIdleCallback then hangs the test.
_IDLE_JS = """() => new Promise(done => {
  let n = 0;
  const next = () => requestIdleCallback(() => { if (++n >= 2) done(true); else next(); },
                                         {timeout: 3000});
  next();
})"""


def _browser_idle(page: Any, timeout: float) -> None:
    """Wait for two consecutive idle periods of the page's main thread (pending renders done;
    at most ~6 s when the main thread never idles)."""
    page.wait_for_function(_IDLE_JS, timeout=max(1.0, timeout) * 1000)


def _wait_images(page: Any, timeout: float) -> None:
    with contextlib.suppress(Exception):
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')].every(i => i.complete)",
            timeout=min(timeout, 30.0) * 1000)


def wait_until(check: Any, timeout: float = 30.0, interval: float = 0.25) -> Any:
    """Call ``check()`` until it returns something truthy (returned) or ``timeout`` passes
    (AssertionError). For content that follows an ``st.rerun()`` or a background job."""
    t0 = time.perf_counter()
    while True:
        value = check()
        if value:
            return value
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout:.0f} s (last value: {value!r})")
        time.sleep(interval)


@contextlib.contextmanager
def expect_rerun(page: Any, timeout: float = RUN_TIMEOUT) -> Iterator[None]:
    """``with expect_rerun(page): <action>`` — waits for the rerun the action causes to finish."""
    n = run_count(page)
    yield
    wait_idle(page, timeout=timeout, since=n)


# ------------------------------------------------------------------------------------ navigation

def goto_page(page: Any, name: str, timeout: float = LOAD_TIMEOUT, query: str = "") -> float:
    """Open a page in a NEW app session (full load) and wait until its script is idle.

    ``name``: title (``"Compare models"``), file stem or script path; ``"Home"`` for app.py.
    The browser context has the server as ``base_url``. Returns the seconds until idle.
    """
    t0 = time.perf_counter()
    page.goto(page_path(name) + (f"?{query}" if query else ""), wait_until="domcontentloaded",
              timeout=timeout * 1000)
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    wait_idle(page, timeout=timeout)
    return time.perf_counter() - t0


def nav_to(page: Any, title: str, timeout: float = LOAD_TIMEOUT) -> float:
    """Switch page through the sidebar menu (keeps the session, unlike :func:`goto_page`)."""
    t0 = time.perf_counter()
    link = page.locator('[data-testid="stSidebarNav"] a').filter(
        has_text=re.compile(rf"^\s*{re.escape(title)}\s*$"))
    with expect_rerun(page, timeout):
        link.first.click()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------ screenshots

def screenshot(page: Any, name: str, folder: Path | str | None = None, max_height: int = 9000) -> Path:
    """Full-page PNG ``<folder>/<name>.png`` (default ``docs/screenshots``).

    Streamlit scrolls inside ``stMain``, not the document, so the viewport is stretched to the
    content height for the shot and restored afterwards.
    """
    folder = Path(folder) if folder is not None else SCREENSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    size = page.viewport_size or VIEWPORT
    h = page.evaluate("""() => { const m = document.querySelector('[data-testid="stMain"]');
                                 const s = document.querySelector('[data-testid="stSidebarContent"]');
                                 return Math.max(m ? m.scrollHeight : 0, s ? s.scrollHeight : 0,
                                                 document.documentElement.scrollHeight); }""")
    try:
        page.set_viewport_size({"width": size["width"], "height": int(min(max(h, size["height"]), max_height))})
        time.sleep(0.6)  # re-layout (charts and data grids resize)
        _wait_images(page, 10.0)
        page.screenshot(path=str(path), full_page=True, animations="disabled")
    finally:
        page.set_viewport_size(size)
    return path


# ------------------------------------------------------------------------------------ widgets

def _exact(text: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{re.escape(text)}\s*$")


def widget(page: Any, testid: str, label: str | None = None, scope: Any = None) -> Any:
    """Locator of ``[data-testid=testid]`` widgets whose label is exactly ``label`` (all when None).

    ``scope``: a locator to search in (e.g. the visible tab panel, :func:`active_tab`).
    """
    root = scope if scope is not None else page
    loc = root.locator(f'[data-testid="{testid}"]')
    if label is not None:
        loc = loc.filter(has=page.locator('[data-testid="stWidgetLabel"]').filter(has_text=_exact(label)))
    return loc


def active_tab(page: Any) -> Any:
    """The visible tab panel(s): ``st.tabs`` keeps every tab in the DOM, hidden ones included."""
    return page.locator('[data-testid="stTabPanel"]:visible')


def click_button(page: Any, label: str, nth: int = 0, scope: Any = None, exact: bool = True,
                 timeout: float = RUN_TIMEOUT) -> None:
    """Click an ``st.button`` by its text and wait for the rerun. (Role "button" named "Open" would
    also match the selectboxes' toggles: this looks only at ``stButton`` widgets.)"""
    btn = button(page, label, scope, exact)
    with expect_rerun(page, timeout):
        btn.nth(nth).click()


def button(page: Any, label: str, scope: Any = None, exact: bool = True) -> Any:
    """Locator of the ``st.button`` widgets labelled ``label`` (icons ignored)."""
    root = scope if scope is not None else page
    text = page.locator('[data-testid="stMarkdownContainer"]').filter(
        has_text=_exact(label) if exact else re.compile(re.escape(label)))
    return root.locator('[data-testid="stButton"] button').filter(has=text)


def select_option(page: Any, label: str, option: str, scope: Any = None, timeout: float = RUN_TIMEOUT) -> None:
    """Choose ``option`` (exact text) in the ``st.selectbox`` labelled ``label``."""
    if selected(page, label, scope) == option:
        return
    widget(page, "stSelectbox", label, scope).first.locator('[role="combobox"]').first.click()
    with expect_rerun(page, timeout):
        page.get_by_role("option", name=option, exact=True).first.click()


def selected(page: Any, label: str, scope: Any = None) -> str:
    """The option shown by the ``st.selectbox`` labelled ``label``."""
    return widget(page, "stSelectbox", label, scope).first.locator('[role="combobox"]').first.input_value().strip()


def set_multiselect(page: Any, label: str, options: Sequence[str], scope: Any = None,
                    timeout: float = RUN_TIMEOUT) -> None:
    """Make the ``st.multiselect`` labelled ``label`` hold exactly ``options`` (in that order)."""
    box = widget(page, "stMultiSelect", label, scope).first
    clear = box.locator('[aria-label="Clear all"]')
    if clear.count():
        with expect_rerun(page, timeout):
            clear.first.click()
    for opt in options:
        option = page.get_by_role("option", name=opt, exact=True).first
        for attempt in range(4):  # a rerun landing between the click and the menu closes the menu: reopen it
            box.locator('[role="combobox"], input').first.click()
            try:
                option.wait_for(state="visible", timeout=10_000)
                break
            except Exception:  # noqa: BLE001 - playwright TimeoutError
                if attempt == 3:
                    raise
                page.keyboard.press("Escape")
        with expect_rerun(page, timeout):
            option.click()
        page.keyboard.press("Escape")


def set_number(page: Any, label: str, value: float, scope: Any = None, timeout: float = RUN_TIMEOUT) -> None:
    """Type ``value`` into the ``st.number_input`` labelled ``label`` and commit it (Enter)."""
    field = widget(page, "stNumberInput", label, scope).first.locator("input")
    field.fill(str(value))
    with expect_rerun(page, timeout):
        field.press("Enter")


def slide(page: Any, label: str, *keys: str, scope: Any = None, timeout: float = RUN_TIMEOUT) -> str:
    """Move the ``st.slider`` labelled ``label`` with keyboard keys (``"End"``, ``"Home"``,
    ``"ArrowRight"``...; one rerun after the last key) and return the value it shows."""
    box = widget(page, "stSlider", label, scope).first
    thumb = box.locator('input[type="range"]').first
    thumb.focus()
    with expect_rerun(page, timeout):
        for k in keys:
            thumb.press(k)
    return widget(page, "stSlider", label, scope).first.locator('[data-testid="stSliderThumbValue"]') \
        .first.inner_text().strip()


def toggle(page: Any, label: str, scope: Any = None, timeout: float = RUN_TIMEOUT) -> bool:
    """Click the ``st.checkbox``/``st.toggle`` labelled ``label``; returns its new state."""
    box = widget(page, "stCheckbox", label, scope).first
    with expect_rerun(page, timeout):
        box.locator("label").first.click()
    return widget(page, "stCheckbox", label, scope).first.locator("input").first.is_checked()


def open_tab(page: Any, name: str) -> None:
    """Show the ``st.tabs`` tab named ``name`` (client side: no rerun)."""
    page.locator('[data-testid="stTab"]').filter(has_text=_exact(name)).first.click()
    page.wait_for_timeout(300)


def expand(page: Any, label: str, scope: Any = None, lazy: bool = False, timeout: float = RUN_TIMEOUT) -> Any:
    """Open the ``st.expander`` whose header contains ``label`` (no-op when open); returns it.

    ``lazy``: the expander is drawn with ``on_change="rerun"`` (its content exists only while
    open): wait for the rerun that opening it causes.
    """
    root = scope if scope is not None else page
    exp = root.locator('[data-testid="stExpander"]').filter(
        has=page.locator("summary").filter(has_text=re.compile(re.escape(label)))).first
    if exp.locator("details").first.get_attribute("open") is None:
        if lazy:
            with expect_rerun(page, timeout):
                exp.locator("summary").first.click()
        else:
            exp.locator("summary").first.click()
            page.wait_for_timeout(300)
    return exp


def upload(page: Any, files: Sequence[Path | str] | Path | str, label: str | None = None, nth: int = 0,
           timeout: float = RUN_TIMEOUT) -> None:
    """Give files to an ``st.file_uploader`` (the ``nth`` one, or the one labelled ``label``) and wait
    for the app to process them."""
    if isinstance(files, (str, Path)):
        files = [files]
    root = widget(page, "stFileUploader", label) if label else page.locator('[data-testid="stFileUploader"]')
    inp = root.nth(nth).locator('[data-testid="stFileUploaderDropzoneInput"]')
    with expect_rerun(page, timeout):
        inp.set_input_files([str(f) for f in files])


# ------------------------------------------------------------------------------------ reading

_ALERT_KINDS = {"error": "stAlertContentError", "warning": "stAlertContentWarning",
                "info": "stAlertContentInfo", "success": "stAlertContentSuccess"}


def alerts(page: Any, kind: str | None = None, scope: Any = None) -> list[str]:
    """Texts of visible ``st.error/warning/info/success`` boxes (``kind`` filters)."""
    root = scope if scope is not None else page
    sel = f'[data-testid="{_ALERT_KINDS[kind]}"]' if kind else '[data-testid="stAlert"]'
    return [t.strip() for t in root.locator(f"{sel}:visible").all_inner_texts()]


def metrics(page: Any, scope: Any = None) -> dict[str, str]:
    """``{label: value}`` of the visible ``st.metric`` elements."""
    root = scope if scope is not None else page
    out = {}
    for m in root.locator('[data-testid="stMetric"]:visible').all():
        label = m.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        out[label] = m.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return out


def headings(page: Any) -> list[str]:
    return [t.strip() for t in page.locator('[data-testid="stHeading"]:visible').all_inner_texts()]


def image_captions(page: Any, scope: Any = None) -> list[str]:
    root = scope if scope is not None else page
    return [t.strip() for t in root.locator('[data-testid="stImageCaption"]:visible').all_inner_texts()]


def loaded_images(page: Any, scope: Any = None) -> int:
    """How many visible ``st.image`` pictures have actually been decoded by the browser."""
    root = scope if scope is not None else page
    return sum(1 for img in root.locator('[data-testid="stImage"] img:visible').all()
               if img.evaluate("e => e.complete && e.naturalWidth > 0"))


def dataframe_text(page: Any, nth: int = 0, scope: Any = None, timeout: float = 30.0) -> str:
    """Text of an ``st.dataframe`` (drawn on a canvas; read from its accessible table)."""
    root = scope if scope is not None else page
    table = root.locator('[data-testid="stDataFrame"]:visible').nth(nth).locator("table").first
    table.wait_for(state="attached", timeout=timeout * 1000)  # drawn a moment after the grid mounts
    return table.evaluate("e => e.textContent")


def app_text(page: Any) -> str:
    """All text of the app (hidden parts such as closed expanders included)."""
    return page.evaluate("() => document.querySelector('[data-testid=\"stApp\"]')?.textContent || ''")


def assert_healthy(page: Any, allow_errors: Sequence[str] = ()) -> None:
    """No ``st.exception`` box, no traceback text, no guard "unexpected error" box, no error alert
    except those containing one of ``allow_errors``, and no JavaScript error in the page."""
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, "st.exception shown: " + exc.first.inner_text()[:2000]
    text = app_text(page)
    assert "Traceback" not in text, "traceback in the page: " + text[text.find("Traceback"):][:2000]
    for e in alerts(page, "error"):
        assert "unexpected error" not in e, f"unexpected error shown: {e}"
        assert any(a in e for a in allow_errors), f"error shown: {e}"
    js = getattr(page, "segwb_js_errors", [])
    assert not js, f"JavaScript errors: {js}"


# ------------------------------------------------------------------------------------ fixtures

def _skip_reason() -> str | None:
    if not CHROMIUM.is_file():
        return f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium; or set $SEGWB_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _random_model(folder: Path, name: str, seed: int, threshold: float = 0.5) -> None:
    import torch

    from engine.augment import Preprocess
    from engine.checkpoint import ModelCard, save_checkpoint
    from engine.models import ModelSpec, build_model
    from engine.postprocess import PostProcessConfig

    torch.manual_seed(seed)
    spec = ModelSpec(arch="unet_classic", base_channels=8, num_classes=2)
    card = ModelCard(name=name, spec=spec, labels={0: "background", 1: "nerve"}, preprocess=Preprocess(size=(64, 64)),
                     postprocess=PostProcessConfig(threshold=threshold),
                     description="Random weights (browser test fixture).")
    save_checkpoint(folder / name, build_model(spec, load_pretrained=False), card)


def _trained_model(data: Path, runs: Path, name: str) -> str:
    """Train a small U-Net for a few epochs on ``data`` and export it; returns how it was made."""
    try:
        from engine.augment import AugmentConfig, Preprocess
        from engine.models import ModelSpec
        from engine.splits import SplitSpec
        from engine.training import TrainConfig, train
    except ImportError as exc:  # training not available: a random model will do
        return f"random (engine.training unavailable: {exc})"
    cfg = TrainConfig(data=str(data), model=ModelSpec(arch="unet_classic", base_channels=8),
                      preprocess=Preprocess(size=(64, 64)), augment=AugmentConfig(), epochs=3, batch_size=8,
                      lr=3e-3, device="cpu", split=SplitSpec(k=3), val_empty_policy="exclude", preview_count=0,
                      name=name, export=True, status_interval=0.0, scheduler="none", out=str(runs / name),
                      description="Trained 3 epochs on the tiny nerve phantom (browser test fixture).")
    try:
        res = train(cfg)
    except Exception as exc:  # noqa: BLE001 - training has its own tests; the UI only needs some model
        return f"random (training failed: {type(exc).__name__}: {exc})"
    return f"trained 3 epochs, val Dice {res.best_metric:.3f}"


@pytest.fixture(scope="session")
def browser_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Tiny demo data + a workspace with :data:`MODEL_A` and :data:`MODEL_B` (see module doc)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("browser")
    ws, demo = root / "workspace", root / "demo"
    ws.mkdir()
    old = os.environ.get("SEGWB_WORKSPACE")
    os.environ["SEGWB_WORKSPACE"] = str(ws)  # training exports to <workspace>/models
    try:
        from engine.phantoms import generate_demo

        t0 = time.perf_counter()
        generate_demo(demo, scale="tiny")
        t_demo = time.perf_counter() - t0
        how_a = _trained_model(demo / "nerve", root / "runs", MODEL_A)
        if not (ws / "models" / MODEL_A / "card.json").is_file():
            _random_model(ws / "models", MODEL_A, seed=0)
        _random_model(ws / "models", MODEL_B, seed=1, threshold=0.6)
    finally:
        if old is None:
            os.environ.pop("SEGWB_WORKSPACE", None)
        else:
            os.environ["SEGWB_WORKSPACE"] = old
    yield SimpleNamespace(root=root, workspace=ws, demo=demo, nerve=demo / "nerve", ptx=demo / "ptx",
                          models=(MODEL_A, MODEL_B), model_a_how=how_a,
                          setup_seconds=round(time.perf_counter() - t0, 1), demo_seconds=round(t_demo, 1))


class StreamlitServer:
    """``python -m streamlit run app.py`` in its own process group; ``url`` once healthy.
    ``make_serve``: team mode exactly as deployed instead, ``make serve`` (the session gate, serve.py)."""

    def __init__(self, port: int, env: dict[str, str], log: Path, cwd: Path = REPO, make_serve: bool = False):
        self.port, self.log_path = port, log
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
        if make_serve:
            cmd = ["make", "--no-print-directory", "serve", f"PORT={port}", "SERVE_ADDRESS=127.0.0.1"]
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_healthy(self, timeout: float = SERVER_START_TIMEOUT) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            time.sleep(0.3)
        raise TimeoutError(f"streamlit not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def start_server(workspace: Path, demo: Path, log: Path, port: int | None = None,
                 extra_env: dict[str, str] | None = None, make_serve: bool = False) -> StreamlitServer:
    """Start the app on ``port`` (a free one by default) with the given workspace and demo data
    (``make_serve``: with ``make serve``, team mode behind the session gate)."""
    env = dict(os.environ, SEGWB_WORKSPACE=str(workspace), SEGWB_DEMO_DATA=str(demo), PYTHONUNBUFFERED="1",
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.update(extra_env or {})
    server = StreamlitServer(port or _free_port(), env, log, make_serve=make_serve)
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def app_server(browser_env: SimpleNamespace) -> Iterator[StreamlitServer]:
    """The running app (base URL: ``app_server.url``); its log is in the session tmp dir."""
    server = start_server(browser_env.workspace, browser_env.demo, browser_env.root / "streamlit.log")
    try:
        yield server
    finally:
        server.stop()


def launch_chromium(playwright: Any, user_data_dir: Path, base_url: str | None = None,
                    viewport: dict[str, int] | None = None) -> Any:
    """A persistent Chromium context on a fresh profile, Debian's binary, never a download."""
    ctx = playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
        base_url=base_url, viewport=viewport or VIEWPORT, accept_downloads=False)
    ctx.add_init_script(_INIT_SCRIPT)
    ctx.set_default_timeout(60_000)
    ctx.set_default_navigation_timeout(LOAD_TIMEOUT * 1000)
    return ctx


@pytest.fixture(scope="session")
def playwright_session() -> Iterator[Any]:
    """The one Playwright driver of the test session: the sync API allows only one running instance
    per process, so every browser test module launches its browsers from this one."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser_context(app_server: StreamlitServer, playwright_session: Any,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium (fresh profile) for the session, with the app as ``base_url``."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    ctx = launch_chromium(playwright_session, profile, base_url=app_server.url)
    try:
        yield ctx
    finally:
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(browser_context: Any, request: pytest.FixtureRequest, app_server: StreamlitServer) -> Iterator[Any]:
    """A new tab; JavaScript errors are collected in ``page.segwb_js_errors``; on failure a
    screenshot and the server log tail are saved to ``tests/artifacts/``."""
    pg = browser_context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.segwb_js_errors = errors
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            with contextlib.suppress(Exception):
                screenshot(pg, name, ARTIFACTS)
            with contextlib.suppress(Exception):
                (ARTIFACTS / f"{name}.server.log").write_text(app_server.log_tail(20000))
        pg.close()
