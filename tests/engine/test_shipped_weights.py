"""The weights shipped in weights/: valid cards, size and license rules, and real segmentation quality.

The quality checks use ../shared/data (skipped cleanly when it is absent) and the model's own
held-out cases recorded in its card, so they test what a user gets out of the box.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.checkpoint import load_checkpoint, read_card
from engine.datasets import open_dataset
from engine.inference import Predictor
from engine.metrics import dice

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights"
SHARED = ROOT.parent / "shared" / "data"
SHIPPED = sorted(p.parent for p in WEIGHTS.glob("*/card.json"))
CLASSIFIERS = sorted(p.parent for p in WEIGHTS.glob("*/classifier.json"))
EXPECTED = {"demo-nerve-phantom", "demo-ptx-phantom", "lung-cxr", "nerve-vessel-us"}


def test_the_four_models_are_shipped() -> None:
    assert {p.name for p in SHIPPED} >= EXPECTED
    readme = (WEIGHTS / "README.md").read_text()
    for p in SHIPPED:
        assert f"`{p.name}`" in readme, f"weights/README.md has no model card for {p.name}"


def test_the_demo_pipeline_ships_its_presence_classifier() -> None:
    assert "demo-nerve-presence" in {p.name for p in CLASSIFIERS}
    readme = (WEIGHTS / "README.md").read_text()
    for p in CLASSIFIERS:
        assert f"`{p.name}`" in readme, f"weights/README.md has no model card for {p.name}"
    gate = read_card(WEIGHTS / "demo-nerve-phantom").gate
    assert gate is not None and gate.weights == "demo-nerve-presence"  # the demo shows classifier → segmenter


@pytest.mark.parametrize("folder", CLASSIFIERS, ids=[p.name for p in CLASSIFIERS])
def test_classifier_card_size_license_reproduce_and_held_out_metrics(folder: Path) -> None:
    files = sorted(f.name for f in folder.iterdir())
    assert files == ["classifier.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    card = read_card(folder, kind="classify")
    assert card.name == folder.name and card.license.get("license") and card.license.get("attribution")
    assert card.training["command"] == f"weights/reproduce.sh {folder.name}"
    assert f"{folder.name})" in (WEIGHTS / "reproduce.sh").read_text()
    assert not str(card.training["data"]).startswith("/")
    assert card.synthetic == folder.name.startswith("demo-")
    assert card.fingerprint.get("n_images", 0) > 0
    text = (folder / "classifier.json").read_text()
    assert "/work/" not in text and "/home/" not in text
    evals = card.metrics.get("evaluations") or []
    assert evals and all(0.0 <= e["roc_auc"] <= 1.0 and e["n_cases"] > 0 for e in evals)
    load_checkpoint(folder, kind="classify")


@pytest.mark.skipif(not (ROOT / "demo_data" / "nerve").is_dir(), reason="demo data not generated")
def test_demo_presence_classifier_separates_phantom_frames() -> None:
    from engine.classify import ClassifierPredictor, evaluate_classifier

    ds = open_dataset(ROOT / "demo_data" / "nerve")  # seed 0: never seen in training (seed 1)
    pos = [c.case_id for c in ds.cases if c.has_mask][:10]
    neg = [c.case_id for c in ds.cases if c.labelled and not c.has_mask][:10]
    m = evaluate_classifier(ClassifierPredictor.from_weights(WEIGHTS / "demo-nerve-presence", device="cpu"),
                            ds, pos + neg)
    assert m["roc_auc"] >= 0.8, m["roc_auc"]


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_card_size_license_and_reproduce_command(folder: Path) -> None:
    files = sorted(f.name for f in folder.iterdir())
    assert files == ["card.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    card = read_card(folder)
    assert card.name == folder.name
    assert card.license.get("license") and card.license.get("attribution")
    assert card.training["command"] == f"weights/reproduce.sh {folder.name}"
    assert f"{folder.name})" in (WEIGHTS / "reproduce.sh").read_text()  # the case branch exists
    data = str(card.training["data"])
    assert not data.startswith("/"), "cards must not name a machine's folders"
    for banned in ("kaggle-nerve-sample", "siim-sample"):  # competition terms: never ship weights trained on them
        assert banned not in data
    assert card.synthetic == folder.name.startswith("demo-")
    text = (folder / "card.json").read_text()
    assert "/work/" not in text and "/home/" not in text
    assert card.fingerprint.get("n_images", 0) > 0  # out-of-domain warnings have something to compare with
    evals = card.metrics.get("evaluations") or []
    assert {e["empty_policy"] for e in evals} >= {"kaggle", "exclude"}
    assert all(0.0 <= e["mean_dice"] <= 1.0 and e["n_cases"] > 0 for e in evals)
    load_checkpoint(folder)  # tensors match the card (hash and shapes verified)


def _holdout_dice(name: str, data: Path, options: dict, n: int) -> dict[str, float]:
    """Mean Dice per class name over the first ``n`` held-out cases of the model's card."""
    pred = Predictor.from_weights(WEIGHTS / name, device="cpu")
    ds = open_dataset(data, options=options)
    ids = pred.card.training["split"]["val_case_ids"][:n]
    assert ids and all(i in ds.case_ids for i in ids)
    scores: dict[str, list[float]] = {}
    for cid in ids:
        gt = ds.load_mask(ds.case(cid))
        mask = pred.predict(ds.load_image_float(cid)).mask
        assert mask.shape == gt.shape
        for k, cname in ds.labels.items():
            if k and (gt == k).any():
                scores.setdefault(cname, []).append(dice(mask == k, gt == k))
    return {k: float(np.mean(v)) for k, v in scores.items()}


@pytest.mark.skipif(not (SHARED / "montgomery-lung").is_dir(), reason="../shared/data/montgomery-lung is absent")
def test_lung_model_segments_held_out_montgomery_patients() -> None:
    got = _holdout_dice("lung-cxr", SHARED / "montgomery-lung", {"label_names": ["lung"]}, 6)
    assert got["lung"] >= 0.95, got


@pytest.mark.skipif(not (SHARED / "usgra-nerve-vessel").is_dir(), reason="../shared/data/usgra-nerve-vessel is absent")
def test_nerve_vessel_model_segments_held_out_scans() -> None:
    card = read_card(WEIGHTS / "nerve-vessel-us")
    ev = next(e for e in card.metrics["evaluations"] if e["id"].endswith("holdout-kaggle"))
    got = _holdout_dice("nerve-vessel-us", SHARED / "usgra-nerve-vessel",
                        {"label_names": ["nerve", "vessel"], "group_regex": r"^(\d{3})\d$"}, 8)
    # far better than chance on real scans, and consistent with the card's recorded held-out figure
    assert got["vessel"] >= 0.5 and got["nerve"] >= 0.2, got
    assert abs(np.mean(list(got.values())) - ev["mean_dice"]) < 0.25, (got, ev["mean_dice"])


@pytest.mark.skipif(not (ROOT / "demo_data" / "nerve").is_dir(), reason="demo data not generated")
def test_demo_model_finds_the_phantom_nerve() -> None:
    pred = Predictor.from_weights(WEIGHTS / "demo-nerve-phantom", device="cpu")
    ds = open_dataset(ROOT / "demo_data" / "nerve")
    pos = [c for c in ds.cases if c.has_mask][:4]
    scores = [dice(pred.predict(ds.load_image_float(c)).mask == 1, ds.load_mask(c) == 1) for c in pos]
    assert np.mean(scores) >= 0.7, scores
    assert json.loads((WEIGHTS / "demo-nerve-phantom" / "card.json").read_text())["synthetic"] is True
