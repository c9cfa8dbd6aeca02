"""Model commands: ``predict``, ``evaluate``, ``weights list``, ``tune-post``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.cli.common import (
    add_dataset_options,
    add_pixel_limit,
    open_dataset_from_args,
    print_json,
    tqdm_progress,
    write_json,
)
from engine.errors import ConfigError


def _add_predictor_flags(p) -> None:
    p.add_argument("--weights", required=True, help="weights name (see `weights list`) or folder")
    p.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--tta", nargs="?", const="flip", default="none", choices=["none", "flip", "flip4"],
                   help="test-time augmentation: flip (horizontal) or flip4 (h, v, both)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threshold", dest="post_threshold", type=float, help="probability threshold (default: card)")
    p.add_argument("--min-area", type=int, help="remove components smaller than this (pixels; default: card)")
    p.add_argument("--keep-largest", type=int, help="keep the k largest components per class")
    p.add_argument("--fill-holes", action="store_true", default=None)
    p.add_argument("--gate", metavar="CLS",
                   help="presence classifier weights that gate the masks (two-stage pipeline); default: the card's")
    p.add_argument("--gate-threshold", type=float,
                   help="P(present) below this empties the mask (default: the card's gate / classifier threshold)")
    p.add_argument("--no-gate", action="store_true", help="ignore the gate the card names")


def _post_from_args(args, card):
    changes = {}
    if args.post_threshold is not None:
        changes["threshold"] = args.post_threshold
    if args.min_area is not None:
        changes["min_area"] = args.min_area
    if args.keep_largest is not None:
        changes["keep_largest"] = args.keep_largest
    if args.fill_holes:
        changes["fill_holes"] = True
    return card.postprocess.replace(**changes) if changes else None


def register(sub) -> None:
    p = sub.add_parser("predict", help="segment files or folders; writes OUT/<stem>.png (uint8 class labels)")
    p.add_argument("inputs", nargs="+", help="image files or folders (PNG/JPEG/BMP/TIFF/DICOM)")
    add_pixel_limit(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rle", help="also write a submission CSV with the RLE of each mask")
    p.add_argument("--rle-format", choices=["kaggle", "siim"], default="kaggle")
    _add_predictor_flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="score a model on a dataset (mean Dice per class, per-image CSV)")
    p.add_argument("dataset", help="dataset folder (any layout) or manifest JSON")
    p.add_argument("--json", dest="json_out", required=True, help="summary JSON; the per-image CSV goes next to it")
    p.add_argument("--empty-policy", choices=["kaggle", "exclude"], default="kaggle",
                   help="kaggle: both empty = Dice 1; exclude: leave such images out")
    p.add_argument("--holdout", action="store_true",
                   help="evaluate only the validation cases recorded in the model card (its held-out split)")
    p.add_argument("--cases", help="file with one case id per line to evaluate")
    p.add_argument("--surface", action="store_true", help="also HD95 and mean surface distance")
    p.add_argument("--no-cache", action="store_true", help="recompute even if an identical evaluation is cached")
    p.add_argument("--rand", action="store_true", help="also the per-image Rand error (ISBI 2012)")
    p.add_argument("--warping", action="store_true", help="also the per-image warping error (U-Net paper; slower)")
    _add_predictor_flags(p)
    add_dataset_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("weights", help="list available weights (shipped and trained here)")
    wsub = p.add_subparsers(dest="weights_cmd", metavar="ACTION")
    wsub.required = True
    pl = wsub.add_parser("list", help="name, classes, size, metrics")
    pl.add_argument("--json", dest="json_out", help="also write the list as JSON")
    pl.set_defaults(func=cmd_weights_list)
    pp = wsub.add_parser("publish", help="copy a training run's best model into a weights folder for shipping, "
                                          "recording the reproduce command and held-out evaluations in its card")
    pp.add_argument("run", help="training run folder (its best/ is published) or a weights folder")
    pp.add_argument("--dest", required=True, help="destination folder, e.g. weights/lung-cxr")
    pp.add_argument("--name", help="model name (default: the card's)")
    pp.add_argument("--command", help="the command that reproduces the run (stored in the card)")
    pp.add_argument("--float16", action="store_true", help="store tensors as float16 (half the size)")
    pp.add_argument("--eval", action="append", default=[], metavar="ID=DATASET[:holdout]",
                    help="evaluate on DATASET (all labelled cases, or ':holdout' = the run's validation cases) "
                         "and record it in the card under metrics.evaluations (repeatable)")
    pp.add_argument("--eval-labels", help="class names for the --eval datasets (comma-separated)")
    pp.add_argument("--group-regex", help="group regex for the --eval datasets")
    pp.set_defaults(func=cmd_weights_publish)
    pf = wsub.add_parser("fingerprint", help="store the out-of-domain profile of the training inputs in a card (input "
                                             "warnings), computed from the card's training cases of DATASET")
    pf.add_argument("name", help="weights name or folder (segmenter or classifier)")
    pf.add_argument("--data", required=True, help="the model's training dataset")
    pf.add_argument("--max-images", type=int, default=200)
    pf.add_argument("--modality", help="DICOM modality codes of non-DICOM training data, e.g. US or CR,DX "
                                       "(so DICOMs of another modality are flagged)")
    add_dataset_options(pf)
    pf.set_defaults(func=cmd_weights_fingerprint)
    pg = wsub.add_parser("set-gate", help="name the presence classifier that gates a segmenter by default")
    pg.add_argument("name", help="segmentation weights name or folder")
    pg.add_argument("--gate", help="classifier weights name (omit to remove the gate)")
    pg.add_argument("--threshold", type=float, help="gate threshold (default: the classifier's)")
    pg.set_defaults(func=cmd_weights_set_gate)
    ps = wsub.add_parser("show", help="print one model card")
    ps.add_argument("name")
    ps.add_argument("--markdown", action="store_true",
                    help="print a model-card section (data, split, metrics, license, command) for weights/README.md")
    ps.set_defaults(func=cmd_weights_show)

    p = sub.add_parser("tune-post", help="search threshold / min area / presence gate on a validation set")
    p.add_argument("dataset")
    p.add_argument("--json", dest="json_out", help="write the best setting and the table as JSON")
    p.add_argument("--empty-policy", choices=["kaggle", "exclude"], default="kaggle")
    p.add_argument("--holdout", action="store_true", help="use the card's validation cases")
    p.add_argument("--max-images", type=int, default=300, help="cases used for the search (spread evenly)")
    p.add_argument("--write-card", action="store_true", help="store the best setting as the card's default")
    _add_predictor_flags(p)
    add_dataset_options(p)
    p.set_defaults(func=cmd_tune_post)


def _predictor(args):
    from engine.inference import Predictor

    if args.gate and args.no_gate:
        raise ConfigError("--gate and --no-gate contradict each other", hint="pass one of them")
    gate = None if args.no_gate else (args.gate or "card")
    return Predictor.from_weights(args.weights, device=args.device, tta=args.tta, batch_size=args.batch_size,
                                  gate=gate, gate_threshold=args.gate_threshold)


def _expand_inputs(inputs: list[str]) -> list[Path]:
    """Files to predict: files as given; folders searched recursively for images, leaving out
    ground truth (sub-folders named like ``masks/``, ``labels/`` and files with a mask suffix such as
    ``_mask``), so a dataset folder can be passed as it is."""
    from engine.datasets.layouts import DEFAULT_MASK_SUFFIXES, MASK_DIR_NAMES
    from engine.errors import ReadError
    from engine.io import IMAGE_SUFFIXES, is_dicom_file

    mask_dirs = {n.lower() for n in MASK_DIR_NAMES}

    def is_ground_truth(f: Path, root: Path) -> bool:
        parts = f.relative_to(root).parts[:-1]
        return any(d.lower() in mask_dirs for d in parts) or f.stem.endswith(DEFAULT_MASK_SUFFIXES)

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            from engine.datasets.scan import walk_files

            files += sorted(f for f in walk_files(p) if not f.name.startswith(".")
                            and (f.suffix.lower() in IMAGE_SUFFIXES or (not f.suffix and is_dicom_file(f)))
                            and not is_ground_truth(f, p))
        elif p.exists():
            files.append(p)
        else:
            raise ReadError("input not found", path=p, hint="pass existing files or folders")
    seen: set[Path] = set()
    unique: list[Path] = []
    for f in files:  # a file given twice (directly and inside a folder) is predicted once
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    files = unique
    if not files:
        raise ReadError("no image files found in the inputs", path=", ".join(inputs),
                        hint="supported: PNG, JPEG, BMP, TIFF, DICOM")
    return files


def output_names(files: list[Path]) -> dict[Path, str]:
    """One distinct, file-name-safe output stem per input file.

    The stem is the file's own stem when no other input shares it; inputs that share a stem
    (``a.jpg a.png a.bmp sub/a.png``) are named by their path relative to those files' common
    folder, suffix included (``a_jpg``, ``a_png``, ``a_bmp``, ``sub_a_png``), so every input
    gets its own mask and RLE row. Every stem goes through :func:`engine.fsutil.safe_name`.
    """
    import os

    from engine.fsutil import safe_name

    files = list(dict.fromkeys(files))
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.stem, []).append(f)
    out: dict[Path, str] = {}
    used: set[str] = set()
    for f in files:
        group = groups[f.stem]
        if len(group) == 1:
            name = safe_name(f.stem)
        else:  # named by the path below the group's common folder, suffix included
            try:
                common = Path(os.path.commonpath([str(g.resolve().parent) for g in group]))
                rel = f.resolve().relative_to(common)
            except ValueError:  # different drives
                rel = f
            name = safe_name("_".join(rel.parts[:-1] + (f.stem, f.suffix.lstrip(".").lower())))
        base, k = name, 2
        while name.lower() in used:  # case-insensitive file systems too
            name, k = f"{base}-{k}", k + 1
        used.add(name.lower())
        out[f] = name
    return out


def cmd_predict(args) -> int:
    import time

    import numpy as np

    from engine.errors import WorkbenchError
    from engine.fsutil import safe_child
    from engine.io import write_mask_png

    pred = _predictor(args)
    post = _post_from_args(args, pred.card)
    files = _expand_inputs(args.inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rle_rows: list[tuple[str, np.ndarray]] = []
    failed: list[str] = []
    names = output_names(files)
    t0 = time.perf_counter()
    with tqdm_progress("predicting") as progress:
        for path, result in pred.predict_files(files, post=post, progress=progress):
            if isinstance(result, WorkbenchError):
                failed.append(str(result))
                continue
            stem = names[path]
            write_mask_png(safe_child(out, stem, ".png"), result.mask)
            if args.rle:
                rle_rows.append((stem, result.mask > 0))
    if args.rle:
        from engine.rle import write_kaggle_uns_submission, write_siim_submission

        (write_kaggle_uns_submission if args.rle_format == "kaggle" else write_siim_submission)(args.rle, rle_rows)
    dt = time.perf_counter() - t0
    n_ok = len(files) - len(failed)
    print(f"wrote {n_ok} masks to {out} with {pred.card.name} on {pred.device} "
          f"({dt:.2f} s, {dt / max(1, n_ok):.3f} s/image)"
          + (f"; RLE ({args.rle_format}) → {args.rle}" if args.rle else ""))
    for f in failed:
        print(f"  failed: {f}")
    return 1 if failed and not n_ok else 0


def _holdout_cases(card, ds, use: bool, cases_file: str | None) -> list[str] | None:
    from engine.errors import ConfigError

    if cases_file:
        ids = [line.strip() for line in Path(cases_file).read_text().splitlines() if line.strip()]
        missing = [i for i in ids if i not in ds]
        if missing:
            raise ConfigError(f"{len(missing)} case id(s) from {cases_file} are not in the dataset, e.g. {missing[0]}",
                              hint="check the file against `python -m engine info`")
        return ids
    if not use:
        return None
    training = card.training or {}
    val_ids = training.get("val_case_ids") or (training.get("split") or {}).get("val_case_ids")
    if not val_ids:
        raise ConfigError(f"model card '{card.name}' records no validation cases",
                          hint="drop --holdout, or pass --cases FILE")
    present = [i for i in val_ids if i in ds]
    if not present:
        raise ConfigError(f"none of the {len(val_ids)} validation cases of '{card.name}' are in this dataset",
                          hint="use --holdout only on the dataset the model was trained on")
    return present


def cmd_evaluate_classifier(args) -> int:
    """``evaluate DATASET --weights CLS`` for a presence classifier: presence metrics only."""
    from engine.classify import ClassifierPredictor, evaluate_classifier

    clf = ClassifierPredictor.from_weights(args.weights, device=args.device)
    ds = open_dataset_from_args(args)
    cases = _holdout_cases(clf.card, ds, args.holdout, args.cases)
    with tqdm_progress("classifying") as progress:
        m = evaluate_classifier(clf, ds, cases, threshold=args.gate_threshold, progress=progress)
    from engine.evaluation import training_overlap

    ov = training_overlap(clf.card, ds, list(m["scores"]))
    out = {"model": clf.card.name, "task": "classify", "dataset": str(ds.root),
           "cases": "holdout" if args.holdout else ("file " + args.cases if args.cases else "all labelled"),
           "n_cases": m["n"], "presence": {k: v for k, v in m.items() if k not in ("roc_curve", "pr_curve", "scores")},
           "training_overlap": {"n_cases": ov["n_cases"], "case_ids": ov["case_ids"], "basis": ov["basis"]},
           "scores": m["scores"]}
    write_json(args.json_out, out)
    print(f"{clf.card.name} on {ds.root.name}: ROC AUC {m['roc_auc']:.4f}, AP {m['average_precision']:.4f}, "
          f"sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f} at {m['threshold']:.2f} "
          f"over {m['n']} cases; JSON {args.json_out}")
    if ov["n_cases"]:
        print(f"  WARNING: {ov['n_cases']} of {m['n']} cases were TRAINING cases of {clf.card.name} (use --holdout)")
    return 0


def cmd_evaluate(args) -> int:
    from engine.checkpoint import folder_kind
    from engine.evaluation import EvalConfig, evaluate

    if folder_kind(args.weights) == "classify":
        return cmd_evaluate_classifier(args)
    pred = _predictor(args)
    ds = open_dataset_from_args(args)
    post = _post_from_args(args, pred.card)
    cfg = EvalConfig(empty_policy=args.empty_policy, tta=args.tta, post=post, surface=args.surface,
                     batch_size=args.batch_size, device=args.device, rand=args.rand, warping=args.warping)
    cases = _holdout_cases(pred.card, ds, args.holdout, args.cases)
    with tqdm_progress("evaluating") as progress:
        res = evaluate(pred, ds, cfg, case_ids=cases, progress=progress, use_cache=not args.no_cache)
    s = res.summary
    out = {
        "mean_dice": s["mean_dice"], "mean_iou": s["mean_iou"], "per_class": s["per_class"],
        "n_cases": s["n_cases"], "empty_policy": s["empty_policy"], "empty_policy_rule": s["empty_policy_rule"],
        "dice_gt_empty": s["dice_gt_empty"], "dice_gt_nonempty": s["dice_gt_nonempty"],
        "presence": {k: v for k, v in s["presence"].items() if k not in ("roc_curve", "pr_curve")},
        "training_overlap": {"n_cases": s["training_overlap"]["n_cases"], "case_ids": s["training_overlap"]["case_ids"],
                             "basis": s["training_overlap"]["basis"]},
        "model": pred.card.name, "dataset": str(ds.root), "cases": "holdout" if args.holdout else
        ("file " + args.cases if args.cases else "all labelled"),
        "settings": s["settings"], "timing": s["timing"], "n_failed": s["n_failed"], "failed": s["failed"],
        "results_folder": str(res.folder),
    }
    if s.get("gate"):
        pm = s["presence"]
        out["gate"] = {"weights": s["gate"]["weights"], "threshold": float(s["gate"]["threshold"])}
        out["gate_presence"] = {"auc": pm.get("roc_auc"), "ap": pm.get("average_precision"),
                                "sensitivity": pm.get("sensitivity"), "specificity": pm.get("specificity"),
                                "ppv": pm.get("ppv"), "npv": pm.get("npv"), "n_positive": pm.get("n_positive"),
                                "n_negative": pm.get("n_negative")}
        out["ungated"] = s["ungated"]
    for k in ("mean_rand_error", "mean_warping_error"):
        if k in s:
            out[k] = s[k]
    write_json(args.json_out, out)
    csv_path = Path(args.json_out).with_suffix(".csv")
    res.per_image.to_csv(csv_path, index=False)
    pc = ", ".join(f"{k} {v:.4f}" for k, v in s["per_class"].items())
    print(f"{pred.card.name} on {ds.root.name}: mean Dice {s['mean_dice']:.4f} ({pc}) over {s['n_cases']} cases, "
          f"empty policy {s['empty_policy']}; JSON {args.json_out}, per-image CSV {csv_path}")
    if s.get("gate"):
        print(f"  gated by {s['gate']['weights']} at {s['gate']['threshold']:.2f}: without the gate mean Dice "
              f"{s['ungated']['mean_dice']:.4f}; presence AUC {s['presence'].get('roc_auc', float('nan')):.3f}")
    n_train = s["training_overlap"]["n_cases"]
    if n_train:
        print(f"  WARNING: {n_train} of {s['n_cases']} evaluated cases were TRAINING cases of {pred.card.name}; "
              f"this is not a held-out figure (use --holdout)")
    return 0


def cmd_weights_list(args) -> int:
    from engine.checkpoint import list_weights

    items = list_weights()
    write_json(args.json_out, items)
    if not items:
        print("no weights found (looked in weights/ and <workspace>/models)")
        return 0
    for w in items:
        if "error" in w:
            print(f"{w['name']:<24} ERROR {w['error']}")
            continue
        m = w.get("metrics") or {}
        dice = m.get("val_dice", m.get("val_mean_dice"))
        per = m.get("per_class_dice") or m.get("val_per_class_dice") or {}
        metric = (f"val Dice {dice:.3f}" if isinstance(dice, (int, float)) else "no metrics") + (
            " (" + ", ".join(f"{k} {v:.3f}" for k, v in per.items() if isinstance(v, (int, float))) + ")"
            if per else "")
        print(f"{w['name']:<24} {w['origin']:<13} {w['arch']:<14} classes {'/'.join(w['classes']):<28} "
              f"{w['size_mb']:>6.2f} MB  {metric}" + ("  [synthetic]" if w.get("synthetic") else ""))
    return 0


def cmd_weights_show(args) -> int:
    from engine.checkpoint import (
        WEIGHTS_FILE,
        ClassifierCard,
        card_markdown,
        classifier_markdown,
        folder_kind,
        read_card,
        resolve_weights,
    )

    kind = folder_kind(args.name)
    folder = resolve_weights(args.name, kind=kind)
    card = read_card(folder, kind=kind)
    if args.markdown:
        size = (folder / WEIGHTS_FILE).stat().st_size
        # read_card(kind="classify") reads a ClassifierCard, any other kind a ModelCard
        print(classifier_markdown(card, size) if isinstance(card, ClassifierCard) else card_markdown(card, size))
    else:
        print_json(card.to_dict())
    return 0


def cmd_weights_fingerprint(args) -> int:
    from engine.checkpoint import folder_kind, read_card, resolve_weights, write_card
    from engine.domain_profile import profile_dataset
    from engine.evaluation import training_cases

    kind = folder_kind(args.name)
    folder = resolve_weights(args.name, kind=kind)
    card = read_card(folder, kind=kind)
    args.dataset = args.data
    ds = open_dataset_from_args(args)
    train = training_cases(card, ds)
    if train is None:
        raise ConfigError(f"{ds.root} is not the training data recorded in the card of {card.name}",
                          hint=f"pass the dataset the card names: {(card.training or {}).get('data')}")
    ids = [c.case_id for c in ds.cases if c.case_id in train]
    hint = [m for m in (args.modality or "").split(",") if m.strip()]
    fp = profile_dataset(ds, ids, max_images=args.max_images, modality_hint=hint or None)
    write_card(folder, card.replace(fingerprint=fp))
    print(f"fingerprint of {fp.get('n_images', 0)} training images written to the card of {card.name}")
    return 0


def cmd_weights_set_gate(args) -> int:
    from engine.checkpoint import GateConfig, load_checkpoint, read_card, resolve_weights, write_card

    folder = resolve_weights(args.name)
    card = read_card(folder)
    gate = None
    if args.gate:
        _, ccard = load_checkpoint(args.gate, kind="classify")  # must exist and load
        gate = GateConfig(ccard.name, args.threshold)
    write_card(folder, card.replace(gate=gate))
    print(f"{card.name}: " + (f"gated by {gate.weights} (threshold "
                              f"{gate.threshold if gate.threshold is not None else 'of the classifier'})"
                              if gate else "no gate"))
    return 0


def cmd_tune_post(args) -> int:
    import numpy as np

    from engine.checkpoint import CARD_FILE, resolve_weights
    from engine.errors import WorkbenchError
    from engine.evaluation import _map_probs, class_mapping
    from engine.fsutil import atomic_write_json
    from engine.postprocess import TuneGrid, tune_postprocess

    pred = _predictor(args)
    ds = open_dataset_from_args(args)
    cases = _holdout_cases(pred.card, ds, args.holdout, None) or [c.case_id for c in ds.labelled_cases()]
    if len(cases) > args.max_images:
        step = len(cases) / args.max_images
        cases = [cases[int(i * step)] for i in range(args.max_images)]
    lut = class_mapping(pred.card.labels, ds.labels)
    probs, gts, pres = [], [], []
    with tqdm_progress("predicting") as progress:
        for case, result in pred.predict_cases(ds, cases, progress=progress):
            if isinstance(result, WorkbenchError):
                continue
            probs.append(_map_probs(result.probs, lut, ds.num_classes).astype(np.float16))
            gts.append(ds.load_mask(case))
            pres.append(result.gate if pred.gate is not None else result.presence)
    gated = pred.gate is not None
    grid = TuneGrid()
    if gated:  # the gate's threshold is searched together with the segmenter's threshold and min area
        grid = grid.replace(presence_thresholds=tuple(sorted({*grid.presence_thresholds, 0.1, 0.2, 0.8, 0.9,
                                                               round(float(pred.gate_threshold), 3)})))
    with tqdm_progress("searching") as progress:
        res = tune_postprocess(probs, gts, pres if (pred.card.spec.presence_head or gated) else None, grid,
                               empty_policy=args.empty_policy, progress=progress)
    out = {"best": res.best.to_dict(), "best_score": res.best_score, "baseline_score": res.baseline_score,
           "n_images": res.n_images, "empty_policy": args.empty_policy, "table": res.table}
    if gated:
        out["gate"] = {"weights": pred.gate.card.name, "threshold": res.best.presence_threshold,
                       "note": "presence_threshold in this search is the gate classifier's threshold "
                               "(None = no gate wins)"}
    write_json(args.json_out, out)
    print(f"best mean Dice {res.best_score:.4f} (default settings {res.baseline_score:.4f}) on {res.n_images} images:")
    print("  " + json.dumps(res.best.to_dict()))
    if args.write_card:
        from engine.checkpoint import GateConfig

        folder = resolve_weights(args.weights)
        card = pred.card.replace(postprocess=res.best)
        if gated:  # the searched presence threshold belongs to the gate, not to a presence head
            t = res.best.presence_threshold
            card = card.replace(
                postprocess=res.best.replace(presence_threshold=pred.card.postprocess.presence_threshold),
                gate=GateConfig(pred.gate.card.name, t) if t is not None else None)
        atomic_write_json(folder / CARD_FILE, card.to_dict())
        print(f"  written as the default post-processing of {folder / CARD_FILE}")
    return 0


def cmd_weights_publish(args) -> int:
    from datetime import datetime, timezone

    from engine.checkpoint import CLASSIFIER_CARD, WEIGHTS_FILE, add_evaluation, folder_kind, publish, read_card
    from engine.datasets import open_dataset
    from engine.evaluation import EvalConfig, evaluate
    from engine.inference import Predictor

    specs = [_eval_spec(spec) for spec in args.eval]  # checked before anything is written
    src = Path(args.run)
    best = src / "best" if ((src / "best" / "card.json").exists() or (src / "best" / CLASSIFIER_CARD).exists()) else src
    if folder_kind(best) == "classify":
        return _publish_classifier(args, best, specs)
    extra = {}
    card0 = read_card(best)
    split = (card0.training or {}).get("split") or {}
    if not split.get("val_case_ids") and (card0.training or {}).get("data"):
        extra["split"] = {**split, "val_case_ids": _recompute_val_ids(card0)}
    dest = publish(best, args.dest, name=args.name, command=args.command, extra_training=extra,
                   dtype="float16" if args.float16 else None)
    opts = _eval_dataset_options(args)
    pred = Predictor.from_weights(dest, device="cpu") if specs else None
    for eid, data, mode in specs:
        assert pred is not None  # loaded whenever there are specs
        ds = open_dataset(data, options=opts or None)
        cases = _holdout_cases(pred.card, ds, mode == "holdout", None)
        for policy in ("kaggle", "exclude"):
            with tqdm_progress(f"evaluating {eid} ({policy})") as progress:
                res = evaluate(pred, ds, EvalConfig(empty_policy=policy, sweep=False, save_predictions=False),
                               case_ids=cases, progress=progress, use_cache=False)
            s = res.summary
            entry = {"id": f"{eid}-{policy}", "dataset": str(ds.root), "cases": "holdout (validation fold)"
                     if mode == "holdout" else "all labelled", "n_cases": s["n_cases"], "empty_policy": policy,
                     "resolution": "original image size", "mean_dice": s["mean_dice"], "per_class": s["per_class"],
                     "mean_iou": s["mean_iou"], "dice_gt_nonempty": s["dice_gt_nonempty"],
                     "presence_auc": s["presence"].get("roc_auc"),
                     "n_training_cases": s["training_overlap"]["n_cases"],
                     "gate": s.get("gate"), "ungated_mean_dice": (s.get("ungated") or {}).get("mean_dice"),
                     "command": f"python -m engine evaluate {data} --weights {dest.name} --json OUT.json "
                                f"--empty-policy {policy}" + (" --holdout" if mode == "holdout" else "")
                                + (f" --labels {args.eval_labels}" if args.eval_labels else "")
                                + (f" --group-regex '{args.group_regex}'" if args.group_regex else ""),
                     "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
            add_evaluation(dest, entry)
            print(f"{eid} [{policy}]: mean Dice {s['mean_dice']:.4f} "
                  f"({', '.join(f'{k} {v:.4f}' for k, v in s['per_class'].items())}) over {s['n_cases']} cases")
    print(f"published {dest} ({(dest / WEIGHTS_FILE).stat().st_size / 1e6:.2f} MB)")
    return 0


def _eval_dataset_options(args) -> dict[str, Any]:
    """Dataset options for ``weights publish --eval`` (``--eval-labels``, ``--group-regex``)."""
    opts: dict[str, Any] = {}
    if args.eval_labels:
        opts["label_names"] = [s.strip() for s in args.eval_labels.split(",") if s.strip()]
    if args.group_regex:
        opts["group_regex"] = args.group_regex
    return opts


def _publish_classifier(args, best: Path, specs: list[tuple[str, str, str]]) -> int:
    """``weights publish`` of a presence classifier: copy, then record presence metrics per ``--eval``."""
    from datetime import datetime, timezone

    from engine.checkpoint import WEIGHTS_FILE, add_evaluation, publish
    from engine.classify import ClassifierPredictor, evaluate_classifier
    from engine.datasets import open_dataset

    dest = publish(best, args.dest, name=args.name, command=args.command,
                   dtype="float16" if args.float16 else None)
    opts = _eval_dataset_options(args)
    clf = ClassifierPredictor.from_weights(dest, device="cpu") if specs else None
    for eid, data, mode in specs:
        assert clf is not None  # loaded whenever there are specs
        ds = open_dataset(data, options=opts or None)
        cases = _holdout_cases(clf.card, ds, mode == "holdout", None)
        with tqdm_progress(f"evaluating {eid}") as progress:
            m = evaluate_classifier(clf, ds, cases, progress=progress)
        entry = {"id": eid, "dataset": str(ds.root), "cases": "holdout (validation fold)" if mode == "holdout"
                 else "all labelled", "n_cases": m["n"], "n_positive": m["n_positive"], "n_negative": m["n_negative"],
                 "threshold": m["threshold"], **{k: m[k] for k in ("roc_auc", "average_precision", "sensitivity",
                                                                   "specificity", "ppv", "npv", "accuracy")},
                 "command": f"python -m engine evaluate {data} --weights {dest.name} --json OUT.json"
                            + (" --holdout" if mode == "holdout" else ""),
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        add_evaluation(dest, entry)
        print(f"{eid}: ROC AUC {m['roc_auc']:.4f}, AP {m['average_precision']:.4f}, sensitivity "
              f"{m['sensitivity']:.3f}, specificity {m['specificity']:.3f} over {m['n']} cases")
    print(f"published {dest} ({(dest / WEIGHTS_FILE).stat().st_size / 1e6:.2f} MB)")
    return 0


def _eval_spec(spec: str) -> tuple[str, str, str]:
    """``ID=DATASET[:holdout]`` → (id, dataset, "holdout" or "")."""
    eid, sep, rest = spec.partition("=")
    mode = ""
    if rest.endswith(":holdout"):
        rest, mode = rest[: -len(":holdout")], "holdout"
    if not sep or not eid.strip() or not rest.strip():
        raise ConfigError(f"--eval {spec!r}: expected ID=DATASET[:holdout]",
                          hint="e.g. --eval montgomery-holdout=../shared/data/montgomery-lung:holdout")
    return eid.strip(), rest, mode


def _recompute_val_ids(card) -> list[str]:
    """Validation case ids of a run whose card predates recording them: the training split
    (:func:`engine.training.prepare.split_cases`) recomputed from the card's split settings."""
    from types import SimpleNamespace

    from engine.datasets import open_dataset
    from engine.splits import SplitSpec
    from engine.training.prepare import split_cases

    tr = card.training
    split = tr.get("split") or {}
    ds = open_dataset(tr["data"], tr.get("layout"), options=tr.get("dataset_options") or None)
    spec = SplitSpec(k=int(split.get("k", 5)), seed=int(split.get("seed", 0)),
                     val_fold=int(split.get("val_fold", 0)), stratify=bool(split.get("stratify", True)))
    _, val, _ = split_cases(SimpleNamespace(folds_file=None, split=spec), ds.labelled_cases())
    ids = [c.case_id for c in val]
    if len(ids) != split.get("n_val", len(ids)):
        raise ConfigError(f"recomputed {len(ids)} validation cases but the run recorded {split.get('n_val')}",
                          hint="the dataset changed since training; evaluate without --holdout")
    return ids
