"""Tests for engine.training (+ engine.classify, engine.cli.train) on a tiny synthetic dataset.

The dataset: 64×64 noise images with a bright disk (and its mask) in 2 of 3 images, 6 subjects ×
4 frames, named ``s<subject>_<frame>.png`` so the paired layout groups frames by subject.
Models are tiny (classic U-Net, base width 4) so every run takes seconds on a busy CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.augment import AugmentConfig, Preprocess
from engine.errors import ConfigError
from engine.models import ClassifierSpec, ModelSpec
from engine.training import TrainConfig, load_resume_state, load_run_config, read_history, read_status, train
from tests.support.helpers import SIZE, make_dataset

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace for the module (runs and exports land here)."""
    path = tmp_path_factory.mktemp("ws")
    mp = pytest.MonkeyPatch()
    mp.setenv("SEGWB_WORKSPACE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, ws: Path) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "disks")


def cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model=ModelSpec(arch="unet_classic", base_channels=4),
                preprocess=Preprocess(size=(SIZE, SIZE)), augment=AugmentConfig(), epochs=3, batch_size=4,
                lr=3e-3, device="cpu", split={"k": 3, "seed": 0, "val_fold": 0}, val_empty_policy="exclude",
                preview_count=3, name="disks-unet", status_interval=0.0, scheduler="none")
    base.update(kw)
    if isinstance(base["split"], dict):
        from engine.splits import SplitSpec

        base["split"] = SplitSpec(**base["split"])
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def main_run(data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "main"
    epochs_seen: list[dict] = []
    progress_calls: list[tuple[int, int, str]] = []
    config = cfg(data, out, epochs=4, export=True, description="disks test model", license="CC0",
                 attribution="synthetic")
    result = train(config, progress=lambda d, t, m="": progress_calls.append((d, t, m)), on_epoch=epochs_seen.append,
                   command="python -m engine train --test")
    return config, result, epochs_seen, progress_calls


# ------------------------------------------------------------------------------------------- config

def test_config_json_round_trip_and_preset_shorthand(tmp_path: Path) -> None:
    c = TrainConfig(data="x", model=ModelSpec(arch="cenet", base_channels=16, num_classes=3, presence_head=True),
                    augment="ultrasound", loss="border_ce", loss_kwargs={"w0": 5.0}, scheduler="cosine",
                    scheduler_params={"eta_min": 1e-5}, preprocess=Preprocess(resize_policy="pad"),
                    patch_size=(128, 96), swa=True, amp="bf16", name="x.y-z")
    again = TrainConfig.from_json(c.to_json())
    assert again == c
    assert again.patch_size == (128, 96) and again.augment == AugmentConfig.preset("ultrasound")
    c.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == c
    d = c.to_dict()
    d["augment"] = "em"
    assert TrainConfig.from_dict(d).augment == AugmentConfig.preset("em")


@pytest.mark.parametrize("bad, needle", [
    (dict(loss="dcie"), "bce_dice"),
    (dict(patch_size=(64, 64)), "resize_policy"),
    (dict(name="a b"), "folder name"),
    (dict(scheduler="plateau", scheduler_params={"nope": 1}), "patience"),
    (dict(epochs=0), "epochs"),
    (dict(amp="fp8"), "bf16"),
])
def test_config_rejects_bad_values(bad: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(**bad)
    assert needle in str(err.value)


def test_cli_builds_config_flags_over_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.__main__ import main

    TrainConfig(data="a", epochs=7, lr=0.5, batch_size=3).save(tmp_path / "base.json")
    rc = main(["train", "--config", str(tmp_path / "base.json"), "--manifest", "m.json", "--lr", "0.01",
               "--arch", "unet_classic", "--base-channels", "16", "--classes", "3", "--size", "128x96",
               "--loss", "border_ce", "--loss-option", "w0=5", "--augment", "em", "--presence-head",
               "--val-fold", "2", "--folds", "4", "--print-config"])
    assert rc == 0
    c = TrainConfig.from_json(capsys.readouterr().out)
    assert (c.data, c.epochs, c.batch_size, c.lr) == ("m.json", 7, 3, 0.01)
    assert c.model.base_channels == 16 and c.model.num_classes == 3 and c.model.presence_head
    assert not c.auto_classes and c.preprocess.size == (128, 96)
    assert c.loss_kwargs == {"w0": 5} and c.augment == AugmentConfig.preset("em")
    assert (c.split.k, c.split.val_fold) == (4, 2)


# ------------------------------------------------------------------------------------ a real run

def _empty_prediction_dice(run_dir: Path) -> float:
    """Mean Dice an all-background model would get on the same validation cases and policy."""
    from engine.datasets import open_dataset
    from engine.metrics import MetricAccumulator

    card = json.loads((run_dir / "best" / "card.json").read_text())
    config = load_run_config(run_dir)
    ds = open_dataset(config.data)
    from engine.training.prepare import split_cases

    _, val, _ = split_cases(config, ds.labelled_cases())
    acc = MetricAccumulator(2, empty_policy=card["metrics"]["empty_policy"])
    for c in val:
        gt = ds.load_mask(c)
        acc.add(c.case_id, np.zeros_like(gt), gt)
    v = acc.summary()["mean_foreground"]["dice"]
    return 0.0 if v != v else float(v)


def test_training_lowers_loss_and_beats_empty_prediction(main_run) -> None:
    config, result, _, _ = main_run
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == config.epochs
    assert losses[-1] < losses[0]
    empty = _empty_prediction_dice(result.run_dir)
    assert result.best_metric > empty + 0.15, (result.best_metric, empty)
    assert result.best_epoch == max(range(len(result.history)), key=lambda i: result.history[i]["val_dice"]) + 1


def test_run_folder_checkpoint_card_and_prediction(main_run, data: Path) -> None:
    from engine.checkpoint import load_checkpoint
    from engine.inference import Predictor
    from engine.io import load_image

    config, result, _, _ = main_run
    run = result.run_dir
    saved = load_run_config(run)
    assert saved == config  # classes already matched the dataset (K = 2)
    model, card = load_checkpoint(run / "best")
    assert card.labels == {0: "background", 1: "foreground"}
    m = card.metrics
    assert math.isclose(m["val_dice"], result.best_metric)
    assert set(m["per_class_dice"]) == {"foreground"} and m["empty_policy"] == "exclude"
    assert m["n_val_cases"] == 8 and m["epoch"] == result.best_epoch
    t = card.training
    assert t["command"].endswith(f"--config {run / 'config.json'}") and t["argv"] == "python -m engine train --test"
    assert t["epochs_run"] == 4 and t["best_epoch"] == result.best_epoch and t["end_state"] == "finished"
    assert t["split"]["k"] == 3 and t["split"]["n_train"] + t["split"]["n_val"] == 24
    assert t["split"]["n_train_groups"] == 4 and t["split"]["n_val_groups"] == 2
    assert TrainConfig.from_dict(t["config"]) == config
    assert card.description == "disks test model" and card.license == {"license": "CC0", "attribution": "synthetic"}
    x, _ = load_image(data / "images" / "s0_1.png")  # float32 (1, H, W)
    pred = Predictor(model, card, device="cpu").predict(x)
    assert pred.mask.shape == (SIZE, SIZE) and pred.probs.shape == (2, SIZE, SIZE)
    # last/ and the exported copy load too; the export is listed for the model picker
    load_checkpoint(run / "last")
    assert result.exported is not None and (result.exported / "card.json").exists()
    from engine.checkpoint import list_weights

    assert "disks-unet" in [w["name"] for w in list_weights()]


def test_history_status_and_callbacks(main_run) -> None:
    import csv

    config, result, epochs_seen, progress_calls = main_run
    run = result.run_dir
    hist = read_history(run)
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4] == [r["epoch"] for r in epochs_seen]
    for r in hist:
        assert {"train_loss", "val_loss", "val_dice", "dice_foreground", "lr", "seconds"} <= set(r)
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert len(rows) == 4 and float(rows[-1]["train_loss"]) == pytest.approx(hist[-1]["train_loss"], rel=1e-4)
    st = read_status(run)
    assert st["state"] == "finished" and st["epoch"] == 4 and st["epochs"] == 4
    assert st["best_epoch"] == result.best_epoch and st["steps_per_epoch"] == 4
    steps = [d for d, t, _ in progress_calls if t == 16]
    assert steps[-1] == 16 and steps == sorted(steps)


def test_preview_png_per_epoch_and_gif_frames(main_run) -> None:
    _, result, _, _ = main_run
    prev = result.run_dir / "preview"
    pngs = sorted(prev.glob("epoch_*.png"))
    assert [p.name for p in pngs] == [f"epoch_{i:03d}.png" for i in range(1, 5)]
    with Image.open(pngs[0]) as im:
        assert im.width > 3 * 64 and im.height > 3 * 64  # 3 columns, 3 preview rows
    with Image.open(prev / "evolution.gif") as gif:
        assert gif.n_frames == 4


def test_resume_file_loads_with_weights_only(main_run) -> None:
    _, result, _, _ = main_run
    state = torch.load(result.run_dir / "resume.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 4 and len(state["history"]) == 4 and "optimizer" in state
    assert load_resume_state(result.run_dir)["best_epoch"] == result.best_epoch


def test_output_folder_with_a_run_is_refused(main_run) -> None:
    config, result, _, _ = main_run
    with pytest.raises(ConfigError, match="already exists in the workspace"):  # its export has this name now
        train(config)
    with pytest.raises(ConfigError, match="already holds"):
        train(config.replace(replace_model=True))
    with pytest.raises(ConfigError, match="--epochs larger"):
        train(load_run_config(result.run_dir), resume=result.run_dir)
    with pytest.raises(ConfigError, match="model differs"):
        train(load_run_config(result.run_dir).replace(epochs=9, model=ModelSpec(arch="unet_classic", base_channels=8)),
              resume=result.run_dir)
    assert read_status(result.run_dir)["state"] == "finished"  # refusals leave the finished run alone


# --------------------------------------------------------------------- determinism, resume, cancel

def test_two_identical_runs_give_identical_losses(data: Path, tmp_path: Path) -> None:
    kw = dict(epochs=1, max_train_batches=2, max_val_batches=1, augment=AugmentConfig.preset("light"),
              preview_count=0)
    a = train(cfg(data, tmp_path / "a", **kw))
    b = train(cfg(data, tmp_path / "b", **kw))
    for k in ("train_loss", "val_loss", "val_dice"):
        assert a.history[0][k] == b.history[0][k], k


def test_resume_continues_like_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    kw = dict(max_train_batches=1, max_val_batches=1, augment=AugmentConfig.preset("light"), preview_count=1,
              scheduler="plateau", scheduler_params={"patience": 0})
    straight = train(cfg(data, tmp_path / "straight", epochs=4, **kw))
    first = train(cfg(data, tmp_path / "resumed", epochs=2, **kw))
    assert len(first.history) == 2
    resumed = train(load_run_config(tmp_path / "resumed").replace(epochs=4), resume=tmp_path / "resumed")
    assert len(resumed.history) == len(straight.history) == 4
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for s, r in zip(straight.history, resumed.history):
        assert r["train_loss"] == pytest.approx(s["train_loss"], rel=1e-5, abs=1e-7)
        assert r["val_dice"] == pytest.approx(s["val_dice"], rel=1e-5, abs=1e-7)
    assert read_status(tmp_path / "resumed")["epoch"] == 4
    with Image.open(tmp_path / "resumed" / "preview" / "evolution.gif") as gif:
        assert gif.n_frames == 4


def test_cancel_file_stops_after_current_step(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cancel"

    def progress(done: int, total: int, message: str = "") -> None:
        if total == 12 and done == 2:  # second optimizer step of epoch 1 (3 epochs x 4 steps)
            (out / "CANCEL").write_text("stop")

    res = train(cfg(data, out, epochs=3), progress=progress)
    assert res.state == "cancelled" and res.history == []
    st = read_status(out)
    assert st["state"] == "cancelled" and st["step"] == 2
    assert (out / "last" / "card.json").exists() and not (out / "CANCEL").exists()


# ------------------------------------------------------------------------------- other inputs/tasks

def test_training_from_a_manifest(data: Path, tmp_path: Path) -> None:
    from engine.datasets import open_dataset, write_manifest

    ds = open_dataset(data, options={"label_names": ["disk"]})
    keep = [c for c in ds.cases if not c.case_id.endswith("_3")]
    man = write_manifest(tmp_path / "clean.json", ds, keep, dropped=[(c.case_id, "test") for c in ds.cases
                                                                      if c.case_id.endswith("_3")])
    res = train(cfg(man, tmp_path / "m", epochs=1, preview_count=0, max_train_batches=1))
    card = json.loads((res.run_dir / "best" / "card.json").read_text())
    assert card["labels"] == {"0": "background", "1": "disk"}
    assert card["training"]["manifest"] == str(man) and card["training"]["n_labelled_cases"] == 18
    assert set(card["metrics"]["per_class_dice"]) == {"disk"}


def test_presence_head_reports_auc_and_swa(data: Path, tmp_path: Path) -> None:
    spec = ModelSpec(arch="unet_classic", base_channels=4, presence_head=True)
    res = train(cfg(data, tmp_path / "p", model=spec, epochs=2, preview_count=0, val_empty_policy="kaggle",
                    max_train_batches=2, swa=True, swa_start=0.5))
    aucs = [r["presence_auc"] for r in res.history]
    assert len(aucs) == 2 and all(0.0 <= a <= 1.0 for a in aucs)
    card = json.loads((res.run_dir / "best" / "card.json").read_text())
    assert 0.0 <= card["metrics"]["presence_auc"] <= 1.0 and card["spec"]["presence_head"]
    # SWA averaged the weights of epoch 2, recomputed BatchNorm statistics and was validated
    assert res.swa is not None and res.swa["n_averaged"] == 1 and "presence_auc" in res.swa
    assert (res.run_dir / "swa.json").exists() and math.isfinite(res.swa["val_loss"])
    assert card["training"]["swa"] == res.swa["kept"]


def test_border_weighted_loss_run_and_weight_maps_follow_augmentation(data: Path, tmp_path: Path) -> None:
    from engine.augment import build_train_transform
    from engine.training.data import SegTrainSet, _transform_with_weight

    # the weight map rides with the label mask through a geometric transform
    m = np.zeros((16, 16), np.uint8)
    m[2:6, 1:4] = 1
    w = np.arange(256, dtype=np.float32).reshape(16, 16)
    t = build_train_transform(AugmentConfig(hflip=1.0), seed=0)
    img, m2, w2 = _transform_with_weight(t, np.zeros((1, 16, 16), np.float32), m, w)
    assert np.array_equal(m2, m[:, ::-1]) and np.array_equal(w2, w[:, ::-1])

    aug = AugmentConfig(hflip=0.5, shift_scale_rotate=0.5)
    res = train(cfg(data, tmp_path / "b", loss="border_ce", loss_kwargs={"w0": 10.0, "sigma": 3.0}, augment=aug,
                    epochs=1, preview_count=0, max_train_batches=2))
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in res.history)
    from engine.training import segment

    task = segment.SegTask(cfg(data, tmp_path / "unused", loss="border_ce", augment=aug), main=False)
    sample = task.train_set[(0, 1)]
    assert sample["weight"].shape == (SIZE, SIZE) and float(sample["weight"].min()) >= 0.0
    assert isinstance(task.train_set, SegTrainSet)


def test_pad_policy_patches_and_sliding_window_validation(data: Path, tmp_path: Path) -> None:
    pre = Preprocess(resize_policy="pad", pad_multiple=16)
    res = train(cfg(data, tmp_path / "pad", preprocess=pre, patch_size=(32, 32), epochs=1, preview_count=1,
                    max_train_batches=2))
    card = json.loads((res.run_dir / "best" / "card.json").read_text())
    assert card["tile"] == [32, 32] and card["preprocess"]["resize_policy"] == "pad"
    assert res.history[0]["n_val"] == 8 and math.isfinite(res.history[0]["val_loss"])


def test_classifier_task_trains_saves_and_predicts(data: Path, tmp_path: Path, ws: Path) -> None:
    from engine.classify import ClassifierPredictor, list_classifier_weights, load_classifier

    c = cfg(data, tmp_path / "clf", task="classify", classifier=ClassifierSpec(name="mobilenetv3_small_100"),
            epochs=2, name="disks-presence", export=True, max_train_batches=2)
    res = train(c)
    assert res.metric == "val_auc"
    assert all(0.0 <= r["val_auc"] <= 1.0 and 0.0 <= r["val_ap"] <= 1.0 for r in res.history)
    card = json.loads((res.run_dir / "best" / "classifier.json").read_text())
    assert card["metrics"]["val_auc"] == pytest.approx(res.best_metric)
    assert {"val_sensitivity", "val_specificity", "confusion_matrix"} <= set(card["metrics"])
    assert card["training"]["config"]["task"] == "classify"
    model, ccard = load_classifier("disks-presence")  # found by name in <workspace>/models
    assert ccard.classifier.name == "mobilenetv3_small_100" and not model.training
    clf = ClassifierPredictor(model, ccard, device="cpu")
    img = np.asarray(Image.open(data / "images" / "s0_1.png"), np.float32)[None] / 255
    p = clf.predict_proba(img)
    assert 0.0 <= p <= 1.0 and clf.predict(img) == (p >= ccard.threshold)
    assert "disks-presence" in [w["name"] for w in list_classifier_weights()]
    from engine.checkpoint import list_weights

    assert "disks-presence" not in [w["name"] for w in list_weights()]  # not a segmentation model


# ------------------------------------------------------------------------------------ data pipeline

def test_cache_sampler_and_per_sample_seeding(data: Path, tmp_path: Path) -> None:
    from engine.datasets import open_dataset
    from engine.training.data import EpochSampler, SegTrainSet, build_cache

    ds = open_dataset(data)
    pre = Preprocess(size=(32, 32))
    items, skipped = build_cache(ds, ds.cases[:6], pre, dtype="uint8", disk_dir=tmp_path / "cache")
    assert not skipped and items[0].image.dtype == np.uint8 and items[0].image.shape == (1, 32, 32)
    again, _ = build_cache(ds, ds.cases[:6], pre, dtype="uint8", disk_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 6
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(items, again))
    f16, _ = build_cache(ds, ds.cases[:1], pre, dtype="float16")
    assert np.abs(f16[0].image_float() - items[0].image_float()).max() <= 1 / 510 + 1e-3

    tset = SegTrainSet(items, pre, AugmentConfig.preset("ultrasound"), seed=3)
    a, b, c = tset[(0, 2)], tset[(0, 2)], tset[(1, 2)]
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["mask"].dtype == torch.uint8 and a["present"].item() == float(items[2].has_mask)
    s = EpochSampler(6, seed=0)
    s.set_epoch(5)
    keys = list(s)
    assert sorted(i for _, i in keys) == list(range(6)) and {e for e, _ in keys} == {5}
    half = [list(EpochSampler(6, seed=0, rank=r, world=2)) for r in (0, 1)]
    assert sorted(i for part in half for _, i in part) == list(range(6))


def test_split_is_grouped_and_folds_file_is_honoured(data: Path, tmp_path: Path) -> None:
    from engine.datasets import open_dataset
    from engine.splits import SplitSpec, save_folds
    from engine.training.prepare import split_cases

    cases = open_dataset(data).labelled_cases()
    c = cfg(data, tmp_path / "x")
    train_c, val_c, desc = split_cases(c, cases)
    assert not {x.group_id for x in train_c} & {x.group_id for x in val_c}
    assert desc["n_train"] + desc["n_val"] == 24 and desc["source"] == "grouped_kfold"
    folds = {x.case_id: (0 if x.group_id == "s5" else 1) for x in cases}
    save_folds(tmp_path / "folds.json", folds, SplitSpec(k=2))
    train_f, val_f, desc_f = split_cases(c.replace(folds_file=str(tmp_path / "folds.json")), cases)
    assert {x.group_id for x in val_f} == {"s5"} and len(train_f) == 20
    assert desc_f["source"] == str((tmp_path / "folds.json").resolve()) and desc_f["k"] == 2
    with pytest.raises(ConfigError, match="val_fold"):
        split_cases(c.replace(folds_file=str(tmp_path / "folds.json"), split=SplitSpec(k=3, val_fold=2)), cases)


def test_positive_only_trains_on_masked_cases_and_card_records_split_and_fingerprint(
        data: Path, tmp_path: Path) -> None:
    from engine.datasets import open_dataset
    from engine.domain_profile import check_input

    res = train(cfg(data, tmp_path / "pos", epochs=1, positive_only=True, max_train_batches=1, preview_count=0))
    card = json.loads((res.run_dir / "best" / "card.json").read_text())
    split = card["training"]["split"]
    ds = open_dataset(data)
    train_ids, val_ids = split["train_case_ids"], split["val_case_ids"]
    assert split["positive_only"] is True and train_ids and not set(train_ids) & set(val_ids)
    assert all(ds.case(c).has_mask for c in train_ids)  # only masked cases trained
    assert split["n_train_before_positive_only"] > len(train_ids) == split["n_train"]
    assert any(not ds.case(c).has_mask for c in val_ids)  # validation keeps the empty ones
    fp = card["fingerprint"]
    assert fp["n_images"] == len(train_ids) and fp["height"] == [SIZE, SIZE, SIZE] and len(fp["hist"]) == 32
    img = ds.load_image_float(ds.case(val_ids[0]))
    assert not check_input(fp, img)["far"]  # a held-out image of the same data is in domain
    assert check_input(fp, 1.0 - img)["far"]  # an inverted one is not
    with pytest.raises(ConfigError, match="positive_only"):
        train(cfg(data, tmp_path / "clfpos", task="classify", positive_only=True,
                  classifier=ClassifierSpec(name="cnn_small"), epochs=1))


def test_export_never_replaces_a_model_silently_and_weak_models_are_flagged(main_run, tmp_path: Path,
                                                                            monkeypatch) -> None:
    monkeypatch.delenv("SEGWB_MIN_USEFUL_DICE", raising=False)  # the product's default floor (0.2)
    from engine.checkpoint import list_weights, weak_reason
    from engine.training.loop import _export, check_export_name, export_name_problem

    config, result, _, _ = main_run
    assert export_name_problem(config.name) and export_name_problem(config.name, replace=True) is None
    assert "shipped" in (export_name_problem("lung-cxr", replace=True) or "")  # never over a shipped model
    check_export_name(f"{config.name}-new")
    first = _export(result.run_dir / "best", config.name)  # a race: the name was taken meanwhile
    second = _export(result.run_dir / "best", config.name)
    assert (first.name, second.name) == (f"{config.name}-2", f"{config.name}-3")
    assert _export(result.run_dir / "best", config.name, replace=True).name == config.name
    assert weak_reason({"end_state": "failed"}, {"val_dice": 0.9}) == "its training run failed"
    assert "0.019" in weak_reason({"end_state": "finished"}, {"val_dice": 0.019})
    assert weak_reason({"end_state": "finished"}, {"val_dice": 0.8}) == ""
    monkeypatch.setenv("SEGWB_MIN_USEFUL_DICE", "0")
    assert weak_reason({"end_state": "finished"}, {"val_dice": 0.019}) == ""
    shipped = {w["name"]: w for w in list_weights()}
    assert shipped["lung-cxr"]["weak"] == ""
