"""Tests for engine.evaluation: scores, empty-mask policies, class matching by name, caching, subsets.

Data: a paired ``images/`` + ``masks/`` folder of 64×64 PNGs (bright disks on noise; 8 cases with a
disk, 4 with an empty mask, 1 image without a mask = unlabelled), class named ``disk``.
Models: a tiny classic U-Net (base width 4) whose foreground bias is centred so it predicts about
half of each image (scores differ per case), or a scripted stand-in predictor that returns chosen
masks and counts how often it is asked to predict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.augment import Preprocess
from engine.checkpoint import ModelCard, save_checkpoint
from engine.datasets import open_dataset
from engine.errors import ConfigError
from engine.evaluation import (
    EvalConfig,
    class_mapping,
    evaluate,
    list_evals,
    load_eval,
    prediction_path,
)
from engine.inference import Prediction, Predictor
from engine.metrics import dice as metrics_dice
from engine.models import ModelSpec
from tests.support.helpers import N_EMPTY, N_POS, SIZE, disk_mask, make_disks, np_dice, save_tiny_unet

FAST = EvalConfig(sweep=False, device="cpu")
LABELS = {"label_names": ["disk"]}


# ------------------------------------------------------------------------------------ helpers

def make_model(folder: Path, ds, label: str = "disk", seed: int = 1) -> Path:
    """Tiny classic U-Net saved in ``folder``; foreground bias centred on one image so it predicts about half."""
    return save_tiny_unet(folder, seed=seed, label=label, centre_on=ds.load_image_float(ds.cases[0]))


def shift_bias(folder: Path, delta: float) -> None:
    """Re-save the model in ``folder`` with a changed foreground bias (new tensors, same name)."""
    import torch

    from engine.checkpoint import load_checkpoint

    net, card = load_checkpoint(folder)
    with torch.no_grad():
        net.net.head.bias[1] += delta
    save_checkpoint(folder, net, card.replace(tensors_sha256="", created=""))


def scripted_card(labels: dict[int, str], sha: str = "a" * 64, name: str = "scripted") -> ModelCard:
    spec = ModelSpec(arch="unet_classic", base_channels=4, num_classes=len(labels))
    return ModelCard(name=name, spec=spec, labels=labels, preprocess=Preprocess(size=(SIZE, SIZE)), tensors_sha256=sha)


class ScriptedPredictor:
    """Stands in for :class:`engine.inference.Predictor`: returns the given masks, records each call."""

    def __init__(self, card: ModelCard, masks: dict[str, np.ndarray]):
        self.card = card
        self.masks = masks
        self.calls: list[list[str]] = []

    def predict_cases(self, dataset, cases=None, post=None, num_workers=None, progress=None, tta=None):
        ids = [dataset.case(c).case_id for c in (dataset.cases if cases is None else cases)]
        self.calls.append(ids)
        k = self.card.num_classes
        for cid in ids:
            m = self.masks[cid].astype(np.uint8)
            probs = np.eye(k, dtype=np.float32)[m].transpose(2, 0, 1).copy()
            yield dataset.case(cid), Prediction(m, probs, None)


class CountingPredictor:
    """A real predictor that counts how often evaluation asks it to predict."""

    def __init__(self, inner: Predictor):
        self.inner = inner
        self.card = inner.card
        self.calls = 0

    def predict_cases(self, *args: Any, **kwargs: Any):
        self.calls += 1
        yield from self.inner.predict_cases(*args, **kwargs)


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ws_eval")
    mp = pytest.MonkeyPatch()
    mp.setenv("SEGWB_WORKSPACE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def disks(ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_disks(tmp_path_factory.mktemp("data") / "disks")


@pytest.fixture(scope="module")
def model(ws: Path, disks: Path) -> Path:
    return make_model(ws / "models" / "eval-disk-unet", open_dataset(disks, options=LABELS))


def scripted_masks(ds) -> dict[str, np.ndarray]:
    """Predictions with known scores: shifted disks (0 < Dice < 1), one missed disk, one false positive,
    three correct empties."""
    out = {}
    for c in ds.labelled_cases():
        gt = ds.load_mask(c)
        i = int(c.case_id[1:])
        if i < N_POS - 1:
            out[c.case_id] = np.roll(gt, i + 1, axis=1)  # overlap shrinks as i grows
        elif i == N_POS - 1:
            out[c.case_id] = np.zeros_like(gt)  # missed
        elif i == N_POS:
            out[c.case_id] = disk_mask(32, 32, 5)  # false positive on an empty image
        else:
            out[c.case_id] = np.zeros_like(gt)  # both empty
    return out


# ------------------------------------------------------------------------------------ tests

def test_per_image_dice_matches_metrics_on_the_predictors_masks(ws: Path, disks: Path, model: Path) -> None:
    ds = open_dataset(disks, options=LABELS)
    pred = Predictor.from_weights(model.name, device="cpu")
    res = evaluate(pred, ds, EvalConfig(device="cpu", sweep_max_images=4), use_cache=False)
    labelled = sorted(c.case_id for c in ds.labelled_cases())
    df = res.per_image.set_index("case_id")
    assert sorted(df.index) == labelled and "u00" not in df.index
    expected = {}
    for cid in labelled:
        mask = pred.predict(ds.load_image_float(cid)).mask  # single-image path, not the batched one evaluate uses
        gt = ds.load_mask(cid)
        expected[cid] = np_dice(mask, gt)
        assert expected[cid] == pytest.approx(metrics_dice(mask, gt, "kaggle"), abs=1e-12)
        assert df.loc[cid, "dice"] == pytest.approx(expected[cid], abs=1e-9), cid
        assert df.loc[cid, "dice_disk"] == pytest.approx(expected[cid], abs=1e-9), cid
        assert df.loc[cid, "gt_area"] == int(gt.sum()) and df.loc[cid, "pred_area"] == int((mask > 0).sum())
        saved = np.asarray(Image.open(prediction_path(res.folder, cid)))
        np.testing.assert_array_equal(saved, mask)
    values = np.array(list(expected.values()))
    assert len(set(np.round(values, 6))) > 3 and 0 < values.mean() < 1  # a real spread of scores
    s = res.summary
    assert s["n_cases"] == len(labelled) == N_POS + N_EMPTY and s["n_failed"] == 0
    assert s["mean_dice"] == pytest.approx(values.mean(), abs=1e-9)
    assert s["per_class"] == {"disk": pytest.approx(values.mean(), abs=1e-9)}
    assert s["settings"]["class_map"] == {"disk": "disk"}
    assert s["settings"]["weights_sha256"] == pred.card.tensors_sha256
    pos = [expected[f"c{i:02d}"] for i in range(N_POS)]
    assert s["dice_gt_nonempty"]["disk"] == pytest.approx(np.mean(pos), abs=1e-9)
    assert s["n_gt_empty"]["disk"] == N_EMPTY and s["n_gt_nonempty"]["disk"] == N_POS
    # the folder holds what the dashboard reads back
    assert (res.folder / "sweep.csv").exists() and s["sweep_best"]["n_images"] == 4
    back = load_eval(res.folder)
    assert back is not None and back.summary["mean_dice"] == pytest.approx(s["mean_dice"])
    assert np.allclose(back.per_image.set_index("case_id").loc[labelled, "dice"], values)


def test_empty_policy_kaggle_versus_exclude(ws: Path, disks: Path) -> None:
    ds = open_dataset(disks, options=LABELS)
    masks = scripted_masks(ds)
    ref = {c.case_id: np_dice(masks[c.case_id], ds.load_mask(c)) for c in ds.labelled_cases()}
    both_empty = {cid for cid in ref if not masks[cid].any() and not ds.load_mask(cid).any()}
    assert len(both_empty) == N_EMPTY - 1
    res = {}
    for policy in ("kaggle", "exclude"):
        p = ScriptedPredictor(scripted_card({0: "background", 1: "disk"}), masks)
        res[policy] = evaluate(p, ds, EvalConfig(empty_policy=policy, sweep=False), use_cache=False)
    k, x = res["kaggle"].summary, res["exclude"].summary
    # kaggle: both-empty images score 1 and count
    assert k["mean_dice"] == pytest.approx(np.mean(list(ref.values())), abs=1e-12)
    assert k["metrics"]["classes"]["disk"]["n_counted"] == N_POS + N_EMPTY
    assert k["dice_gt_empty"]["disk"] == pytest.approx((N_EMPTY - 1) / N_EMPTY)  # 3 × 1 and one false positive
    # exclude: both-empty images are left out of the mean (their per-image Dice is NaN)
    kept = [v for cid, v in ref.items() if cid not in both_empty]
    assert x["mean_dice"] == pytest.approx(np.mean(kept), abs=1e-12)
    assert x["mean_dice"] < k["mean_dice"]
    assert x["metrics"]["classes"]["disk"]["n_counted"] == N_POS + 1
    assert x["dice_gt_empty"]["disk"] == 0.0  # only the false positive remains
    assert x["dice_gt_nonempty"]["disk"] == pytest.approx(k["dice_gt_nonempty"]["disk"])  # unaffected
    dfx = res["exclude"].per_image.set_index("case_id")
    assert dfx.loc[sorted(both_empty), "dice"].isna().all()
    assert dfx["dice"].mean() == pytest.approx(x["mean_dice"])  # pandas skips the NaNs
    # n_cases counts every evaluated image under both policies; the rule is stated in the summary
    assert k["n_cases"] == x["n_cases"] == N_POS + N_EMPTY
    assert (k["empty_policy"], x["empty_policy"]) == ("kaggle", "exclude")
    assert k["empty_policy_rule"] != x["empty_policy_rule"]
    assert res["kaggle"].folder != res["exclude"].folder
    with pytest.raises(ConfigError, match="empty policy"):
        EvalConfig(empty_policy="ignore")


def test_classes_are_matched_by_name_not_id(ws: Path, disks: Path) -> None:
    ds = open_dataset(disks, options={"label_names": ["nerve"]})
    assert ds.labels == {0: "background", 1: "nerve"}
    card = scripted_card({0: "background", 1: "vessel", 2: "nerve"})
    masks = {}
    for c in ds.labelled_cases():
        m = ds.load_mask(c) * 2  # the model's "nerve" (id 2) exactly on the ground truth
        m[:6, :6] = 1  # its "vessel" (id 1) in a corner: no such class in the dataset → background
        masks[c.case_id] = m
    p = ScriptedPredictor(card, masks)
    res = evaluate(p, ds, EvalConfig(sweep=False), use_cache=False)
    s = res.summary
    assert s["settings"]["class_map"] == {"vessel": "background", "nerve": "nerve"}
    assert s["mean_dice"] == 1.0 and s["per_class"] == {"nerve": 1.0}  # matching by id would score the corner
    assert (res.per_image["dice"] == 1.0).all()
    saved = np.asarray(Image.open(prediction_path(res.folder, "c03")))
    np.testing.assert_array_equal(saved, ds.load_mask("c03"))
    lut = class_mapping(card.labels, ds.labels)
    assert (lut[0], lut[1], lut[2]) == (0, 0, 1)
    # the same scripted masks scored against a dataset naming its class "vessel" match id 1 instead
    lut_v = class_mapping(card.labels, {0: "background", 1: "Vessel"})
    assert (lut_v[1], lut_v[2]) == (1, 0)  # names compare case-insensitively


def test_unnamed_dataset_classes_match_by_id_only_with_the_same_class_count() -> None:
    lut = class_mapping({0: "background", 1: "nerve"}, {0: "background", 1: "foreground"})
    assert lut[1] == 1
    lut = class_mapping({0: "background", 1: "a", 2: "b"}, {0: "background", 1: "class_1", 2: "class_2"})
    assert (lut[1], lut[2]) == (1, 2)
    with pytest.raises(ConfigError):
        class_mapping({0: "background", 1: "nerve", 2: "vessel"}, {0: "background", 1: "foreground"})


def test_no_matching_class_name_is_a_clear_error(ws: Path, disks: Path) -> None:
    ds = open_dataset(disks, options={"label_names": ["nerve"]})
    p = ScriptedPredictor(scripted_card({0: "background", 1: "pneumothorax"}), {})
    with pytest.raises(ConfigError) as err:
        evaluate(p, ds, FAST, use_cache=False)
    text = str(err.value)
    assert "pneumothorax" in text and "nerve" in text and "do not match" in text
    assert err.value.hint and "--labels" in err.value.hint
    assert p.calls == []  # refused before predicting anything


def test_results_are_cached_and_invalidated_by_model_settings_and_data(ws: Path, tmp_path: Path) -> None:
    root = make_disks(tmp_path / "cache-disks", seed=3)
    ds = open_dataset(root, options=LABELS)
    folder = make_model(ws / "models" / "eval-cache-unet", ds)
    p = CountingPredictor(Predictor.from_weights(folder, device="cpu"))
    r1 = evaluate(p, ds, FAST)
    assert p.calls == 1 and r1.folder.parent == Path(ds.workdir) / "evals"
    assert r1.folder.name == f"eval-cache-unet-{r1.summary['key']}"
    r2 = evaluate(p, ds, FAST)
    assert p.calls == 1  # served from the cache folder
    assert r2.folder == r1.folder and r2.summary["key"] == r1.summary["key"]
    assert r2.summary["mean_dice"] == pytest.approx(r1.summary["mean_dice"])
    assert np.allclose(r2.per_image["dice"], r1.per_image["dice"])
    assert [e["folder"] for e in list_evals(ds)] == [str(r1.folder)]
    evaluate(p, ds, FAST, use_cache=False)
    assert p.calls == 2  # use_cache=False recomputes
    evaluate(p, open_dataset(root, options=LABELS), FAST)
    assert p.calls == 2  # a fresh Dataset object of the unchanged folder still hits the cache
    # other settings → another key
    r3 = evaluate(p, ds, EvalConfig(sweep=False, device="cpu", tta="flip"))
    assert p.calls == 3 and r3.summary["key"] != r1.summary["key"]
    # a subset → another key
    r4 = evaluate(p, ds, FAST, case_ids=["c00", "c01"])
    assert p.calls == 4 and r4.folder != r1.folder
    # new weights under the same name → recomputed, different scores
    shift_bias(folder, 2.0)
    p2 = CountingPredictor(Predictor.from_weights(folder, device="cpu"))
    r5 = evaluate(p2, ds, FAST)
    assert p2.calls == 1 and r5.summary["key"] != r1.summary["key"]
    assert r5.summary["settings"]["weights_sha256"] != r1.summary["settings"]["weights_sha256"]
    assert not np.allclose(r5.per_image["pred_area"], r1.per_image["pred_area"])
    evaluate(p2, ds, FAST)
    assert p2.calls == 1
    # a changed ground truth (a disk grows) → recomputed with the new mask
    Image.fromarray(disk_mask(32, 32, 20) * 255).save(root / "masks" / "c00.png")
    ds2 = open_dataset(root, options=LABELS)
    r6 = evaluate(p2, ds2, FAST)
    assert p2.calls == 2 and r6.summary["key"] != r5.summary["key"]
    row = r6.per_image.set_index("case_id").loc["c00"]
    assert row["gt_area"] == int(disk_mask(32, 32, 20).sum())
    # a new labelled case → recomputed, and it is scored
    Image.open(root / "images" / "c01.png").save(root / "images" / "c99.png")
    Image.open(root / "masks" / "c01.png").save(root / "masks" / "c99.png")
    r7 = evaluate(p2, open_dataset(root, options=LABELS), FAST)
    assert p2.calls == 3 and r7.summary["n_cases"] == N_POS + N_EMPTY + 1 and "c99" in set(r7.per_image["case_id"])
    # a cache folder holding another key is not used
    other = tmp_path / "out"
    evaluate(p2, ds2, FAST, out_dir=other)
    assert p2.calls == 4 and json.loads((other / "summary.json").read_text())["key"] == r6.summary["key"]
    assert load_eval(other, expect_key="0" * 16) is None


def test_cache_is_invalidated_when_a_mask_changes_but_keeps_its_area(ws: Path, tmp_path: Path) -> None:
    root = make_disks(tmp_path / "same-area", seed=4)
    ds = open_dataset(root, options=LABELS)
    gt = ds.load_mask("c00")
    p = ScriptedPredictor(scripted_card({0: "background", 1: "disk"}),
                          {c.case_id: ds.load_mask(c) for c in ds.labelled_cases()})
    r1 = evaluate(p, ds, FAST)
    assert r1.summary["mean_dice"] == 1.0
    Image.fromarray(np.roll(gt, 5, axis=1) * 255).save(root / "masks" / "c00.png")  # moved, same area
    ds2 = open_dataset(root, options=LABELS)
    assert ds2.case("c00").mask_area == ds.case("c00").mask_area
    r2 = evaluate(p, ds2, FAST)
    assert len(p.calls) == 2 and r2.summary["mean_dice"] < 1.0


def test_cache_is_invalidated_when_the_dataset_classes_are_renamed(ws: Path, tmp_path: Path) -> None:
    root = make_disks(tmp_path / "renamed", seed=5)
    ds = open_dataset(root, options=LABELS)
    p = ScriptedPredictor(scripted_card({0: "background", 1: "disk"}),
                          {c.case_id: ds.load_mask(c) for c in ds.labelled_cases()})
    assert evaluate(p, ds, FAST).summary["per_class"] == {"disk": 1.0}
    with pytest.raises(ConfigError, match="do not match"):
        evaluate(p, open_dataset(root, options={"label_names": ["vessel"]}), FAST)


def test_case_ids_restrict_the_evaluation(ws: Path, disks: Path) -> None:
    ds = open_dataset(disks, options=LABELS)
    masks = scripted_masks(ds)
    card = scripted_card({0: "background", 1: "disk"}, sha="b" * 64)
    full = evaluate(ScriptedPredictor(card, masks), ds, FAST, use_cache=False)
    subset = ["c05", "c01", "c09"]
    p = ScriptedPredictor(card, masks)
    res = evaluate(p, ds, FAST, case_ids=subset, use_cache=False)
    assert p.calls == [subset]  # only those cases are predicted
    assert sorted(res.per_image["case_id"]) == sorted(subset) and res.summary["n_cases"] == 3
    by_case = full.per_image.set_index("case_id")["dice"]
    assert res.summary["mean_dice"] == pytest.approx(by_case[subset].mean(), abs=1e-12)
    assert res.summary["mean_dice"] != pytest.approx(full.summary["mean_dice"])
    assert res.summary["n_gt_empty"]["disk"] == 1 and res.summary["n_gt_nonempty"]["disk"] == 2
    assert sorted(p.name for p in (res.folder / "pred").iterdir()) == sorted(f"{c}.png" for c in subset)
    with pytest.raises(ConfigError, match="no ground truth"):
        evaluate(p, ds, FAST, case_ids=["c00", "u00"], use_cache=False)
    with pytest.raises(ConfigError, match="no labelled cases"):
        evaluate(p, ds, FAST, case_ids=[], use_cache=False)
    assert len(p.calls) == 1
    assert not math.isnan(res.summary["mean_dice"])
