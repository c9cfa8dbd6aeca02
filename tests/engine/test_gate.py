"""Tests for the two-stage pipeline (presence classifier gates the segmenter), the classifier's
checkpoint round trip through engine.checkpoint, and honest evaluation (training overlap, Rand and
warping error, mm² areas).

Data: ``make_disks`` (64×64 PNGs, c00..c07 with a bright disk, c08..c11 empty, u00 unlabelled).
Segmenter: a tiny random classic U-Net centred to predict about half of each image.
Classifiers: a real ``cnn_small`` whose final layer is set to a constant logit (so P(present) is
known exactly), and a scripted one that reads the input (fraction of bright pixels) so it tells
disk images from empty ones.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.augment import Preprocess
from engine.checkpoint import ClassifierCard, GateConfig, list_weights, load_checkpoint, read_card, save_checkpoint
from engine.classify import ClassifierPredictor, list_classifier_weights, load_classifier
from engine.datasets import open_dataset
from engine.evaluation import EvalConfig, evaluate, training_cases
from engine.inference import Predictor, finish_mask
from engine.models import ClassifierSpec, build_classifier
from tests.support.helpers import N_EMPTY, N_POS, SIZE, make_disks, save_tiny_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = EvalConfig(sweep=False, device="cpu")


@pytest.fixture()
def disks(tmp_path: Path) -> Path:
    return make_disks(tmp_path / "disks")


def save_constant_classifier(folder: Path, logit: float) -> Path:
    """A cnn_small whose output is ``logit`` for every image (final layer: zero weights, bias = logit)."""
    import torch

    net = build_classifier(ClassifierSpec("cnn_small"), load_pretrained=False)
    with torch.no_grad():
        net.backbone.fc.weight.zero_()
        net.backbone.fc.bias.fill_(logit)
    card = ClassifierCard(name=folder.name, classifier=ClassifierSpec("cnn_small"),
                          preprocess=Preprocess(size=(SIZE, SIZE)),
                          threshold=0.5, labels={0: "absent", 1: "disk"})
    return save_checkpoint(folder, net, card)


class BrightPixelClassifier(ClassifierPredictor):
    """P(present) = min(1, 20 × fraction of input pixels brighter than 0.6) — disks are bright."""

    def predict_proba_inputs(self, xs):  # noqa: D102 - scripted stand-in
        return np.array([min(1.0, 20.0 * float((np.asarray(x) > 0.6).mean())) for x in xs])


def segmenter(tmp_path: Path, ds, **card_fields) -> Path:
    return save_tiny_unet(tmp_path / "seg", seed=1, label="disk", centre_on=ds.load_image_float(ds.cases[0]),
                          **card_fields)


def test_classifier_uses_the_checkpoint_code(tmp_path: Path, workspace: Path) -> None:
    folder = save_constant_classifier(workspace / "models" / "const-clf", 2.0)
    assert (folder / "classifier.json").exists() and not (folder / "card.json").exists()
    card = read_card(folder, kind="classify")
    assert card.labels == {0: "absent", 1: "disk"} and card.tensors_sha256 and card.n_parameters > 0
    model, card2 = load_classifier("const-clf")  # by name, through engine.checkpoint
    assert card2 == card and not model.training
    assert "const-clf" in [w["name"] for w in list_classifier_weights()]  # besides any shipped classifier
    assert "const-clf" not in [w["name"] for w in list_weights()]
    p = ClassifierPredictor(model, card, device="cpu").predict_proba(np.zeros((1, SIZE, SIZE), np.float32))
    assert p == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-6)
    # corrupt tensors are refused like a segmenter's
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-8:] = b"\x00" * 8
    (folder / "model.safetensors").write_bytes(bytes(data))
    from engine.errors import CheckpointError

    with pytest.raises(CheckpointError, match="hash in classifier.json"):
        load_checkpoint(folder, kind="classify")


def test_gate_empties_masks_below_threshold_only(tmp_path: Path, disks: Path) -> None:
    ds = open_dataset(disks, options={"label_names": ["disk"]})
    seg = segmenter(tmp_path, ds)
    clf_folder = save_constant_classifier(tmp_path / "clf", 0.0)  # P = 0.5 everywhere
    img = ds.load_image_float(ds.cases[0])
    plain = Predictor.from_weights(seg, device="cpu", gate=None).predict(img)
    assert plain.mask.any() and plain.gate is None
    for t, emptied in ((0.6, True), (0.4, False)):
        pred = Predictor.from_weights(seg, device="cpu", gate=str(clf_folder), gate_threshold=t)
        out = pred.predict(img)
        assert out.gate == pytest.approx(0.5, abs=1e-6)
        assert out.gated is emptied
        assert (not out.mask.any()) if emptied else np.array_equal(out.mask, plain.mask)
        assert np.array_equal(pred.ungated_mask(out), plain.mask)
        # cached probabilities + finish_mask: the same gated mask, and the ungated one without a threshold
        raw = pred.predict_raw(img)
        assert raw.gate == pytest.approx(out.gate) and not raw.mask.any()
        finished = finish_mask(raw.probs, pred.post_default, presence=raw.presence, gate=raw.gate,
                               gate_threshold=pred.gate_threshold)
        assert np.array_equal(finished, out.mask)
        assert np.array_equal(finish_mask(raw.probs, pred.post_default, presence=raw.presence, gate=raw.gate),
                              plain.mask)
        # the file path (DataLoader) gives the same result
        (_, res), = list(pred.predict_files([ds.cases[0].image_path], num_workers=0))
        assert res.gate == pytest.approx(0.5, abs=1e-6) and np.array_equal(res.mask, out.mask)


def test_card_gate_is_used_by_default_and_can_be_switched_off(tmp_path: Path, disks: Path) -> None:
    ds = open_dataset(disks, options={"label_names": ["disk"]})
    clf_folder = save_constant_classifier(tmp_path / "clf", -3.0)  # P ≈ 0.047
    seg = segmenter(tmp_path, ds, gate=GateConfig(str(clf_folder), 0.2))
    pred = Predictor.from_weights(seg, device="cpu")
    assert pred.gate_info == {"weights": "clf", "threshold": 0.2}
    assert not pred.predict(ds.load_image_float(ds.cases[0])).mask.any()
    assert Predictor.from_weights(seg, device="cpu", gate=None).gate is None


def test_evaluate_gated_vs_ungated_and_presence_metrics(tmp_path: Path, disks: Path) -> None:
    ds = open_dataset(disks, options={"label_names": ["disk"]})
    seg = segmenter(tmp_path, ds)
    model, card = load_classifier(save_constant_classifier(tmp_path / "clf", 0.0))
    base = Predictor.from_weights(seg, device="cpu", gate=None)
    gate = BrightPixelClassifier(model, card, device="cpu")
    gated = Predictor(base.model, base.card, device="cpu", gate=gate, gate_threshold=0.5)
    res = evaluate(gated, ds, FAST, out_dir=tmp_path / "ev-gated", use_cache=False)
    ref = evaluate(base, ds, FAST, out_dir=tmp_path / "ev-plain", use_cache=False)
    s, df = res.summary, res.per_image.set_index("case_id")
    assert s["gate"] == {"weights": "clf", "threshold": 0.5}
    assert s["ungated"]["mean_dice"] == pytest.approx(ref.summary["mean_dice"])
    # the scripted classifier is right on every image: empties → Dice 1 (Kaggle), positives unchanged
    ref_df = ref.per_image.set_index("case_id")
    for cid, row in df.iterrows():
        assert bool(row["gate_prob"] >= 0.5) == bool(row["gt_present"])
        assert row["dice"] == pytest.approx(1.0 if not row["gt_present"] else ref_df.loc[cid, "dice"])
    expected = ((N_EMPTY * 1.0 + sum(ref_df.loc[c, "dice"] for c in df.index if df.loc[c, "gt_present"]))
                / (N_POS + N_EMPTY))
    assert s["mean_dice"] == pytest.approx(expected)
    pm = s["presence"]
    assert pm["roc_auc"] == 1.0 and pm["sensitivity"] == 1.0 and pm["specificity"] == 1.0
    assert pm["ppv"] == 1.0 and pm["npv"] == 1.0 and pm["score"] == "presence classifier clf"
    assert s["ungated"]["n_gated"] == int(df["gated"].sum()) > 0


def test_training_overlap_from_the_card(tmp_path: Path, disks: Path) -> None:
    ds = open_dataset(disks, options={"label_names": ["disk"]})
    val = ["c00", "c01", "c08"]
    seg = segmenter(tmp_path, ds, training={"data": str(disks), "split": {"val_case_ids": val}})
    pred = Predictor.from_weights(seg, device="cpu")
    assert training_cases(pred.card, ds) == {c.case_id for c in ds.labelled_cases()} - set(val)
    res = evaluate(pred, ds, FAST, out_dir=tmp_path / "ev", use_cache=False)
    ov = res.summary["training_overlap"]
    assert ov["n_cases"] == N_POS + N_EMPTY - len(val) and set(ov["case_ids"]) & set(val) == set()
    assert res.per_image.set_index("case_id").loc["c05", "in_training"]
    held = evaluate(pred, ds, FAST, case_ids=val, out_dir=tmp_path / "ev2", use_cache=False)
    assert held.summary["training_overlap"]["n_cases"] == 0
    # another dataset: nothing overlaps
    other = open_dataset(make_disks(tmp_path / "other", seed=3), options={"label_names": ["disk"]})
    assert training_cases(pred.card, other) is None
    # a card recording train_case_ids wins over the derivation
    seg2 = save_tiny_unet(tmp_path / "seg2", label="disk",
                          training={"data": str(disks), "split": {"val_case_ids": val, "train_case_ids": ["c02"]}})
    assert training_cases(read_card(seg2), ds) == {"c02"}


def test_rand_and_warping_error_columns(tmp_path: Path, disks: Path) -> None:
    from engine.metrics import rand_error, warping_error

    ds = open_dataset(disks, options={"label_names": ["disk"]})
    pred = Predictor.from_weights(segmenter(tmp_path, ds), device="cpu")
    res = evaluate(pred, ds, EvalConfig(sweep=False, device="cpu", rand=True, warping=True),
                   out_dir=tmp_path / "ev", use_cache=False)
    df = res.per_image.set_index("case_id")
    from PIL import Image

    cid = "c03"
    pm = np.asarray(Image.open(tmp_path / "ev" / "pred" / f"{cid}.png")) > 0
    gt = ds.load_mask(ds.case(cid)) > 0
    assert df.loc[cid, "rand_error"] == pytest.approx(rand_error(pm, gt))
    assert df.loc[cid, "warping_error"] == pytest.approx(warping_error(pm, gt))
    assert res.summary["mean_warping_error"] == pytest.approx(df["warping_error"].mean())


def test_warping_error_counts_topology_only() -> None:
    from engine.metrics import warping_error

    a = np.zeros((20, 20), bool)
    a[2:8, 2:8] = a[12:18, 12:18] = True  # two objects
    b = np.zeros((20, 20), bool)
    b[2:18, 2:18] = True  # one object
    shifted = np.roll(b, 1, axis=1)
    assert warping_error(shifted, b) == 0.0  # boundary placement is free
    assert warping_error(a, b) > 0  # a merge/split is not
    assert warping_error(np.zeros_like(b), b) == pytest.approx(b.mean())  # a missing object stays wrong


def test_cli_evaluate_json_gate_and_overlap(tmp_path: Path, disks: Path) -> None:
    ds = open_dataset(disks, options={"label_names": ["disk"]})
    seg = segmenter(tmp_path, ds, training={"data": str(disks), "split": {"val_case_ids": ["c00", "c08"]}})
    clf = save_constant_classifier(tmp_path / "clf", 1.0)
    out = tmp_path / "e.json"
    r = subprocess.run([sys.executable, "-m", "engine", "evaluate", str(disks), "--weights", str(seg),
                        "--gate", str(clf), "--gate-threshold", "0.6", "--json", str(out), "--labels", "disk",
                        "--device", "cpu", "--no-cache"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert r.returncode == 0, r.stderr
    j = json.loads(out.read_text())
    assert j["gate"] == {"weights": "clf", "threshold": 0.6}
    assert j["training_overlap"]["n_cases"] == N_POS + N_EMPTY - 2
    assert set(j["gate_presence"]) >= {"auc", "ap", "sensitivity", "specificity", "ppv", "npv"}
    assert j["gate_presence"]["sensitivity"] == 1.0  # P = 0.73 ≥ 0.6 everywhere
    assert "TRAINING cases" in r.stdout


def test_fingerprint_flags_modality_aspect_channels_and_intensity() -> None:
    from engine.domain_profile import build_profile, check_input

    rng = np.random.default_rng(0)
    train = [(np.clip(rng.normal(0.3, 0.05, (1, 420, 580)), 0, 1).astype(np.float32),
              {"format": "tiff", "photometric": 1})
             for _ in range(10)]
    fp = build_profile(train)
    assert fp["modality"] == {} and fp["photometric"] == {}  # a TIFF's integer photometric tag is not DICOM
    assert fp["aspect"][0] == pytest.approx(580 / 420, abs=1e-3) and fp["channels"] == [1]
    same = np.clip(rng.normal(0.3, 0.05, (1, 420, 580)), 0, 1).astype(np.float32)
    assert check_input(fp, same) == {**check_input(fp, same), "far": False, "reasons": []}
    cxr = np.clip(rng.normal(0.6, 0.2, (1, 1024, 1024)), 0, 1).astype(np.float32)
    r = check_input(fp, cxr, {"modality": "CR", "photometric": "MONOCHROME1"})
    text = " ".join(r["reasons"])
    assert r["far"] and "histogram distance" in text and "aspect ratio" in text and "thumbnail" in text
    assert "modality" not in text  # the training data had no modality: nothing to compare
    assert "channel" in " ".join(check_input(fp, np.repeat(same, 3, axis=0))["reasons"])
    assert check_input({}, same) == {"known": False, "far": False, "reasons": [], "hist_distance": None,
                                     "hist_threshold": None, "feature_z": None}
    fp_us = build_profile(train, modality_hint=["US"])
    assert "modality CR" in " ".join(check_input(fp_us, same, {"modality": "CR"})["reasons"])
    assert not check_input(fp_us, same, {"modality": "US"})["far"]
