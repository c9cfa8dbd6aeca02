"""``python -m engine train``: argument parsing only; the work is :func:`engine.training.train`.

Precedence: built-in defaults < ``--config FILE`` < flags given on the command line.
``--resume RUN_DIR`` starts from the run's own ``config.json`` (flags such as ``--epochs`` still
apply). ``--print-config`` prints the resulting JSON and exits without reading any data.
Under ``torchrun`` only rank 0 prints.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

from engine.cli.common import add_dataset_options, dataset_options, tqdm_progress


def register(sub) -> None:
    p = sub.add_parser("train", help="train a segmentation model (or, with --task classify, a presence classifier)",
                       description="Train on a dataset folder or a cleaned manifest. Writes a run folder with "
                                   "config.json, history.csv, status.json, best/ and last/ checkpoints and previews.")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset folder or cleaned-manifest JSON")
    g.add_argument("--manifest", dest="data_manifest", help="alias of --data for a manifest JSON")
    add_dataset_options(g)
    g.add_argument("--folds", type=int, help="number of grouped, stratified folds (default 5)")
    g.add_argument("--val-fold", type=int, help="which fold validates (default 0)")
    g.add_argument("--split-seed", type=int, help="seed of the fold assignment (default 0)")
    g.add_argument("--folds-file", help="explicit folds JSON (engine.splits.save_folds) instead of --folds")
    g.add_argument("--cache-preprocessed", action="store_true", default=None,
                   help="also cache preprocessed cases on disk in the dataset's workspace folder")

    g = p.add_argument_group("model")
    g.add_argument("--task", choices=["segment", "classify"],
                   help="segment (default) or classify (presence classifier)")
    g.add_argument("--arch", help="architecture (e.g. unet_classic, unet, cenet, dilated_fcn, doubleunet)")
    g.add_argument("--encoder", help="smp encoder, e.g. resnet34 or tu-<timm model>")
    g.add_argument("--base-channels", type=int, help="width of custom architectures (e.g. 16)")
    g.add_argument("--encoder-depth", type=int, help="encoder depth / number of U-Net levels")
    g.add_argument("--dropout", type=float, help="architecture dropout")
    g.add_argument("--classes", help="'auto' (from the dataset's labels, default) or K including background")
    g.add_argument("--in-channels", type=int, help="input channels (1 grayscale, 3 RGB)")
    g.add_argument("--presence-head", action="store_true", default=None, help="add an image-level presence head")
    g.add_argument("--pretrained", help="LOCAL encoder weights file (nothing is downloaded)")
    g.add_argument("--classifier", help="classifier backbone for --task classify (densenet121, resnet18, ...)")

    g = p.add_argument_group("preprocessing and augmentation")
    g.add_argument("--size", help="model input size: N or HxW (default 256)")
    g.add_argument("--resize-policy", choices=["resize", "letterbox", "pad"])
    g.add_argument("--median-filter", type=int, help="median de-speckling kernel (odd, 0 = off)")
    g.add_argument("--normalize", choices=["none", "minmax", "meanstd", "standardize"],
                   help="intensity normalisation stored in the card; standardize = per image zero mean, unit std")
    g.add_argument("--clahe", type=float, help="CLAHE clip limit applied before --normalize (0 = off, e.g. 2.0)")
    g.add_argument("--patch-size", help="train on random HxW patches (needs --resize-policy pad)")
    g.add_argument("--augment", help="augmentation preset: none, light, ultrasound, xray, xray-strong, em")
    g.add_argument("--positive-only", action="store_true", default=None,
                   help="train the segmenter on images with a mask only (pair it with a presence-classifier gate)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", help="bce_dice (default), dice, bce, focal, tversky, mse, border_ce")
    g.add_argument("--loss-option", action="append", metavar="KEY=VALUE",
                   help="loss option (JSON value), repeatable, e.g. --loss-option w0=10")
    g.add_argument("--presence-weight", type=float, help="presence-head loss weight (default 0.5)")
    g.add_argument("--optimizer", choices=["adam", "adamw"])
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--scheduler", choices=["plateau", "cosine", "onecycle", "none"])
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per process under torchrun")
    g.add_argument("--num-workers", type=int, help="DataLoader workers (default: automatic)")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    g.add_argument("--amp", choices=["off", "auto", "bf16", "fp16"], help="mixed precision on CUDA (default auto)")
    g.add_argument("--no-channels-last", action="store_true", default=None, help="keep NCHW memory format on CUDA")
    g.add_argument("--grad-clip", type=float, help="max gradient norm (0 = off)")
    g.add_argument("--swa", action="store_true", default=None, help="stochastic weight averaging")
    g.add_argument("--swa-start", type=float, help="SWA start as a fraction of the epochs (default 0.75)")
    g.add_argument("--seed", type=int)
    g.add_argument("--val-empty-policy", choices=["kaggle", "exclude"])
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")

    g = p.add_argument_group("output")
    g.add_argument("--name", help="model name (export folder and card)")
    g.add_argument("--out", help="run folder (default <workspace>/runs/<name>-<time>)")
    g.add_argument("--export", action="store_true", default=None,
                   help="export the best model to <workspace>/models/<name> (app model picker); a name a model "
                        "already has is refused unless --replace")
    g.add_argument("--replace", action="store_true", default=None,
                   help="with --export: replace the workspace model of the same name")
    g.add_argument("--description")
    g.add_argument("--license")
    g.add_argument("--attribution")
    g.add_argument("--preview-count", type=int, help="validation images drawn each epoch (default 4)")
    g.add_argument("--max-train-batches", type=int)
    g.add_argument("--max-val-batches", type=int)

    g = p.add_argument_group("run control")
    g.add_argument("--config", help="JSON config file (flags override it)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its resume.pt (e.g. with more --epochs)")
    g.add_argument("--print-config", action="store_true", help="print the JSON config and exit")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _size(text: str, flag: str) -> tuple[int, int]:
    from engine.errors import ConfigError

    try:
        parts = [int(v) for v in text.lower().replace("×", "x").split("x")]
    except ValueError:
        raise ConfigError(f"{flag} must be N or HxW, got {text!r}", hint=f"e.g. {flag} 256 or {flag} 256x320") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ConfigError(f"{flag} must be N or HxW, got {text!r}")
    return parts[0], parts[1]


def _loss_options(items: list[str] | None) -> dict[str, Any]:
    from engine.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--loss-option needs KEY=VALUE, got {item!r}", hint="e.g. --loss-option w0=10")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def build_config(args) -> Any:
    """TrainConfig from defaults, ``--config``/``--resume`` and the flags given."""
    from engine.augment import AugmentConfig
    from engine.errors import ConfigError
    from engine.training import TrainConfig, load_run_config

    if args.resume:
        base = load_run_config(args.resume)
    elif args.config:
        base = TrainConfig.load(args.config)
    else:
        base = TrainConfig()
    d = base.to_dict()
    data = args.data or args.data_manifest
    if data:
        d["data"] = data
    opts = dataset_options(args)
    if opts:
        d["dataset_options"] = {**(d.get("dataset_options") or {}), **opts}
    if args.layout:
        d["layout"] = args.layout
    split = d["split"]
    for flag, key in (("folds", "k"), ("val_fold", "val_fold"), ("split_seed", "seed")):
        if getattr(args, flag) is not None:
            split[key] = getattr(args, flag)
    model = d["model"]
    if args.arch:
        if args.arch.lower() != str(model.get("arch")).lower():
            model = {"arch": args.arch, "in_channels": model.get("in_channels", 1),
                     "presence_head": model.get("presence_head", False)}
        d["model"] = model
    for flag, key in (("encoder", "encoder"), ("base_channels", "base_channels"), ("encoder_depth", "encoder_depth"),
                      ("dropout", "dropout"), ("pretrained", "pretrained")):
        if getattr(args, flag) is not None:
            model[key] = getattr(args, flag)
    if args.presence_head:
        model["presence_head"] = True
    if args.classes is not None:
        if args.classes.strip().lower() == "auto":
            d["auto_classes"] = True
        else:
            try:
                model["num_classes"] = int(args.classes)
            except ValueError:
                raise ConfigError(f"--classes must be 'auto' or a number, got {args.classes!r}") from None
            d["auto_classes"] = False
    if args.in_channels is not None:
        model["in_channels"] = args.in_channels
        d["preprocess"]["in_channels"] = args.in_channels
        d["classifier"]["in_channels"] = args.in_channels
    if args.classifier:
        d["classifier"]["name"] = args.classifier
    pre = d["preprocess"]
    if args.size:
        pre["size"] = list(_size(args.size, "--size"))
    for flag, key in (("resize_policy", "resize_policy"), ("median_filter", "median_filter"),
                      ("normalize", "normalize"), ("clahe", "clahe")):
        if getattr(args, flag) is not None:
            pre[key] = getattr(args, flag)
    if args.patch_size:
        d["patch_size"] = list(_size(args.patch_size, "--patch-size"))
    if args.augment:
        d["augment"] = AugmentConfig.preset(args.augment).to_dict()
    if args.loss:
        if args.loss != d.get("loss"):
            d["loss_kwargs"] = None
        d["loss"] = args.loss
    if args.loss_option:
        d["loss_kwargs"] = {**(d.get("loss_kwargs") or {}), **_loss_options(args.loss_option)}
    simple = {"task": "task", "presence_weight": "presence_loss_weight", "optimizer": "optimizer", "lr": "lr",
              "weight_decay": "weight_decay", "scheduler": "scheduler", "epochs": "epochs", "batch_size": "batch_size",
              "num_workers": "num_workers", "patience": "early_stopping_patience", "amp": "amp",
              "grad_clip": "grad_clip", "swa_start": "swa_start", "seed": "seed",
              "val_empty_policy": "val_empty_policy", "device": "device", "name": "name", "out": "out",
              "description": "description", "license": "license", "attribution": "attribution",
              "preview_count": "preview_count", "max_train_batches": "max_train_batches",
              "max_val_batches": "max_val_batches", "folds_file": "folds_file"}
    for flag, key in simple.items():
        if getattr(args, flag) is not None:
            d[key] = getattr(args, flag)
    if args.scheduler and args.scheduler != base.scheduler:
        d["scheduler_params"] = None
    for flag, key, value in (("swa", "swa", True), ("export", "export", True), ("replace", "replace_model", True),
                             ("cache_preprocessed", "cache_preprocessed", True),
                             ("positive_only", "positive_only", True),
                             ("no_channels_last", "channels_last", False)):
        if getattr(args, flag):
            d[key] = value
    return TrainConfig.from_dict(d)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (job runner cancel, torchrun shutdown) stops training like Ctrl-C: the loop records
    the run as cancelled instead of leaving its status at 'running'."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called in-process from a test harness)
        pass


def cmd_train(args) -> int:
    from engine.training import train

    config = build_config(args)
    if args.print_config:
        print(config.to_json())
        return 0
    main = int(os.environ.get("RANK", "0") or 0) == 0
    command = "python -m engine " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None
    _interrupt_on_sigterm()

    def on_epoch(rec: dict[str, Any]) -> None:
        keys = [k for k in ("train_loss", "val_loss", "val_dice", "val_iou", "presence_auc", "val_auc",
                            "val_ap", "lr") if k in rec]
        parts = [f"{k} {rec[k]:.4g}" if isinstance(rec[k], float) else f"{k} {rec[k]}" for k in keys]
        line = f"epoch {rec['epoch']:>3}  " + "  ".join(parts) + f"  {rec.get('seconds', 0):.1f}s" + \
               ("  *best*" if rec.get("best") else "")
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)

    with tqdm_progress("training", disable=True if (args.quiet or not main) else None) as progress:
        result = train(config, progress=progress, on_epoch=on_epoch if main else None,
                       resume=args.resume, command=command)
    if main:
        print(f"run      {result.run_dir}")
        print(f"state    {result.state}")
        print(f"best     {result.metric} {result.best_metric:.4f} at epoch {result.best_epoch}"
              f" ({len(result.history)} epoch(s) run)")
        if result.swa:
            print(f"swa      {result.metric} {result.swa.get(result.metric, float('nan')):.4f}"
                  f" ({'kept' if result.swa.get('kept') else 'not better'})")
        if result.exported:
            print(f"exported {result.exported}")
    return 0
