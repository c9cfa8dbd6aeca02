"""Benchmark: interactive click-to-segment — the click model vs the classical methods, same objects, same run.

Protocol (the standard one, :func:`engine.assist.clicks.next_click`): start from an empty mask; each
click goes to the error pixel farthest from its error region's boundary (positive when it is a false
negative); at most 20 clicks. Per object we record the IoU after every click and report, per data set /
structure and method:

- **NoC@85 / NoC@90**: mean number of clicks until IoU ≥ 0.85 / 0.90 (20 when never reached);
- **IoU@1 / @3 / @5**: mean IoU after 1, 3 and 5 clicks;
- **fail@90**: share of objects that never reach 0.90 in 20 clicks;
- **s/click**: median seconds per click (``AssistSession.last_seconds``: the whole click, image to mask).

The classical methods are slow (GrabCut and random walker take ~1 s a click on 2 shared cores and rarely
stop early), so by default they run on the first 10 objects of each group (``--classical-max-objects``)
and the side-by-side table compares every method on exactly those; the click model is also scored on
every held-out object (a second table).

To save time a run stops once IoU ≥ 0.90 *and* at least 5 clicks were made: NoC@85, NoC@90 and
IoU@1/3/5 are exactly what 20-click runs would give.

Objects — **held-out only** (never seen in training: the click model's card lists them):

- ``montgomery/lungs``: the 28 held-out Montgomery chest X-rays (512²), both lungs as one object;
- ``usgra/nerve``, ``usgra/vessel``: the 38 held-out usgra ultrasound frames (512²–761×632), each class
  mask one object (some have several parts);
- ``ct/lungs``, ``ct/liver``: axial slices of the TotalSegmentator sample CT (int16 HU, 122×101 at 3 mm; a
  modality the click model never saw); reference masks are TotalSegmentator's output, not manual —
  an indication of generalisation, not a measurement of accuracy.

Timing: ``--timing`` images (default 3 held-out Montgomery X-rays) at 512² and resized to 1024², 5
protocol clicks each, median and 90th percentile seconds per click. The machine (CPU count, load
average) is saved with the figures; other jobs on the machine slow every method alike.

Run::

    python bench/assist.py [--data ../shared/data] [--methods click_model,grabcut,random_walker,watershed]
                           [--max-objects N] [--update-card] [--out bench/results/assist.json]

Prints a table and writes ``bench/results/assist.json``. ``--update-card`` stores the click model's
figures (and the classical ones beside it) in ``weights/click-seg/click.json``. Without
``../shared/data`` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, load_avg, median, save_result  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
THRESHOLDS = (0.85, 0.90)
AT = (1, 3, 5)


@dataclass
class Obj:
    """One held-out object: the image as stored (any dtype), the ground truth, its group and id."""

    group: str
    case_id: str
    image: np.ndarray
    gt: np.ndarray


def real_objects(data: Path, max_objects: int | None) -> list[Obj]:
    from engine.assist.data import SOURCES, load_split

    out: list[Obj] = []
    for name in ("montgomery", "usgra"):
        sp = load_split(name, data)
        per: dict[str, int] = {}
        for c in sp.held_out:
            arr, _ = sp.dataset.load_image(c)
            labels = sp.dataset.load_mask(c)
            for k, structure in SOURCES[name].structures.items():
                gt = labels == k
                group = f"{name}/{structure}"
                if gt.sum() < 20 or (max_objects and per.get(group, 0) >= max_objects):
                    continue
                per[group] = per.get(group, 0) + 1
                out.append(Obj(group, c.case_id, np.asarray(arr), gt))
    return out


def ct_objects(data: Path, max_objects: int | None) -> list[Obj]:
    import nibabel as nib

    root = data / "totalseg-ct-sample"
    if not (root / "example_ct_sm.nii.gz").is_file():
        return []
    vol = np.asarray(nib.load(root / "example_ct_sm.nii.gz").dataobj).astype(np.int16)
    lungs = np.zeros(vol.shape, bool)
    for f in sorted((root / "lungs_sm").glob("lung_*.nii.gz")):
        lungs |= np.asarray(nib.load(f).dataobj) > 0
    seg = np.asarray(nib.load(root / "example_seg_fast.nii.gz").dataobj)
    liver = seg == 5  # TotalSegmentator v2 class 5 = liver
    out: list[Obj] = []
    for group, masks, min_px, every in (("ct/lungs", lungs, 100, 1), ("ct/liver", liver, 200, 3)):
        ks = [k for k in range(vol.shape[2]) if masks[:, :, k].sum() >= min_px][::every]
        for k in ks[:max_objects] if max_objects else ks:
            out.append(Obj(group, f"example_ct_sm:z{k}", np.ascontiguousarray(np.rot90(vol[:, :, k])),
                           np.ascontiguousarray(np.rot90(masks[:, :, k]))))
    return out


def run_object(obj: Obj, method: str) -> tuple[list[float], list[float]]:
    """IoU after each click and seconds per click for one object and method."""
    from engine.assist import run_protocol, start_session

    s = start_session(obj.image, method=method)
    secs: list[float] = []

    def click(c):  # noqa: ANN001 - a Click
        m = s.click(c.row, c.col, c.positive)
        secs.append(s.last_seconds)
        return m

    ious = run_protocol(obj.gt, click, stop_at=max(THRESHOLDS), min_clicks=max(AT))
    return ious, secs


def summarise(runs: list[list[float]], secs: list[float]) -> dict[str, float | int | None]:
    from engine.assist import iou_after, noc

    n = len(runs)
    out: dict[str, float | int | None] = {"n_objects": n}
    for t in THRESHOLDS:
        nocs = [noc(r, t) for r in runs]
        out[f"noc{int(t * 100)}"] = float(np.mean(nocs)) if n else None
        out[f"fail{int(t * 100)}"] = float(np.mean([not any(v >= t for v in r) for r in runs])) if n else None
    for k in AT:
        vals = [iou_after(r, k) for r in runs]
        vals_f = [v for v in vals if v is not None]
        out[f"iou@{k}"] = float(np.mean(vals_f)) if vals_f else None
    out["s_per_click_median"] = median(secs) if secs else None
    out["s_per_click_p90"] = float(np.percentile(secs, 90)) if secs else None
    out["n_clicks_timed"] = len(secs)
    return out


def timing(objs: list[Obj], methods: list[str], n_images: int) -> dict[str, dict[str, dict[str, float]]]:
    import cv2

    from engine.assist import run_protocol, start_session

    res: dict[str, dict[str, dict[str, float]]] = {}
    pick = [o for o in objs if o.group == "montgomery/lungs"][:n_images]
    for side in (512, 1024):
        res[str(side)] = {}
        for method in methods:
            secs: list[float] = []
            for o in pick:
                img = cv2.resize(o.image, (side, side), interpolation=cv2.INTER_LINEAR)
                gt = cv2.resize(o.gt.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST).astype(bool)
                s = start_session(img, method=method)

                def click(c, s=s):  # noqa: ANN001 - a Click
                    m = s.click(c.row, c.col, c.positive)
                    secs.append(s.last_seconds)
                    return m

                run_protocol(gt, click, max_clicks=5)
            res[str(side)][method] = {"median": median(secs), "p90": float(np.percentile(secs, 90)),
                                      "n_clicks": len(secs)}
    return res


def fmt(v: float | int | None, nd: int = 2) -> str:
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def update_card(results: dict, methods: list[str], command: str) -> Path | None:
    from engine.assist.model import ClickCard, resolve_click_weights, write_click_card

    folder = resolve_click_weights(None)
    if not str(folder.resolve()).startswith(str((REPO / "weights").resolve())):
        return None
    card = ClickCard.read(folder)
    per = {g: {m: results["per_group"][g][m] for m in methods if m in results["per_group"][g]}
           for g in results["per_group"]}
    metrics = {
        "protocol": "standard simulated clicks (next click at the error pixel farthest from its region's boundary, "
                    "positive on a false negative), empty start, 20 clicks at most",
        "held_out_side_by_side": per,
        "held_out_subset": results["common_subset"],
        "click_model_all_held_out": {g: v["click_model"] for g, v in results["click_model_all_objects"].items()
                                     if "click_model" in v},
        "timing_s_per_click": results["timing"],
        "note": "montgomery and usgra: the held-out validation fold (patients / scan sequences never seen in "
                "training); ct: the TotalSegmentator sample CT (a modality never seen; reference masks are "
                "TotalSegmentator output)",
        "machine": results["machine_short"],
        "command": command,
        "date": _dt.date.today().isoformat(),
    }
    write_click_card(folder, card.replace(metrics=metrics))
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--methods", default="click_model,grabcut,random_walker,watershed")
    p.add_argument("--max-objects", type=int, default=None, help="at most N objects per data set / structure")
    p.add_argument("--timing", type=int, default=3, help="images for the 512²/1024² timing (0 = skip)")
    p.add_argument("--no-ct", action="store_true", help="leave out the CT slices")
    p.add_argument("--classical-max-objects", type=int, default=10,
                   help="the classical methods (slow) run on the first N objects of each data set / structure; "
                        "the side-by-side table uses those, the click model is also scored on all (0 = all)")
    p.add_argument("--update-card", action="store_true", help="store the figures in weights/click-seg/click.json")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/assist.json)")
    a = p.parse_args(argv)
    data = Path(a.data)
    if not (data / "montgomery-lung").is_dir():
        print(f"no shared data at {data}: nothing to measure")
        return 0
    from engine.assist import available_methods

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    missing = [m for m in methods if m not in available_methods()]
    if missing:
        print(f"cannot run {missing} here (see engine.assist.list_methods()); leaving them out")
        methods = [m for m in methods if m not in missing]
    objs = real_objects(data, a.max_objects) + ([] if a.no_ct else ct_objects(data, a.max_objects))
    groups = sorted({o.group for o in objs}, key=lambda g: [o.group for o in objs].index(g))
    t0 = time.perf_counter()
    load_start = load_avg()
    per_group: dict[str, dict[str, dict]] = {g: {} for g in groups}
    all_objects: dict[str, dict[str, dict]] = {g: {} for g in groups}
    per_object: list[dict] = []
    index = {id(o): [x for x in objs if x.group == o.group].index(o) for o in objs}
    n_sub = a.classical_max_objects
    for method in methods:
        tm = time.perf_counter()
        for g in groups:
            runs, secs, sub_runs, sub_secs = [], [], [], []
            for o in (o for o in objs if o.group == g):
                in_sub = not n_sub or index[id(o)] < n_sub
                if method != "click_model" and not in_sub:
                    continue  # the classical methods: the common subset only (they are slow)
                ious, ss = run_object(o, method)
                runs.append(ious)
                secs += ss
                if in_sub:
                    sub_runs.append(ious)
                    sub_secs += ss
                per_object.append({"group": g, "case_id": o.case_id, "method": method,
                                   "ious": [round(x, 4) for x in ious], "seconds": [round(x, 4) for x in ss]})
            per_group[g][method] = summarise(sub_runs, sub_secs)
            if method == "click_model":
                all_objects[g][method] = summarise(runs, secs)
        print(f"  {method}: {time.perf_counter() - tm:.0f} s", flush=True)
    tim = timing(objs, methods, a.timing) if a.timing else {}
    hdr = f"{'data / structure':18} {'method':14} {'n':>3} {'NoC@85':>7} {'NoC@90':>7} {'fail@90':>8} " \
          f"{'IoU@1':>6} {'IoU@3':>6} {'IoU@5':>6} {'s/click':>8}"
    print(hdr)
    print("-" * len(hdr))
    for g in groups:
        for m in methods:
            r = per_group[g][m]
            print(f"{g:18} {m:14} {r['n_objects']:>3} {fmt(r['noc85']):>7} {fmt(r['noc90']):>7} "
                  f"{fmt(r['fail90']):>8} {fmt(r['iou@1'], 3):>6} {fmt(r['iou@3'], 3):>6} {fmt(r['iou@5'], 3):>6} "
                  f"{fmt(r['s_per_click_median'], 3):>8}")
    if "click_model" in methods and n_sub:
        print(f"click_model on every held-out object (the table above: the first {n_sub} of each, as the others):")
        for g in groups:
            r = all_objects[g]["click_model"]
            print(f"{g:18} {'click_model':14} {r['n_objects']:>3} {fmt(r['noc85']):>7} {fmt(r['noc90']):>7} "
                  f"{fmt(r['fail90']):>8} {fmt(r['iou@1'], 3):>6} {fmt(r['iou@3'], 3):>6} {fmt(r['iou@5'], 3):>6} "
                  f"{fmt(r['s_per_click_median'], 3):>8}")
    for side, per in tim.items():
        print(f"s/click at {side}²: "
              + ", ".join(f"{m} {v['median']:.3f} (p90 {v['p90']:.3f})" for m, v in per.items()))
    from _common import machine_info

    mi = machine_info()
    from engine.assist.classical import GRABCUT_MAX_SIDE, RANDOM_WALKER_MAX_SIDE

    results = {
        "methods": methods, "groups": groups, "per_group": per_group, "timing": tim,
        "common_subset": f"first {n_sub} objects of each group (held-out order)" if n_sub else "all",
        "click_model_all_objects": all_objects,
        "protocol": {"max_clicks": 20, "thresholds": list(THRESHOLDS), "iou_after": list(AT),
                     "stop": "IoU >= 0.90 and >= 5 clicks (NoC/IoU@k unaffected)", "start": "empty mask"},
        "settings": {"grabcut_max_side": GRABCUT_MAX_SIDE, "random_walker_max_side": RANDOM_WALKER_MAX_SIDE},
        "per_object": per_object, "seconds": round(time.perf_counter() - t0, 1),
        "load_avg_start": load_start, "load_avg_end": load_avg(),
        "machine_short": {"cpu_usable": mi.get("cpu_usable"), "cpu_model": mi.get("cpu_model"),
                          "load_average_end": load_avg(), "torch": mi.get("torch")},
        "command": "python bench/assist.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    path = save_result("assist", results, path=Path(a.out) if a.out else None)
    print(f"saved {path}")
    if a.update_card and "click_model" in methods:
        folder = update_card(results, methods, results["command"])
        print(f"updated {folder}/click.json" if folder else "the click model is not the shipped one: card not updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
