"""The label-error finder: evidence, types, maps, calibration, cache, provenance and the CLI.

Synthetic data only: a paired folder of 64×64 "chest" images with two bright ellipses (two
components, like two lungs) per case, and seven of them corrupted the seven ways the finder
knows (eroded, dilated, shifted, one component dropped, a spurious blob, emptied, swapped with
another case's mask). Most tests judge with *oracle* probabilities (the clean masks, blurred:
what a good model would say) so they test the scoring, not a model; one test cross-fits two tiny
fold models for two epochs to test the honest-probability path end to end, and the CLI test uses a
tiny shipped model whose card claims part of the dataset as its training set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.curation.crossfit import CaseProbs, CrossFitConfig, allowed_tta, honest_probabilities, mask_digest
from engine.curation.suspects import (
    CORRUPTION_TYPE,
    FEATURES,
    SuspectConfig,
    cl_thresholds,
    classify,
    find_suspects,
    fit_logistic,
    load_disagreement_map,
    load_latest_suspects,
    plant,
)
from engine.datasets import open_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S = 64
N_GROUPS, PER_GROUP = 10, 3
#: case → planted corruption (the test's truth).
PLANTED = {"g0_0": "eroded", "g1_0": "dilated", "g2_0": "shifted", "g3_0": "dropped", "g4_0": "blob",
           "g5_0": "emptied", "g6_0": "swapped"}


def _clean_mask(rng: np.random.Generator) -> np.ndarray:
    """Two vertical ellipses ("lungs"), sizes and positions jittered."""
    yy, xx = np.mgrid[:S, :S]
    m = np.zeros((S, S), np.uint8)
    for cx in (S * 0.3, S * 0.7):
        cy = S * 0.5 + rng.uniform(-5, 5)
        ry, rx = rng.uniform(13, 19), rng.uniform(7, 10)
        m[((yy - cy) / ry) ** 2 + ((xx - cx + rng.uniform(-3, 3)) / rx) ** 2 <= 1] = 1
    return m


def _corrupt(m: np.ndarray, kind: str, other: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    if kind == "eroded":
        return ndi.binary_erosion(m > 0, iterations=3).astype(np.uint8)
    if kind == "dilated":
        return ndi.binary_dilation(m > 0, iterations=3).astype(np.uint8)
    if kind == "shifted":
        return np.roll(m, (7, 5), axis=(0, 1))
    if kind == "dropped":
        lab, _ = ndi.label(m)
        return (lab == 1).astype(np.uint8)
    if kind == "blob":
        out = m.copy()
        out[4:11, 26:38] = 1  # above both "lungs", away from them
        return out
    if kind == "emptied":
        return np.zeros_like(m)
    if kind == "swapped":  # another image's mask: here one whose "lungs" lie across (transposed)
        return np.ascontiguousarray(other.T)
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """``(folder, {case_id: clean mask})``: images/ + masks/ PNGs, 30 cases in 10 groups, 7 corrupted."""
    root = tmp_path_factory.mktemp("chest")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    clean: dict[str, np.ndarray] = {}
    for g in range(N_GROUPS):
        for f in range(PER_GROUP):
            cid = f"g{g}_{f}"
            m = _clean_mask(rng)
            clean[cid] = m
            img = rng.normal(0.25, 0.05, (S, S)) + 0.5 * m
            Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(root / "images" / f"{cid}.png")
    for cid, m in clean.items():
        kind = PLANTED.get(cid)
        given = _corrupt(m, kind, clean["g9_2"]) if kind else m
        Image.fromarray(given * 255).save(root / "masks" / f"{cid}.png")
    return root, clean


class OracleProbs:
    """Probabilities a good model would give: the clean mask blurred (what find_suspects reads)."""

    def __init__(self, clean: dict[str, np.ndarray], honest: bool = True, tag: str = "oracle"):
        from scipy import ndimage as ndi

        self._p = {}
        for cid, m in clean.items():
            fg = np.clip(ndi.gaussian_filter(m.astype(np.float32), 1.0), 0.02, 0.98)
            self._p[cid] = np.stack([1 - fg, fg]).astype(np.float32)
        self.honest = honest
        self.digest = tag
        self.calls = 0

    @property
    def case_ids(self) -> list[str]:
        return sorted(self._p)

    def case(self, case_id: str) -> CaseProbs:
        self.calls += 1
        return CaseProbs(self._p[case_id], self.honest, "oracle (test)", None, ("oracle",))

    def describe(self) -> dict:
        return {"digest": self.digest, "sources": [{"name": "oracle"}]}


def _dataset(folder: Path, workspace: Path):
    return open_dataset(folder, options={"label_names": ["lung"]}, workspace=workspace)


# ------------------------------------------------------------------------------------------ building blocks

def test_plant_makes_each_corruption_and_refuses_what_does_not_apply() -> None:
    rng = np.random.default_rng(0)
    m = _clean_mask(rng)
    other = np.roll(_clean_mask(rng), 9, axis=0)
    area = int(m.sum())
    made = {k: plant(m, k, np.random.default_rng(1), other=other) for k in CORRUPTION_TYPE}
    assert made["eroded"].sum() < area < made["dilated"].sum()
    assert made["emptied"].sum() == 0
    assert made["dropped"].sum() < area and made["dropped"].sum() > 0.2 * area
    assert made["blob"].sum() > area and (made["blob"] & ~m.astype(bool)).sum() > 0
    assert made["shifted"].sum() > 0.8 * area and not np.array_equal(made["shifted"], m)
    assert np.array_equal(made["swapped"], other)
    one = np.zeros((S, S), np.uint8)
    one[20:40, 20:40] = 1
    assert plant(one, "dropped", rng) is None  # a single component cannot lose "one of them"
    assert plant(np.zeros((S, S), np.uint8), "eroded", rng) is None
    with pytest.raises(Exception, match="unknown corruption"):
        plant(m, "melted", rng)


def test_confident_learning_thresholds_and_logistic_fit() -> None:
    lab = np.array([[0, 0, 1, 1]], np.uint8)
    p1 = np.array([[0.1, 0.3, 0.9, 0.7]], np.float32)
    t = cl_thresholds([lab], [np.stack([1 - p1, p1])], 2)
    assert t.round(3).tolist() == [0.8, 0.8]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.2 * rng.normal(size=200) > 0).astype(float)
    w, _ = fit_logistic(x, y, l2=0.01)
    assert w[0] > 0 > w[1] and abs(w[0]) > abs(w[1])


def test_allowed_tta_follows_the_cards_training_augmentation() -> None:
    from engine.checkpoint import ModelCard
    from engine.models import ModelSpec

    def card(aug):
        return ModelCard(name="m", spec=ModelSpec(arch="unet_classic"), labels={0: "bg", 1: "fg"},
                         training={"config": {"augment": aug}} if aug is not None else {})

    assert allowed_tta(card({"hflip": 0.5, "vflip": 0.0})) == ("none", "flip")
    assert allowed_tta(card({"hflip": 0.0, "vflip": 0.0})) == ("none",)
    assert allowed_tta(card({"hflip": 0.5, "vflip": 0.5})) == ("none", "flip", "flip4")
    assert allowed_tta(card(None)) == ("none",)


# ------------------------------------------------------------------------------------------ scoring

def test_every_corruption_is_found_typed_and_mapped(chest, workspace: Path) -> None:
    folder, clean = chest
    ds = _dataset(folder, workspace)
    rep = find_suspects(ds, OracleProbs(clean))
    assert len(rep.cases) == N_GROUPS * PER_GROUP  # every labelled case is listed
    assert [s.rank for s in rep.cases] == list(range(1, len(rep.cases) + 1))
    assert all(a.score >= b.score for a, b in zip(rep.cases, rep.cases[1:]))
    top = {s.case_id for s in rep.cases[:len(PLANTED)]}
    assert top == set(PLANTED), [(s.case_id, round(s.score, 3)) for s in rep.cases[:10]]
    worst_clean = max(s.score for s in rep.cases if s.case_id not in PLANTED)
    assert all(rep.get(c).score > worst_clean for c in PLANTED)
    for cid, kind in PLANTED.items():
        s = rep.get(cid)
        assert s.type == CORRUPTION_TYPE[kind], (cid, kind, s.type, s.explained, s.reasons)
        assert s.reasons and all(isinstance(r, str) and r for r in s.reasons)
        assert s.provenance == "oracle (test)" and s.honest
        assert 0.0 <= s.score <= 1.0 and set(FEATURES) <= set(s.evidence)
    eroded = rep.get("g0_0")
    assert any("inside" in r and "boundary off by 3 px" in r for r in eroded.reasons), eroded.reasons
    assert any("outside" in r for r in rep.get("g1_0").reasons)
    assert any("shifted by" in r for r in rep.get("g2_0").reasons)
    assert any("label is empty" in r for r in rep.get("g5_0").reasons)
    # the map lights up where the corruption is
    blob = np.zeros((S, S), bool)
    blob[4:11, 26:38] = True
    mp = load_disagreement_map(ds, "g4_0")
    assert mp.shape == (S, S) and mp.dtype == np.uint8
    lit = mp > 0
    assert (lit & blob).sum() >= 0.8 * blob.sum() and (lit & blob).sum() >= 0.6 * lit.sum()
    dropped = (clean["g3_0"] > 0) & ~(np.asarray(Image.open(folder / "masks" / "g3_0.png")) > 0)
    mp = load_disagreement_map(rep, "g3_0")
    assert ((mp > 0) & dropped).sum() >= 0.7 * dropped.sum()
    assert (load_disagreement_map(rep, "g0_1") > 0).sum() < 0.1 * dropped.sum()  # a clean case stays dark
    # calibration happened on the dataset's own planted corruptions and is reported
    cal = rep.calibration
    assert cal["n_positive"] >= N_GROUPS * PER_GROUP and cal["features"] == list(FEATURES)
    assert set(cal["kinds"]) == set(CORRUPTION_TYPE) and "planted corruptions" in cal["how"]
    assert rep.stats["by_type"]["empty"] >= 1 and rep.stats["n_not_honest"] == 0


def test_a_correction_rescores_one_case_only(chest, workspace: Path, tmp_path: Path) -> None:
    import shutil

    src, clean = chest
    folder = tmp_path / "chest"
    shutil.copytree(src, folder)
    ds = _dataset(folder, workspace)
    probs = OracleProbs(clean, tag="cache-test")
    first = find_suspects(ds, probs)
    assert first.stats["n_computed"] == len(first.cases) and first.stats["n_cached"] == 0
    again = find_suspects(ds, probs)
    assert again.stats["n_computed"] == 0 and again.stats["seconds"]["calibration"] == 0.0
    assert [(s.case_id, s.score) for s in again.cases] == [(s.case_id, s.score) for s in first.cases]
    # a reviewer corrects the eroded mask: only that case is judged again, and it is no longer suspect
    Image.fromarray(clean["g0_0"] * 255).save(folder / "masks" / "g0_0.png")
    calls = probs.calls
    fixed = find_suspects(_dataset(folder, workspace), probs)
    assert fixed.stats["n_computed"] == 1 and probs.calls == calls + 1
    assert fixed.get("g0_0").rank > len(PLANTED) and fixed.get("g0_0").mask_digest == mask_digest(clean["g0_0"])
    assert fixed.calibration == first.calibration  # one correction does not refit the calibration
    latest = load_latest_suspects(ds)
    assert latest is not None and latest.get("g0_0").score == round(fixed.get("g0_0").score, 6)


def test_classify_prefers_the_explanation_that_covers_the_disagreement() -> None:
    base = {"label_empty": False, "shift_px": [0.0, 0.0], "iou": 0.9, "iou_shifted": 0.9, "shift_explains": 0.0}
    cls = {"xor_px": 100, "matched_xor_px": 100, "missing_px": 0, "extra_px": 0, "boundary_consistency": 0.9}
    assert classify({**base, "classes": [cls]})[0] == "boundary"
    assert classify({**base, "iou": 0.5, "classes": [{**cls, "boundary_consistency": 0.2}]})[0] == "mismatched"
    assert classify({**base, "classes": [{**cls, "boundary_consistency": 0.2}]})[0] == "boundary"  # small, diffuse
    assert classify({**base, "classes": [{**cls, "missing_px": 80, "matched_xor_px": 20}]})[0] == "missing_region"
    assert classify({**base, "classes": [{**cls, "extra_px": 70, "matched_xor_px": 30}]})[0] == "extra_region"
    shifted = {**base, "shift_px": [6.0, 0.0], "iou_shifted": 0.95, "shift_explains": 0.9}
    assert classify({**shifted, "classes": [{**cls, "boundary_consistency": 0.3}]})[0] == "shifted"
    assert classify({**base, "label_empty": True, "classes": []})[0] == "empty"


# ------------------------------------------------------------------------------------------ honest probabilities

def _tiny_model(folder: Path, data: Path, train_ids: list[str], val_ids: list[str]) -> Path:
    from tests.support.helpers import save_tiny_unet

    save_tiny_unet(folder, label="lung", training={
        "data": str(data), "split": {"train_case_ids": train_ids, "val_case_ids": val_ids},
        "config": {"augment": {"hflip": 0.5, "vflip": 0.0}}})
    return folder


def test_shipped_model_provenance_says_not_honest_for_its_training_cases(chest, workspace: Path,
                                                                        tmp_path: Path) -> None:
    folder, _ = chest
    ds = _dataset(folder, workspace)
    ids = ds.case_ids
    train, val = ids[:20], ids[20:]
    model = _tiny_model(tmp_path / "tiny-lung", folder, train, val)
    probs = honest_probabilities(ds, [str(model)], device="cpu")
    cp = probs.case(train[0])
    assert not cp.honest and "not honest" in cp.provenance and cp.probs.shape == (2, S, S)
    assert np.allclose(cp.probs.sum(0), 1.0, atol=1e-3)
    held = probs.case(val[0])
    assert held.honest and held.provenance == "shipped model tiny-lung, case not in its training set"
    rep = find_suspects(ds, probs)
    assert rep.stats["n_not_honest"] == len(train)
    s = rep.get(train[0])
    assert not s.honest and "not honest" in s.provenance
    assert any("trained on this case" in r for r in s.reasons)
    assert rep.get(val[0]).honest
    with pytest.raises(Exception, match="did not train on"):
        honest_probabilities(ds, [str(model)], tta="flip4", device="cpu")
    again = honest_probabilities(ds, [str(model)], device="cpu")  # cached: no model pass
    assert again.seconds["n_predicted"] == 0 and again.digest == probs.digest


def test_crossfit_gives_every_case_an_out_of_fold_judge(chest, workspace: Path) -> None:
    from engine.augment import Preprocess
    from engine.curation.crossfit import crossfit_status, load_crossfit
    from engine.models import ModelSpec

    folder, _ = chest
    ds = _dataset(folder, workspace)
    cfg = CrossFitConfig(k=2, epochs=2, batch_size=8, model=ModelSpec(arch="unet_classic", base_channels=4,
                                                                        encoder_depth=2),
                         preprocess=Preprocess(size=(32, 32)), augment="none", device="cpu")
    probs = honest_probabilities(ds, crossfit_config=cfg, device="cpu")
    cf = probs.crossfit
    assert cf is not None and len(cf.model_dirs) == 2 and set(cf.folds) == set(ds.case_ids)
    groups = {}
    for c in ds.cases:  # grouped folds: a group never spans two folds
        groups.setdefault(c.group_id, set()).add(cf.folds[c.case_id])
    assert all(len(v) == 1 for v in groups.values())
    for cid in ("g0_0", "g5_1"):
        cp = probs.case(cid)
        assert cp.honest and cp.provenance == f"out-of-fold: k=2 cross-fit of unet_classic, fold {cf.folds[cid]}"
        assert cp.fold_std is not None and cp.fold_std.shape == (2, S, S)
        card = json.loads((cf.model_dirs[cf.folds[cid]] / "card.json").read_text())
        assert cid not in card["training"]["split"]["train_case_ids"]  # its judge never trained on it
    assert load_crossfit(ds, cfg) is not None and crossfit_status(ds, cfg)["state"] == "finished"
    rep = find_suspects(ds, probs)
    assert len(rep.cases) == len(ds) and rep.stats["n_not_honest"] == 0
    assert all(s.provenance.startswith("out-of-fold") for s in rep.cases)


def test_crossfit_runs_as_a_background_job_with_progress(tmp_path: Path) -> None:
    import time

    from engine.augment import Preprocess
    from engine.curation.crossfit import crossfit_status, start_crossfit_job
    from engine.jobs import job_status
    from engine.models import ModelSpec
    from tests.support.helpers import make_dataset

    root = make_dataset(tmp_path / "data", n_subjects=4, frames=3)
    ws = tmp_path / "ws"
    cfg = CrossFitConfig(k=2, epochs=1, model=ModelSpec(arch="unet_classic", base_channels=4, encoder_depth=2),
                         preprocess=Preprocess(size=(32, 32)), augment="none", device="cpu")
    job = start_crossfit_job(root, cfg, workspace=ws)
    seen = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        st = job_status(job.run_dir, log_lines=20)
        seen.add(st["state"])
        if st["state"] not in ("starting", "running"):
            break
        time.sleep(0.5)
    assert st["state"] == "finished", st
    assert st["fraction"] == 1.0 and "2 fold models" in st["message"]
    ds = open_dataset(root, workspace=ws)
    assert crossfit_status(ds, cfg)["state"] == "finished"


# ------------------------------------------------------------------------------------------ CLI

def test_cli_json_lists_every_case_most_suspicious_first_and_matches_the_function(
        chest, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.__main__ import main

    folder, _ = chest
    ds = _dataset(folder, workspace)
    model = _tiny_model(tmp_path / "tiny-cli", folder, ds.case_ids[:15], ds.case_ids[15:])
    out = tmp_path / "suspects.json"
    assert main(["suspects", str(folder), "--weights", str(model), "--json", str(out), "--top", "3",
                 "--labels", "lung", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "most suspicious (of 30)" in printed and "(every case)" in printed
    assert printed.count("\n   ") <= 4  # --top 3 prints three cases
    data = json.loads(out.read_text())
    cases = data["cases"]
    assert len(cases) == len(ds.labelled_cases())
    assert all({"case_id", "score", "type", "reasons", "provenance"} <= set(c) for c in cases)
    assert [c["score"] for c in cases] == sorted((c["score"] for c in cases), reverse=True)
    assert {c["type"] for c in cases} <= {"missing_region", "extra_region", "boundary", "shifted", "empty",
                                          "mismatched"}
    assert sum("not honest" in c["provenance"] for c in cases) == 15
    # the page reads the same function's saved report: same order, same scores
    latest = load_latest_suspects(ds)
    assert latest is not None
    assert [(s.case_id, round(s.score, 6)) for s in latest.cases] == [(c["case_id"], c["score"]) for c in cases]
    assert not math.isnan(cases[0]["score"])


def test_cli_errors_say_what_to_do(chest, workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.__main__ import main

    folder, _ = chest
    assert main(["suspects", str(folder), "--json", "-"]) == 2
    assert "--weights NAME" in capsys.readouterr().err
    assert main(["suspects", str(folder), "--weights", "no-such-model", "--json", "-"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "Fix:" in err
    assert main(["suspects", str(folder), "--folds", "1", "--json", "-"]) == 2
    assert "--folds" in capsys.readouterr().err


def test_suspect_config_round_trips_and_validates() -> None:
    cfg = SuspectConfig(prior=0.2, calibration_plants=3)
    assert SuspectConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(Exception, match="prior"):
        SuspectConfig(prior=1.5)
