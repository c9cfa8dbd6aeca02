"""``impact`` (what moved between two models, on the original and the corrected ground truth) and
``retrain`` (fine-tune a model on the current corrected dataset, keeping its held-out cases)."""

from __future__ import annotations

from engine.cli._store import add_store_option, open_store
from engine.cli.common import add_dataset_options, open_dataset_from_args, print_json, tqdm_progress


def register(sub) -> None:
    p = sub.add_parser("impact",
                       help="before/after metrics of two models on the same held-out cases, scored on the original "
                            "and on the corrected ground truth, with per-case deltas, movers and the label-noise "
                            "ceiling before/after the review")
    p.add_argument("dataset", help="the reviewed dataset folder")
    p.add_argument("--before", required=True, metavar="A", help="model before (name or folder)")
    p.add_argument("--after", required=True, metavar="B", help="model after, e.g. fine-tuned on corrections")
    p.add_argument("--json", dest="json_out", metavar="F", help="write the full report to this JSON file")
    p.add_argument("--cases", default="heldout",
                   help="'heldout' (the before model's validation cases, default), 'all' labelled cases, or a "
                        "comma-separated list of case ids")
    p.add_argument("--threshold", type=float, default=0.05, help="|Dice change| that makes a case a mover")
    p.add_argument("--empty-policy", choices=["kaggle", "exclude"], default="kaggle")
    p.add_argument("--device", default="auto")
    p.add_argument("--top", type=int, default=15, help="movers listed on the terminal")
    add_store_option(p)
    add_dataset_options(p)
    p.set_defaults(func=cmd_impact)

    r = sub.add_parser("retrain",
                       help="fine-tune a model on the current corrected dataset (decisions + latest mask versions) "
                            "with the same held-out cases; runs in the foreground and exports the model")
    r.add_argument("dataset", help="the reviewed dataset folder")
    r.add_argument("--from", dest="parent", required=True, metavar="MODEL", help="the model to fine-tune")
    r.add_argument("--name", help="new model name (default <parent>-ft-<digest>)")
    r.add_argument("--epochs", type=int, default=5)
    r.add_argument("--lr", type=float, default=None, help="default: the parent's learning rate / 10")
    r.add_argument("--device", default=None, help="default: the parent's training device setting")
    r.add_argument("--background", action="store_true", help="start a background job and print its run folder")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    add_store_option(r)
    add_dataset_options(r)
    r.set_defaults(func=cmd_retrain)


def cmd_impact(args) -> int:
    from engine.fsutil import atomic_write_json
    from engine.impact import impact_markdown, impact_report

    ds = open_dataset_from_args(args)
    store = open_store(args, ds)
    cases = None
    if args.cases == "all":
        cases = [c.case_id for c in ds.cases if c.labelled]
    elif args.cases != "heldout":
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    try:
        with tqdm_progress("impact") as progress:
            rep = impact_report(ds, args.before, args.after, store, cases=cases, mover_threshold=args.threshold,
                                empty_policy=args.empty_policy, device=args.device, progress=progress)
    finally:
        store.close()
    if args.json_out:
        atomic_write_json(args.json_out, rep, indent=1)
    print(impact_markdown(rep, top=args.top))
    if args.json_out:
        print(f"  full report: {args.json_out}")
    return 0


def cmd_retrain(args) -> int:
    from engine.retrain import plan_retrain, start_retrain

    ds = open_dataset_from_args(args)
    store = open_store(args, ds)
    extra = {"device": args.device} if args.device else {}
    try:
        if args.background:
            job, plan = start_retrain(ds, store, args.parent, name=args.name, epochs=args.epochs, lr=args.lr, **extra)
        else:
            plan = plan_retrain(ds, store, args.parent, name=args.name, epochs=args.epochs, lr=args.lr, **extra)
    finally:
        store.close()
    if args.background:
        out = {"run_dir": str(job.run_dir), "pid": job.pid, "name": plan.config.name, "lineage": plan.lineage}
        print_json(out) if args.json else print(f"started {plan.config.name}: {job.run_dir}")
        return 0
    from engine.training import train

    with tqdm_progress("fine-tuning") as progress:
        res = train(plan.config, progress=progress)
    out = {"name": plan.config.name, "state": res.state, "best_metric": res.best_metric,
           "exported": str(res.exported) if res.exported else None, "run_dir": str(res.run_dir),
           "lineage": plan.lineage}
    if args.json:
        print_json(out)
    else:
        print(f"{plan.config.name}: {res.state}, best {res.metric} {res.best_metric:.4f}; exported to "
              f"{out['exported']}\n  parent {plan.lineage['parent_model']}, "
              f"manifest {plan.lineage['manifest_digest'][:12]} "
              f"({plan.lineage['n_decisions']} decisions, {plan.lineage['n_mask_versions']} corrected masks)")
    return 0
