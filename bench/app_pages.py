"""Benchmark: the running app in a real browser (Chromium via Playwright), as a user sees it.

Measured inside the page with ``performance.now()`` (so Python-side overhead is not counted). An
action is complete when the page shows its final state: the LAST DOM change or image received
(whichever is later) once the script is idle, React has committed its pending render and the
images are decoded. (The script state alone is not enough: on a busy machine React commits a page
of 36 thumbnails up to ~1.5 s after the state says "notRunning".)

- ``pages``: first render of every page (Home + ``pages/*.py``) in a NEW session of a WARM
  server (every page was loaded once before), with the default-scale demo data in
  ``<repo>/demo_data``: from navigation start until the final state (``idle``), and until the
  page title is drawn (``title``). Median of ``--runs``.
  The warm-up load (first after server start: cold imports, cold caches) is reported too.
- ``predict``: on the Predict page, upload one 420×580 TIFF of the demo nerve phantom (a
  different frame each time, new session each time) and time from the file input's change
  event until the overlay image is decoded (upload + decode + model + post-processing +
  rendering + image transfer). The page's own "Model time" / "Total time" are recorded beside
  it, and the time to re-render after moving the threshold slider (cached probabilities: no model
  run). Model: ``nerve-vessel-us`` or ``demo-nerve-phantom`` when shipped, else whatever exists,
  else a random net of the default training architecture (recorded under ``model``).
- ``browser``: Dataset browser on the full-size phantom (47 subjects × 120 frames = 5,640
  images, ``~/.cache/segwb/bench/nerve-47x120``, generated when missing: ~7 min): first open,
  then "Next" page changes with the thumbnails cold (cache cleared before the run) clicked as soon
  as a page is drawn, then on later (never visited) pages after the user has looked at each for
  ``--dwell`` seconds (the browser draws the next page's thumbnails in the background meanwhile),
  and warm (the first pages again): from the click until the 36 new thumbnails are decoded.

Targets (2 CPU cores): page first render <= 3 s (demo data, warm server); predict <= 1 s;
browser page change <= 1 s. The server is ``python -m streamlit run app.py`` started as the
browser suite does (tests/browser/conftest.py). Run::

    python bench/app_pages.py [--runs 3] [--predict-runs 5] [--skip-browser]

Prints a table and writes ``bench/results/app_pages.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, median, save_result  # noqa: E402

FULL_DATA = Path.home() / ".cache" / "segwb" / "bench" / "nerve-47x120"
BENCH_WS = Path.home() / ".cache" / "segwb" / "bench" / "app-workspace"
PREFERRED_MODELS = ("nerve-vessel-us", "demo-nerve-phantom")
RANDOM_MODEL = "bench-unet16-256-random"
TARGETS = {"page_first_render_s": 3.0, "predict_s": 1.0, "browser_page_change_s": 1.0}


def _helpers():
    """tests/browser/conftest.py (server, Chromium, waits) under a name that cannot clash."""
    path = REPO / "tests" / "browser" / "conftest.py"
    spec = importlib.util.spec_from_file_location("segwb_browser_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


H = _helpers()

# Timestamps of the click / change / key that starts an action (capture phase: before Streamlit's
# handlers) and of the last DOM change (React commits a page of elements in one go, sometimes a second
# after the script state says "notRunning": the DOM, not the state, tells when the user sees it).
_BENCH_INIT = """
(() => { window.__bench = {click: null, change: null, key: null, mut: 0};
  document.addEventListener('click', () => { window.__bench.click = performance.now(); }, true);
  document.addEventListener('change', () => { window.__bench.change = performance.now(); }, true);
  document.addEventListener('keydown', () => { window.__bench.key = performance.now(); }, true);
  const obs = new MutationObserver(() => { window.__bench.mut = performance.now(); });
  const go = () => obs.observe(document.documentElement, {attributes: true, childList: true, subtree: true,
                                                         characterData: true});
  if (document.documentElement) go(); else document.addEventListener('DOMContentLoaded', go);
})();
"""

# Truthy once the app is idle after at least `minRuns` runs, shows the optional caption and at least
# `minImages` images, all decoded, and (optionally) a first caption other than `notFirst`.
_READY_JS = """([minRuns, caption, minImages, notFirst]) => {
  const a = document.querySelector('[data-testid="stApp"]');
  if (!a || a.getAttribute('data-test-script-state') !== 'notRunning'
      || a.getAttribute('data-test-connection-state') !== 'CONNECTED') return false;
  if ((window.__segwbRuns || 0) < minRuns) return false;
  if (!document.querySelector('[data-testid="stMainBlockContainer"] h1')) return false;
  const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
  if (imgs.length < minImages || !imgs.every(i => i.complete && i.naturalWidth > 0)) return false;
  const caps = [...document.querySelectorAll('[data-testid="stImageCaption"]')].map(c => c.textContent.trim());
  if (caption !== null && !caps.includes(caption)) return false;
  if (notFirst !== null && (caps.length === 0 || caps[0] === notFirst)) return false;
  return window.__segwbRuns;
}"""

# When the user saw the final page: the last DOM change or the last image received, whichever is later.
_DONE_AT_JS = """() => Math.max(window.__bench.mut || 0,
  ...performance.getEntriesByType('resource').filter(e => e.name.includes('/media/')).map(e => e.responseEnd))"""

_TITLE_JS = """() => { const h = document.querySelector('[data-testid="stMainBlockContainer"] h1');
  return h ? performance.now() : false; }"""


def _ready(page: Any, min_runs: int, caption: str | None = None, min_images: int = 0,
           not_first: str | None = None, timeout: float = 300.0) -> float:
    """performance.now() (ms) when the page reached its final state (see :data:`_DONE_AT_JS`).

    Waits for the condition of :data:`_READY_JS`, then for the page's main thread to be idle (pending
    renders committed), the images decoded and one more quiet second without a new run.
    """
    while True:
        runs = page.wait_for_function(_READY_JS, arg=[min_runs, caption, min_images, not_first],
                                      polling="raf", timeout=timeout * 1000).json_value()
        H._browser_idle(page, timeout)
        H._wait_images(page, timeout)
        time.sleep(1.0)
        H._browser_idle(page, timeout)
        st = H.script_state(page)
        if st and st["runs"] == runs and st["script"] == "notRunning" and \
                page.evaluate(_READY_JS, [min_runs, caption, min_images, not_first]):
            return float(page.evaluate(_DONE_AT_JS))
        min_runs = int(st["runs"]) if st else min_runs + 1


def _new_page(ctx: Any) -> Any:
    page = ctx.new_page()
    page.add_init_script(_BENCH_INIT)
    return page


def _load(ctx: Any, name: str) -> dict[str, float]:
    """One first render of page ``name`` in a new session: {"idle", "title"} seconds."""
    page = _new_page(ctx)
    try:
        page.goto(H.page_path(name), wait_until="commit")
        title = page.wait_for_function(_TITLE_JS, polling="raf", timeout=300_000).json_value()
        idle = _ready(page, 1)
        H.assert_healthy(page)
        return {"idle": round(idle / 1000, 3), "title": round(float(title) / 1000, 3)}
    finally:
        page.close()


# ------------------------------------------------------------------------------------- models

def choose_model(ws: Path) -> dict[str, Any]:
    """The best nerve model available (see module doc); creates a random one when there is none."""
    os.environ["SEGWB_WORKSPACE"] = str(ws)
    from engine.checkpoint import list_weights, read_card
    from engine.workspace import Workspace

    table = [w for w in list_weights(Workspace(ws)) if "error" not in w]
    names = [w["name"] for w in table]
    pick = next((n for n in PREFERRED_MODELS if n in names), None)
    why = "shipped preferred model"
    if pick is None:
        nerve = [w["name"] for w in table if "nerve" in (w.get("classes") or [])]
        pick = (nerve or names or [None])[0]
        why = "no preferred model shipped: first available nerve model" if nerve else "first available model"
    if pick is None:
        _random_model(ws / "models", RANDOM_MODEL)
        pick = RANDOM_MODEL
        table = [w for w in list_weights(Workspace(ws)) if "error" not in w]
    if pick == RANDOM_MODEL:
        why = ("no trained model available: random weights, default `engine train` architecture "
               "(classic U-Net, base 16, 256×256)")
    w = next(x for x in table if x["name"] == pick)
    card = read_card(w["folder"])
    return {"name": pick, "why": why, "origin": w["origin"], "arch": card.spec.arch, "encoder": card.spec.encoder,
            "input_size": list(card.preprocess.size) if card.preprocess.size else None,
            "n_parameters": getattr(card, "n_parameters", None), "size_mb": w.get("size_mb"),
            "synthetic": w.get("synthetic"), "available": names}


def _random_model(folder: Path, name: str) -> None:
    import torch

    from engine.augment import Preprocess
    from engine.checkpoint import ModelCard, save_checkpoint
    from engine.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="unet_classic", base_channels=16, num_classes=2)
    card = ModelCard(name=name, spec=spec, labels={0: "background", 1: "nerve"}, preprocess=Preprocess(size=(256, 256)),
                     description="Random weights for bench/app_pages.py (timing only).")
    save_checkpoint(folder / name, build_model(spec, load_pretrained=False), card)


# ------------------------------------------------------------------------------------- parts

def bench_pages(ctx: Any, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pages = H.app_pages()
    for name, _ in pages:  # warm-up: first load after server start (cold imports and caches)
        out[name] = {"warmup": _load(ctx, name)}
    for name, script in pages:
        samples = [_load(ctx, name) for _ in range(runs)]
        idle = [s["idle"] for s in samples]
        out[name].update(script=script, runs=idle, idle_median=round(median(idle), 3),
                         title_median=round(median([s["title"] for s in samples]), 3),
                         meets_target=median(idle) <= TARGETS["page_first_render_s"])
    return out


def bench_predict(ctx: Any, model: str, frames: list[Path], runs: int) -> dict[str, Any]:
    samples = []
    for i, frame in enumerate(frames[: runs + 1]):
        page = _new_page(ctx)
        try:
            H.goto_page(page, "Predict")
            H.select_option(page, "Model", model)
            n = H.run_count(page)
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(frame))
            done = _ready(page, n + 1, caption=f"{frame.name}: prediction", min_images=2)
            start = page.evaluate("() => window.__bench.change")
            H.assert_healthy(page)
            m = H.metrics(page)
            # threshold to its maximum: post-processing of the cached probabilities + re-render only
            thumb = H.widget(page, "stSlider", "Threshold").first.locator('input[type="range"]').first
            thumb.focus()
            n = H.run_count(page)
            thumb.press("End")
            done2 = _ready(page, n + 1, caption=f"{frame.name}: prediction", min_images=2)
            t_key = page.evaluate("() => window.__bench.key")
            samples.append({"file": frame.name, "seconds": round((done - start) / 1000, 3),
                            "threshold_change_s": round((done2 - t_key) / 1000, 3),
                            "page_model_time": m.get("Model time"), "page_total_time": m.get("Total time"),
                            "page_metrics": m, "warmup": i == 0})
        finally:
            page.close()
    timed = [s["seconds"] for s in samples if not s["warmup"]]
    thr = [s["threshold_change_s"] for s in samples if not s["warmup"]]
    return {"samples": samples, "median_s": round(median(timed), 3) if timed else None,
            "threshold_change_median_s": round(median(thr), 3) if thr else None,
            "min_s": min(timed) if timed else None, "max_s": max(timed) if timed else None,
            "meets_target": bool(timed) and median(timed) <= TARGETS["predict_s"]}


def engine_reference(ws: Path, model: str, frames: list[Path], runs: int = 3) -> dict[str, Any]:
    """The same prediction without the app: ``Predictor.predict`` on a decoded frame, in this process
    (same machine, same moment), so the app's own overhead can be told from the model's cost."""
    os.environ["SEGWB_WORKSPACE"] = str(ws)
    from engine.inference import Predictor
    from engine.io import load_image

    pred = Predictor.from_weights(model, device="cpu")
    img = load_image(frames[0])
    img = img[0] if isinstance(img, tuple) else img
    pred.predict(img)  # warm-up
    times, model_s = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = pred.predict(img)
        times.append(time.perf_counter() - t0)
        model_s.append(float((res.seconds or {}).get("model", 0.0)) if isinstance(res.seconds, dict) else 0.0)
    import torch

    return {"predict_median_s": round(median(times), 3), "model_forward_median_s": round(median(model_s), 3),
            "torch_threads": torch.get_num_threads(), "runs": runs}


def _first_caption(page: Any) -> str:
    caps = H.image_captions(page)
    return caps[0] if caps else ""


def _page_change(page: Any, label: str) -> float:
    before = _first_caption(page)
    n = H.run_count(page)
    H.button(page, label).first.click()
    done = _ready(page, n + 1, min_images=36, not_first=before)
    start = page.evaluate("() => window.__bench.click")
    return round((done - start) / 1000, 3)


def bench_browser(ctx: Any, pages: int, dwell: float = 2.0) -> dict[str, Any]:
    page = _new_page(ctx)
    try:
        page.goto(H.page_path("Dataset browser"), wait_until="commit")
        first = _ready(page, 1, min_images=36)
        H.assert_healthy(page)
        n_cases = page.locator('[data-testid="stCaptionContainer"]').filter(
            has_text=re.compile(r"^\s*[\d,]+ of [\d,]+ cases")).first.inner_text()
        cold = [_page_change(page, "Next") for _ in range(pages)]
        dwelled = []
        for _ in range(pages):
            time.sleep(dwell)
            dwelled.append(_page_change(page, "Next"))
        first_warm = _page_change(page, "First")
        warm = [_page_change(page, "Next") for _ in range(pages)]
        H.assert_healthy(page)
        H.screenshot(page, "dataset_browser_full", Path(tempfile.gettempdir()) / "segwb-bench-shots")
    finally:
        page.close()
    return {"first_open_s": round(first / 1000, 3), "cases_caption": n_cases.strip(),
            "next_cold_s": cold, "next_cold_median_s": round(median(cold), 3),
            "dwell_s": dwell, "next_after_dwell_s": dwelled, "next_after_dwell_median_s": round(median(dwelled), 3),
            "first_page_warm_s": first_warm, "next_warm_s": warm, "next_warm_median_s": round(median(warm), 3),
            "meets_target": {"cold": median(cold) <= TARGETS["browser_page_change_s"],
                             "after_dwell": median(dwelled) <= TARGETS["browser_page_change_s"],
                             "warm": median(warm) <= TARGETS["browser_page_change_s"]}}


# ------------------------------------------------------------------------------------- main

def ensure_demo() -> Path:
    demo = REPO / "demo_data"
    subprocess.run([sys.executable, "-m", "engine", "demo", "--out", str(demo), "--if-missing"], cwd=REPO,
                   check=True)
    return demo


def ensure_full(path: Path) -> dict[str, Any]:
    if (path / "train_masks.csv").is_file():
        return {"path": str(path), "generated_now": False}
    from engine.phantoms import generate_nerve_phantom

    print(f"generating the full-size phantom in {path} (about 7 minutes)…", flush=True)
    s = generate_nerve_phantom(path, subjects=47, frames=120)
    return {"path": str(path), "generated_now": True, "seconds": s.get("seconds")}


def _images(folder: Path) -> int:
    """Number of ``*.tif`` images that are not ``*_mask.tif``."""
    return sum(1 for p in folder.glob("*.tif") if not p.stem.endswith("_mask"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="first renders per page (median)")
    ap.add_argument("--predict-runs", type=int, default=5, help="timed uploads (after one warm-up)")
    ap.add_argument("--browser-pages", type=int, default=3, help="page changes per cold/warm series")
    ap.add_argument("--dwell", type=float, default=2.0,
                    help="seconds a user looks at a browser page before 'Next' in the dwell series")
    ap.add_argument("--workspace", default=str(BENCH_WS), help="workspace of the benchmark server")
    ap.add_argument("--full-data", default=str(FULL_DATA), help="the 47×120 phantom (generated when missing)")
    ap.add_argument("--parts", default="pages,predict,browser",
                    help="comma-separated parts to run: pages, predict, browser (the full-size Dataset browser)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    reason = H._skip_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    from playwright.sync_api import sync_playwright

    t_start = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    ws = Path(args.workspace).expanduser()
    ws.mkdir(parents=True, exist_ok=True)
    demo = ensure_demo()
    model = choose_model(ws)
    frames = sorted((demo / "nerve" / "train").glob("*_[0-9]*.tif"))
    frames = [f for f in frames if not f.stem.endswith("_mask")]
    step = max(1, len(frames) // (args.predict_runs + 1))
    frames = frames[::step][: args.predict_runs + 1]
    from PIL import Image

    with Image.open(frames[0]) as im:
        frame_size = [im.height, im.width]
    result: dict[str, Any] = {"targets": TARGETS, "model": model,
                              "data": {"demo": str(demo), "demo_scale": "default",
                                       "demo_nerve_images": _images(demo / "nerve" / "train"),
                                       "predict_frame_size": frame_size},
                              "settings": {"runs": args.runs, "predict_runs": args.predict_runs,
                                           "browser_pages": args.browser_pages, "workspace": str(ws),
                                           "viewport": H.VIEWPORT, "chromium": str(H.CHROMIUM)}}
    tmp = Path(tempfile.mkdtemp(prefix="segwb-bench-app-"))
    try:
        with sync_playwright() as pw:
            server = H.start_server(ws, demo, tmp / "streamlit-demo.log") if parts & {"pages", "predict"} else None
            try:
                ctx = H.launch_chromium(pw, tmp / "profile-demo", base_url=server.url) if server else None
                try:
                    if "pages" in parts:
                        result["pages"] = bench_pages(ctx, args.runs)
                    if "predict" in parts:
                        result["predict"] = bench_predict(ctx, model["name"], frames, args.predict_runs)
                        result["predict"]["engine_reference"] = engine_reference(ws, model["name"], frames)
                finally:
                    if ctx is not None:
                        ctx.close()
            finally:
                if server is not None:
                    server.stop()
            if "browser" in parts:
                full = Path(args.full_data).expanduser()
                result["data"]["full"] = ensure_full(full)
                root = tmp / "demo-full"  # demo root whose nerve/ is the full phantom (the page's default dataset)
                root.mkdir()
                (root / "nerve").symlink_to(full.resolve(), target_is_directory=True)
                (root / "ptx").symlink_to((demo / "ptx").resolve(), target_is_directory=True)
                result["data"]["full"]["images"] = _images(full / "train")
                removed = 0
                for d in (ws / "datasets").glob(f"{full.resolve().name}-*"):
                    result["data"]["full"]["index_cache_warm"] = any(d.glob("index-*.json"))
                    for p in (d / "thumbs").glob("*.jpg"):
                        p.unlink()
                        removed += 1
                result["data"]["full"].setdefault("index_cache_warm", False)
                result["data"]["full"]["thumbnails_cleared"] = removed
                server = H.start_server(ws, root, tmp / "streamlit-full.log")
                try:
                    ctx = H.launch_chromium(pw, tmp / "profile-full", base_url=server.url)
                    try:
                        result["browser"] = bench_browser(ctx, args.browser_pages, args.dwell)
                    finally:
                        ctx.close()
                finally:
                    server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["machine_cpus"] = os.cpu_count()
    path = save_result("app_pages", result, Path(args.out) if args.out else None)
    report(result)
    print(f"\nsaved {path}")
    return 0


def report(r: dict[str, Any]) -> None:
    mark = {True: "ok", False: "OVER"}
    m = r["model"]
    print(f"model: {m['name']} ({m['why']}; {m['arch']}, input {m['input_size']})")
    print(f"load average before {r['load_average']['before']} after {r['load_average']['after']} "
          f"({r['machine_cpus']} CPUs)")
    if "pages" in r:
        print(f"\n{'page':<20} {'warm-up s':>9} {'title s':>8} {'idle s':>7}  target {TARGETS['page_first_render_s']} s"
              "  (title/idle: medians, new session, warm server)")
        for name, p in r["pages"].items():
            print(f"{name:<20} {p['warmup']['idle']:>9.2f} {p['title_median']:>8.2f} {p['idle_median']:>7.2f}  "
                  f"{mark[p['meets_target']]:<4} runs {p['runs']}")
    pr = r.get("predict")
    if pr:
        ref = pr.get("engine_reference") or {}
        print(f"\npredict, 420×580 upload → overlay decoded: median {pr['median_s']} s (min {pr['min_s']}, max "
              f"{pr['max_s']}), target {TARGETS['predict_s']} s: {mark[pr['meets_target']]}")
        print(f"  engine alone (Predictor.predict, same frame, this process): {ref.get('predict_median_s')} s, "
              f"of which model forward {ref.get('model_forward_median_s')} s")
        print(f"  threshold change (cached probabilities, re-post-process + re-render): median "
              f"{pr['threshold_change_median_s']} s")
        for s in pr["samples"]:
            print(f"  {s['file']:<12} {s['seconds']:>6.2f} s   page: model {s['page_model_time']}, total "
                  f"{s['page_total_time']}; threshold change {s['threshold_change_s']:.2f} s"
                  f"{'   (warm-up, not counted)' if s['warmup'] else ''}")
    b = r.get("browser")
    if b:
        print(f"\nDataset browser on {b['cases_caption']} — first open {b['first_open_s']} s "
              f"(index cache {'warm' if r['data']['full'].get('index_cache_warm') else 'cold'})")
        print(f"  next page, thumbnails cold: {b['next_cold_s']} → median {b['next_cold_median_s']} s "
              f"{mark[b['meets_target']['cold']]}")
        print(f"  next page after looking at the page {b['dwell_s']} s (next page prefetched meanwhile): "
              f"{b['next_after_dwell_s']} → median {b['next_after_dwell_median_s']} s "
              f"{mark[b['meets_target']['after_dwell']]}")
        print(f"  next page, thumbnails warm: {b['next_warm_s']} → median {b['next_warm_median_s']} s "
              f"{mark[b['meets_target']['warm']]}   (back to page 1: {b['first_page_warm_s']} s)")


if __name__ == "__main__":
    raise SystemExit(main())
