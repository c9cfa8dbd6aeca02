"""Label-error finder commands: ``suspects`` (rank the masks most likely wrong) and ``crossfit``
(train the k fold models that give honest, out-of-fold probabilities; the background job).

Argument parsing only; the work is :func:`engine.curation.suspects.find_suspects` (the same
function the pages call) and :mod:`engine.curation.crossfit`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.cli.common import STARTED, add_dataset_options, open_dataset_from_args, tqdm_progress, write_json


def _size(text: str) -> tuple[int, int]:
    import argparse

    try:
        parts = [int(v) for v in text.lower().replace("×", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW such as 128 or 128x160, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 16:
        raise argparse.ArgumentTypeError(f"expected N or HxW of at least 16 px, got {text!r}")
    return parts[0], parts[1]


def _add_crossfit_options(p) -> None:
    g = p.add_argument_group("cross-fitting (honest out-of-fold probabilities)")
    g.add_argument("--folds", type=int, metavar="K",
                   help="cross-fit K fold models of the first --weights model's architecture (its preprocessing "
                        "and training augmentation; without --weights: a small classic U-Net) on the dataset's "
                        "grouped folds, cached per fold and dataset digest; every case is then judged by the one "
                        "model that did not train on it")
    g.add_argument("--epochs", type=int, help="epochs per fold model (default: the card's, else 20)")
    g.add_argument("--size", type=_size, metavar="N|HxW", help="fold models' input size (default: the card's)")
    g.add_argument("--arch", help="cross-fit this architecture instead (e.g. unet_classic; with --base-channels)")
    g.add_argument("--base-channels", type=int, help="width of the cross-fit architecture (default 8 for --arch)")
    g.add_argument("--seed", type=int, default=0, help="fold and training seed (default 0)")
    g.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N, mps")


def register(sub) -> None:
    p = sub.add_parser(
        "suspects", help="rank the ground-truth masks most likely wrong (type, score, reasons, disagreement map)",
        description="Judge every labelled case with a model that did not train on it (out-of-fold cross-fitting "
                    "and/or shipped models whose card shows the case was held out), combine per-pixel confident "
                    "learning, region, boundary, shift, empty-mask and fold-disagreement evidence with a model "
                    "calibrated on planted corruptions of the dataset's own cases, and list the cases most "
                    "suspicious first. The JSON lists EVERY labelled case; --top only shortens the printed list.")
    p.add_argument("dataset", help="dataset folder or manifest JSON")
    p.add_argument("--weights", action="append", default=[], metavar="NAME",
                   help="a model to judge with (repeatable; name from `weights list` or a folder): honest for the "
                        "cases its card shows it did not train on; others are marked 'not honest' unless --folds")
    p.add_argument("--json", dest="json_out", required=True, metavar="F",
                   help="write {\"cases\": [{\"case_id\", \"score\", \"type\", \"reasons\", \"provenance\", ...}]} "
                        "(every labelled case, most suspicious first) to F ('-' = stdout)")
    p.add_argument("--top", type=int, default=20, metavar="N",
                   help="print the N most suspicious cases (default 20; the JSON still lists every case)")
    p.add_argument("--tta", choices=["none", "flip"], default="none",
                   help="test-time augmentation: none (default: one pass per model) or flip (a horizontal flip, "
                        "only for models whose card shows they trained with it; doubles the prediction cost)")
    p.add_argument("--prior", type=float, default=0.1,
                   help="assumed fraction of wrong labels: sets the scale of the score, not the order (default 0.1)")
    p.add_argument("--no-cache", action="store_true", help="recompute probabilities, evidence and calibration")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_crossfit_options(p)
    add_dataset_options(p)
    p.set_defaults(func=cmd_suspects)

    p = sub.add_parser(
        "crossfit", help="train the k fold models the label-error finder judges with (honest out-of-fold "
                         "probabilities); `suspects --folds K` runs it too",
        description="Train K models of one architecture on the dataset's grouped folds (each leaves one fold out) "
                    "and cache them in the dataset's workspace folder. With --status-dir it keeps a status.json "
                    "for engine.jobs.job_status (the page's background job).")
    p.add_argument("dataset", help="dataset folder or manifest JSON")
    p.add_argument("--weights", action="append", default=[], metavar="NAME",
                   help="cross-fit this model's architecture, preprocessing and augmentation (first one used)")
    p.add_argument("--config", help="a CrossFitConfig JSON (engine.curation.crossfit) instead of the flags")
    p.add_argument("--status-dir", help="keep status.json there (background job)")
    p.add_argument("--options", help="dataset options as JSON (what the background job is given)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_crossfit_options(p)
    add_dataset_options(p)
    p.set_defaults(func=cmd_crossfit)


def _crossfit_config(args, default_k: int | None):
    """The :class:`CrossFitConfig` the flags ask for (None when no cross-fit is wanted)."""
    from engine.curation.crossfit import CrossFitConfig
    from engine.models import ModelSpec

    if getattr(args, "config", None):
        cfg = CrossFitConfig.load(args.config)
        return cfg.replace(k=args.folds) if args.folds else cfg
    k = args.folds or default_k
    if not k:
        return None
    if args.arch:
        spec = ModelSpec(arch=args.arch, base_channels=args.base_channels or 8)
        cfg = CrossFitConfig(k=k, seed=args.seed, model=spec, device=args.device)
    elif args.weights:
        from engine.checkpoint import read_card, resolve_weights

        card = read_card(resolve_weights(args.weights[0]))
        cfg = CrossFitConfig.from_card(card, k, epochs=args.epochs, size=args.size, seed=args.seed, device=args.device)
    else:
        cfg = CrossFitConfig(k=k, seed=args.seed, device=args.device)
    changes = {}
    if args.epochs:
        changes["epochs"] = args.epochs
    if args.size:
        changes["preprocess"] = cfg.preprocess.replace(size=tuple(args.size))
    return cfg.replace(**changes) if changes else cfg


def cmd_suspects(args) -> int:
    from engine.curation.crossfit import honest_probabilities
    from engine.curation.suspects import SuspectConfig, find_suspects
    from engine.errors import ConfigError

    if args.top < 0:
        raise ConfigError(f"--top must be >= 0, got {args.top}")
    if args.folds is not None and args.folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {args.folds}", hint="use e.g. --folds 5")
    if not args.weights and not args.folds:
        raise ConfigError("no model to judge the labels with",
                          hint="pass --weights NAME (a shipped model, see `weights list`) and/or --folds K "
                               "(cross-fit K models on this dataset)")
    cfg = SuspectConfig(prior=args.prior)
    ds = open_dataset_from_args(args)
    cf = _crossfit_config(args, None)
    with tqdm_progress("honest probabilities", disable=args.quiet or None) as progress:
        probs = honest_probabilities(ds, args.weights, crossfit_config=cf, tta=args.tta, device=args.device,
                                     use_cache=not args.no_cache, progress=progress)
    with tqdm_progress("judging labels", disable=args.quiet or None) as progress:
        rep = find_suspects(ds, probs, cfg, use_cache=not args.no_cache, progress=progress)
    rep.stats["seconds"]["command"] = round(__import__("time").perf_counter() - STARTED, 3)
    data = rep.to_dict()
    if args.json_out == "-":
        print(json.dumps(data, indent=2, default=str))
        return 0
    write_json(args.json_out, data)
    st = rep.stats
    lines = [f"dataset     {ds.root} ({ds.layout}, {st['n_cases']} labelled cases judged)",
             f"judged by   {', '.join(s['name'] for s in probs.describe()['sources'])}",
             f"evidence    {st['n_computed']} computed, {st['n_cached']} from the cache; "
             f"{st['n_not_honest']} case(s) only judged by a model that trained on them (not honest)",
             "types       " + ", ".join(f"{k} {v}" for k, v in st["by_type"].items() if v)]
    if probs.crossfit is not None and probs.crossfit.stale_masks:
        lines.append(f"note        {len(probs.crossfit.stale_masks)} mask(s) changed since the fold models "
                     f"trained (they are still judged by the model that never saw them)")
    if args.top:
        lines.append(f"most suspicious (of {len(rep.cases)}):")
        for s in rep.cases[:args.top]:
            why = s.reasons[0] if s.reasons else ""
            lines.append(f"  {s.rank:>4}. {s.case_id:<16} {s.score:6.3f}  {s.type:<15} {why}")
    lines.append(f"report      {args.json_out} (every case)")
    print("\n".join(lines))
    return 0


def cmd_crossfit(args) -> int:
    from engine.curation.crossfit import CrossFitConfig, run_crossfit

    if args.options:
        try:
            extra = json.loads(args.options)
        except ValueError:
            from engine.errors import ConfigError

            raise ConfigError("--options is not JSON", hint='pass e.g. {"label_names": ["lung"]}') from None
    else:
        extra = {}
    if extra:
        from engine.datasets import open_dataset

        ds = open_dataset(args.dataset, getattr(args, "layout", None), options=extra)
    else:
        ds = open_dataset_from_args(args)
    cfg = _crossfit_config(args, 5) or CrossFitConfig()
    status = Path(args.status_dir) if args.status_dir else None
    with tqdm_progress(f"cross-fitting {cfg.k} folds", disable=args.quiet or None) as progress:
        cf = run_crossfit(ds, cfg, progress=progress, status_dir=status)
    if not args.quiet:
        print(f"cross-fit   {cfg.k} fold models of {cfg.describe()} in {cf.folder}")
        print("seconds     " + ", ".join(f"{s:.0f}" for s in cf.seconds))
    sys.stdout.flush()
    return 0
