"""Benchmark: prediction pipeline (``engine.inference.Predictor``) vs the raw model forward.

Three measurements:

1. ``pipeline_vs_raw`` (CPU): 256×256 uint8 numpy images → label masks with the full pipeline
   (``engine.io.to_chw_float`` → ``Predictor.predict_many``: preprocessing as the card says, the
   forward pass, softmax, restore to the original size, the card's default post-processing),
   against ``model(x)`` under ``torch.inference_mode`` on a pre-built float32 tensor of the same
   shape, with the same model object, for batch 1 and batch 16. The card's preprocessing is used
   as shipped except that its model-input ``size`` is set to 256×256 (the input size), so both
   sides run the network at 256×256 and the pipeline does no resize (the demo card says
   192×256; both sizes are recorded). The Predictor's ``batch_size`` equals the batch, so a batch
   is one forward pass. Warm-up runs, then pipeline and raw runs alternate (order swapped every
   round, so a change in machine load hits both alike); medians are reported.
   Target: pipeline ≤ 1.25× raw.
2. ``nerve_420x580`` (CPU): one 420×580 image → post-processed label mask at 420×580 with the
   shipped nerve model (``weights/nerve-vessel-us`` when it exists, else
   ``weights/demo-nerve-phantom``) and its card as shipped (preprocessing and default
   post-processing), from a uint8 numpy array (file decoding is not timed). The image is a real
   Kaggle UNS frame from ``../shared/data`` when available (never copied into the repo), else a
   synthetic frame from ``engine.phantoms``. Also timed with flip TTA (extra figure), and at
   2 torch threads when the machine gives torch more. Target: ≤ 1 s on 2 CPU cores.
3. ``cuda_amp`` (only when ``torch.cuda.is_available()``): throughput (images/s) of the pipeline on
   CUDA (AMP and channels-last, the Predictor's defaults there) vs the raw forward on a
   pre-built GPU tensor under the same autocast and memory format (and, for reference, the raw
   fp32 forward). Target: pipeline ≥ 0.8× raw. Otherwise ``{"skipped": "no CUDA device"}``.

Torch uses its default thread count (``--threads`` overrides it); ``torch.get_num_threads()``,
``os.cpu_count()`` and the load average before and after are recorded. Run::

    python bench/inference.py [--weights DIR] [--repeats N] [--quick] [--out bench/results/inference.json]

Prints a table and writes ``bench/results/inference.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, median, save_result

TARGETS = {"pipeline_over_raw_max": 1.25, "nerve_420x580_max_s": 1.0, "cuda_throughput_ratio_min": 0.8}
SHARED_DATA = REPO.parent / "shared" / "data"
BIG_HW = (420, 580)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def _time(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> float:
    if sync:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t0


def _summary(times: list[float]) -> dict[str, Any]:
    return {"median_ms": _ms(median(times)), "min_ms": _ms(min(times)), "max_ms": _ms(max(times)),
            "mean_ms": _ms(statistics.mean(times)), "n": len(times)}


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int,
              sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Warm every fn up, then time them round-robin, ``repeats`` rounds, order reversed every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].append(_time(fns[n], sync))
    return times


def bench_images(n: int, hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """uint8 (H,W) speckle images with one bright disk (content does not change the timings)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    out = []
    for _ in range(n):
        img = rng.normal(90, 25, hw)
        r = rng.uniform(hw[0] / 12, hw[0] / 6)
        cy, cx = rng.uniform(r, hw[0] - r), rng.uniform(r, hw[1] - r)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 80
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _stage_ms(preds: list[Any]) -> dict[str, float]:
    """Per-batch ms of each Predictor stage (its ``seconds`` are per image)."""
    keys = ("preprocess", "model", "restore", "postprocess")
    return {k: _ms(sum(float(p.seconds.get(k, 0.0)) for p in preds)) for k in keys}


def _batch_fns(pred: Any, imgs: list[np.ndarray], x: Any,
               stage_runs: list[dict[str, float]]) -> tuple[Callable[[], None], Callable[[], None]]:
    """(pipeline: uint8 images → masks, raw: ``model(x)``) for one batch."""
    import torch

    from engine.io import to_chw_float

    model = pred.model

    def pipeline() -> None:
        preds = pred.predict_many([to_chw_float(a) for a in imgs])
        assert len(preds) == len(imgs) and preds[0].mask.shape == (256, 256) and preds[0].mask.dtype == np.uint8
        stage_runs.append(_stage_ms(preds))

    def raw() -> None:
        with torch.inference_mode():
            model(x)

    return pipeline, raw


def pipeline_vs_raw(pred: Any, batches: list[int], repeats: dict[int, int], warmup: int) -> dict[str, Any]:
    import torch

    from engine.io import to_chw_float

    out: dict[str, Any] = {}
    for b in batches:
        pred.batch_size = b  # one forward pass per batch
        imgs = bench_images(b, (256, 256), seed=b)
        x = torch.from_numpy(np.stack([to_chw_float(a) for a in imgs]))  # pre-built (b,1,256,256) float32
        if pred.pre.in_channels != x.shape[1]:
            x = x.repeat(1, pred.pre.in_channels, 1, 1).contiguous()
        stage_runs: list[dict[str, float]] = []  # stage breakdown of every pipeline run
        pipeline, raw = _batch_fns(pred, imgs, x, stage_runs)
        times = alternate({"pipeline": pipeline, "raw": raw}, repeats[b], warmup)
        stage_runs = stage_runs[-repeats[b]:]  # drop the warm-up runs
        med_p, med_r = median(times["pipeline"]), median(times["raw"])
        ratio = med_p / med_r
        out[f"batch_{b}"] = {
            "batch": b, "repeats": repeats[b], "warmup": warmup, "input": [b, 256, 256], "input_dtype": "uint8",
            "model_input": list(x.shape),
            "pipeline": _summary(times["pipeline"]), "raw": _summary(times["raw"]),
            "pipeline_stages_median_ms": {k: round(median([s[k] for s in stage_runs]), 2) for k in stage_runs[0]},
            "ratio": round(ratio, 3), "target_max": TARGETS["pipeline_over_raw_max"],
            "meets_target": ratio <= TARGETS["pipeline_over_raw_max"],
            "pipeline_images_per_s": round(b / med_p, 2), "raw_images_per_s": round(b / med_r, 2),
        }
    return out


def find_real_image() -> Path | None:
    """A 420×580 Kaggle UNS frame (``<subject>_<frame>.tif``, not a mask) under ../shared/data."""
    if not SHARED_DATA.is_dir():
        return None
    from engine.errors import WorkbenchError
    from engine.io import image_size

    for folder in sorted(p for p in SHARED_DATA.iterdir() if p.is_dir()):
        for f in sorted(folder.rglob("*_*.tif"), key=lambda p: p.name):
            stem = f.stem.split("_")
            if len(stem) == 2 and all(s.isdigit() for s in stem):
                try:
                    if tuple(image_size(f)) == BIG_HW:
                        return f
                except (WorkbenchError, OSError, ValueError):  # unreadable: keep looking
                    pass
    return None


def load_big_image(choice: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 (420,580) array and where it came from (decoding is not part of the timing)."""
    from engine.io import read_image

    path = None if choice == "synthetic" else (Path(choice) if choice else find_real_image())
    if path is not None:
        arr, _ = read_image(path)
        return np.asarray(arr), {"source": "real", "path": os.path.relpath(path, REPO), "shape": list(arr.shape),
                                 "dtype": str(arr.dtype)}
    from engine.phantoms import generate_nerve_phantom

    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        generate_nerve_phantom(tmp / "nerve", subjects=1, frames=4, size=BIG_HW, seed=0)
        arr, _ = read_image(tmp / "nerve" / "train" / "1_1.tif")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return np.asarray(arr), {"source": "synthetic (engine.phantoms.generate_nerve_phantom, seed 0, frame 1_1)",
                             "shape": list(arr.shape), "dtype": str(arr.dtype)}


def nerve_weights(choice: str | None) -> Path:
    if choice:
        return Path(choice)
    for name in ("nerve-vessel-us", "demo-nerve-phantom"):
        if (REPO / "weights" / name / "card.json").exists():
            return REPO / "weights" / name
    raise SystemExit("no nerve model: neither weights/nerve-vessel-us nor weights/demo-nerve-phantom exists")


def nerve_420x580(weights: Path, img_u8: np.ndarray, repeats: int, warmup: int) -> dict[str, Any]:
    import torch

    from engine.inference import Predictor
    from engine.io import to_chw_float

    pred = Predictor.from_weights(weights, device="cpu")
    res: dict[str, Any] = {"weights": str(weights.relative_to(REPO) if weights.is_relative_to(REPO) else weights),
                           "card_name": pred.card.name, "card_synthetic": bool(pred.card.synthetic),
                           "num_classes": pred.num_classes, "preprocess": pred.pre.to_dict(),
                           "postprocess": pred.post_default.to_dict(), "repeats": repeats, "warmup": warmup}
    stages: dict[str, list[dict[str, float]]] = {"none": [], "flip": []}

    def run(tta: str) -> Callable[[], None]:
        def fn() -> None:
            p = pred.predict(to_chw_float(img_u8), tta=tta)
            assert p.mask.shape == BIG_HW and p.mask.dtype == np.uint8
            stages[tta].append(_stage_ms([p]))
        return fn

    def measure(tag: str) -> None:
        for v in stages.values():
            v.clear()
        times = alternate({"none": run("none"), "flip": run("flip")}, repeats, warmup)
        med = median(times["none"])
        res[tag] = {"torch_threads": torch.get_num_threads(), "predict": _summary(times["none"]),
                    "predict_flip_tta": _summary(times["flip"]),
                    "stages_median_ms": {k: round(median([s[k] for s in stages["none"][-repeats:]]), 2)
                                         for k in stages["none"][0]},
                    "flip_stages_median_ms": {k: round(median([s[k] for s in stages["flip"][-repeats:]]), 2)
                                              for k in stages["flip"][0]},
                    "target_max_s": TARGETS["nerve_420x580_max_s"],
                    "meets_target": med <= TARGETS["nerve_420x580_max_s"]}

    measure("default_threads")
    if torch.get_num_threads() != 2 and (os.cpu_count() or 1) >= 2:  # the target is stated for 2 cores
        import cv2

        n, n_cv = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(2)
        cv2.setNumThreads(2)
        try:
            measure("two_threads")
        finally:
            torch.set_num_threads(n)
            cv2.setNumThreads(n_cv)
    return res


def cuda_amp(weights: Path, batch: int, repeats: int, warmup: int) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    from engine.inference import Predictor
    from engine.io import to_chw_float

    pred = Predictor.from_weights(weights, device="cuda", batch_size=batch)  # AMP + channels-last by default
    pred = _at_256(pred)
    model = pred.model
    imgs = bench_images(batch, (256, 256), seed=batch)
    x = torch.from_numpy(np.stack([to_chw_float(a) for a in imgs]))
    if pred.pre.in_channels != x.shape[1]:
        x = x.repeat(1, pred.pre.in_channels, 1, 1)
    x = x.to(pred.device).contiguous(memory_format=torch.channels_last if pred.channels_last
                                     else torch.contiguous_format)

    def pipeline() -> None:
        preds = pred.predict_many([to_chw_float(a) for a in imgs])
        assert len(preds) == batch

    def raw_amp() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=pred.amp_dtype, enabled=pred.amp):
            model(x)

    def raw_fp32() -> None:
        with torch.inference_mode():
            model(x)

    times = alternate({"pipeline": pipeline, "raw_amp": raw_amp, "raw_fp32": raw_fp32}, repeats, warmup,
                      sync=torch.cuda.synchronize)
    ips = {k: batch / median(v) for k, v in times.items()}
    ratio = ips["pipeline"] / ips["raw_amp"]
    return {"device": torch.cuda.get_device_name(0), "batch": batch, "repeats": repeats, "warmup": warmup,
            "amp": pred.amp, "amp_dtype": str(pred.amp_dtype).replace("torch.", ""),
            "channels_last": pred.channels_last,
            **{k: _summary(v) for k, v in times.items()},
            "images_per_s": {k: round(v, 1) for k, v in ips.items()},
            "ratio": round(ratio, 3), "ratio_vs_raw_fp32": round(ips["pipeline"] / ips["raw_fp32"], 3),
            "target_min": TARGETS["cuda_throughput_ratio_min"],
            "meets_target": ratio >= TARGETS["cuda_throughput_ratio_min"]}


def _at_256(pred: Any) -> Any:
    """The same Predictor with the card's model-input size set to 256×256 (preprocessing otherwise as shipped)."""
    if tuple(pred.pre.size) == (256, 256) or pred.pre.resize_policy == "pad":
        return pred
    card = dataclasses.replace(pred.card, preprocess=dataclasses.replace(pred.pre, size=(256, 256)))
    pred.card, pred.pre = card, card.preprocess
    return pred


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None,
                    help="weights folder or name for the pipeline-vs-raw and CUDA parts "
                         "(default weights/demo-nerve-phantom)")
    ap.add_argument("--nerve-weights", default=None,
                    help="weights for the 420×580 part (default weights/nerve-vessel-us, else demo-nerve-phantom)")
    ap.add_argument("--image", default=None,
                    help="420×580 image file for the nerve part, or 'synthetic' (default: a Kaggle UNS frame "
                         "from ../shared/data, else a synthetic phantom frame)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repeats for every part (default: 20 at batch 1, 5 at batch 16, 10 for 420×580, "
                         "20 for CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up runs per mode (default 2, --quick 1)")
    ap.add_argument("--batches", default="1,16", help="comma-separated batch sizes for the pipeline-vs-raw part")
    ap.add_argument("--cuda-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own default)")
    ap.add_argument("--quick", action="store_true", help="few repeats, for a smoke run")
    ap.add_argument("--out", default=str(RESULTS / "inference.json"), help="results file")
    args = ap.parse_args(argv)

    load_before = _load()
    import torch

    from engine.inference import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)

    def reps(default: int, quick: int) -> int:
        return max(1, args.repeats if args.repeats else (quick if args.quick else default))

    rep_b = {b: reps(20 if b == 1 else 5 if b >= 16 else 10, 5 if b == 1 else 2) for b in batches}
    weights = Path(args.weights) if args.weights else REPO / "weights" / "demo-nerve-phantom"
    t_start = time.perf_counter()

    pred = Predictor.from_weights(weights, device="cpu")
    card_size = list(pred.pre.size)
    pred = _at_256(pred)
    part1 = {"weights": str(weights.relative_to(REPO) if weights.is_relative_to(REPO) else weights),
             "card_name": pred.card.name, "arch": pred.card.spec.arch, "base_channels": pred.card.spec.base_channels,
             "card_preprocess_size": card_size, "bench_preprocess": pred.pre.to_dict(),
             "postprocess": pred.post_default.to_dict(), "tta": pred.tta,
             **pipeline_vs_raw(pred, batches, rep_b, warmup)}
    del pred

    img, img_info = load_big_image(args.image)
    nweights = nerve_weights(args.nerve_weights)
    part2 = {"image": img_info, **nerve_420x580(nweights, img, reps(10, 3), warmup)}
    part3 = cuda_amp(weights, args.cuda_batch, reps(20, 5), warmup)

    results = {
        "config": {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                   "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                   "torch_version": torch.__version__, "quick": args.quick, "warmup": warmup},
        "load_average_before": load_before, "load_average_after": _load(),
        "targets": TARGETS,
        "pipeline_vs_raw": part1, "nerve_420x580": part2, "cuda_amp": part3,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = save_result("inference", results, path=Path(args.out))

    cfg = results["config"]
    print(f"inference bench: torch threads {cfg['torch_threads']}, os.cpu_count() {cfg['cpu_count']}, "
          f"load average before {load_before} after {results['load_average_after']}"
          f"{' (--quick)' if args.quick else ''}")
    print(f"1. pipeline vs raw forward, 256×256 uint8 → masks, {part1['card_name']} "
          f"({part1['arch']} b{part1['base_channels']}; card input {card_size[0]}×{card_size[1]} run at 256×256)")
    print(f"  {'batch':>5} {'n':>3} {'pipeline ms':>11} {'raw ms':>8} {'ratio':>6} {'target':>7}  "
          f"stages ms (pre / model / restore / post)")
    for b in batches:
        m = part1[f"batch_{b}"]
        s = m["pipeline_stages_median_ms"]
        print(f"  {b:>5} {m['repeats']:>3} {m['pipeline']['median_ms']:>11.1f} {m['raw']['median_ms']:>8.1f} "
              f"{m['ratio']:>6.3f} {'PASS' if m['meets_target'] else 'FAIL':>7}  "
              f"{s['preprocess']:.1f} / {s['model']:.1f} / {s['restore']:.1f} / {s['postprocess']:.1f}")
    print(f"     target: pipeline <= {TARGETS['pipeline_over_raw_max']}x raw")
    src = img_info["source"] + (f" {img_info['path']}" if "path" in img_info else "")
    print(f"2. 420×580 predict + post-processing, {part2['weights']} ({src})")
    print(f"  {'threads':>7} {'n':>3} {'predict ms':>10} {'flip TTA ms':>11} {'target':>7}  "
          f"stages ms (pre / model / restore / post)")
    for tag in ("default_threads", "two_threads"):
        if tag in part2:
            m = part2[tag]
            s = m["stages_median_ms"]
            print(f"  {m['torch_threads']:>7} {part2['repeats']:>3} {m['predict']['median_ms']:>10.1f} "
                  f"{m['predict_flip_tta']['median_ms']:>11.1f} {'PASS' if m['meets_target'] else 'FAIL':>7}  "
                  f"{s['preprocess']:.1f} / {s['model']:.1f} / {s['restore']:.1f} / {s['postprocess']:.1f}")
    print(f"     target: <= {TARGETS['nerve_420x580_max_s']} s on 2 CPU cores (without TTA)")
    if "skipped" in part3:
        print(f"3. CUDA AMP throughput: skipped ({part3['skipped']})")
    else:
        ips = part3["images_per_s"]
        print(f"3. CUDA AMP throughput, {part3['device']}, batch {part3['batch']} ({part3['amp_dtype']}): "
              f"pipeline {ips['pipeline']:.0f} img/s, raw AMP {ips['raw_amp']:.0f}, raw fp32 {ips['raw_fp32']:.0f}; "
              f"ratio {part3['ratio']:.3f} {'PASS' if part3['meets_target'] else 'FAIL'} "
              f"(target >= {TARGETS['cuda_throughput_ratio_min']})")
    print(f"  total {results['total_seconds']} s; saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
