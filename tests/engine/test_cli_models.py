"""CLI contracts of the model commands (engine/cli/models.py): ``predict``, ``evaluate``, ``weights
list/show/publish`` and ``tune-post``, run in-process through ``engine.__main__.main`` (and once as
``python -m engine`` in a subprocess).

Data: the ``tiny`` phantoms (Kaggle-nerve TIFFs 420×580, SIIM DICOMs 256×256) for prediction, and a
paired folder of 64×64 PNG disks (8 with a disk, 4 empty, 1 unlabelled) for evaluation.
Model: a tiny classic U-Net (base width 4, 64×64 input) labelled ``nerve`` whose foreground bias is
centred so it predicts about half of each image.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.__main__ import main
from engine.checkpoint import (
    CARD_FILE,
    load_checkpoint,
    read_card,
)
from engine.datasets import open_dataset
from engine.inference import Predictor
from engine.io import load_image
from engine.postprocess import PostProcessConfig
from tests.support import badinput as B
from tests.support.helpers import N_EMPTY, N_POS, make_disks, np_dice, save_tiny_unet

REPO = Path(__file__).resolve().parents[2]
MODEL = "clitest-nerve-unet"  # unique: names in the repo's weights/ win over <workspace>/models
VAL_DICE = 0.6172
HOLDOUT = ["c01", "c04", "c09"]


# ------------------------------------------------------------------------------------ helpers

def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def copy_model(src: Path, dest: Path, name: str, **changes) -> Path:
    """Copy a weights folder under a new name (card edits leave the tensors and their hash alone)."""
    shutil.copytree(src, dest)
    card = read_card(dest).replace(name=name, **changes)
    (dest / CARD_FILE).write_text(json.dumps(card.to_dict()))
    return dest


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ws_cli_models")
    mp = pytest.MonkeyPatch()
    mp.setenv("SEGWB_WORKSPACE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return B.tiny_demo(tmp_path_factory)


@pytest.fixture(scope="module")
def disks(ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_disks(tmp_path_factory.mktemp("data") / "disks")


@pytest.fixture(scope="module")
def model(ws: Path, demo: Path) -> Path:
    """The tiny U-Net labelled ``nerve`` (64×64 input), foreground bias centred on one nerve TIFF."""
    img, _ = load_image(demo / "nerve" / "train" / "1_1.tif")
    return save_tiny_unet(ws / "models" / MODEL, seed=1, centre_on=img,
                          metrics={"val_dice": VAL_DICE, "per_class_dice": {"nerve": VAL_DICE},
                                   "empty_policy": "kaggle"},
                          training={"split": {"k": 3, "val_case_ids": HOLDOUT}})


@pytest.fixture(scope="module")
def predictor(model: Path) -> Predictor:
    return Predictor.from_weights(MODEL, device="cpu")


def pick_tiffs(demo: Path, n: int) -> list[Path]:
    return sorted(p for p in (demo / "nerve" / "train").glob("*.tif") if not p.stem.endswith("_mask"))[:n]


# ------------------------------------------------------------------------------------ predict

def test_predict_files_and_folders_write_label_pngs_at_input_size(ws: Path, demo: Path, predictor: Predictor,
                                                                   tmp_path: Path, capsys) -> None:
    tiffs = pick_tiffs(demo, 4)
    folder = tmp_path / "in"
    folder.mkdir()
    for t in tiffs[:3]:
        shutil.copy(t, folder / t.name)
    shutil.copy(tiffs[0].with_name(tiffs[0].stem + "_mask.tif"), folder / (tiffs[0].stem + "_mask.tif"))  # skipped
    dicoms = sorted((demo / "ptx").rglob("*.dcm"))
    out, rle = tmp_path / "out", tmp_path / "sub.csv"
    rc, text, _ = run(capsys, "predict", folder, tiffs[3], demo / "ptx", "--weights", MODEL, "--out", out,
                      "--device", "cpu", "--rle", rle)
    assert rc == 0
    inputs = {p.stem: p for p in [*tiffs, *dicoms]}
    assert len(inputs) == 4 + len(dicoms) == 12
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.png" for s in inputs)
    assert f"wrote {len(inputs)} masks to {out} with {MODEL} on cpu" in text and "failed" not in text
    written = {}
    for stem, src in inputs.items():
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "L"
            mask = np.asarray(im)
        img, _ = load_image(src)
        assert mask.dtype == np.uint8 and mask.shape == img.shape[1:], stem
        np.testing.assert_array_equal(mask, predictor.predict(img).mask)  # the single-image API agrees
        written[stem] = mask
    assert {(420, 580), (256, 256)} == {m.shape for m in written.values()}
    fractions = [float((m > 0).mean()) for m in written.values()]
    assert set(np.unique(np.concatenate([m.ravel() for m in written.values()]))) == {0, 1}
    assert 0.05 < np.mean(fractions) < 0.95
    # the Kaggle submission CSV decodes back to exactly the written masks
    from engine.rle import decode

    with open(rle, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["img", "pixels"] and sorted(r[0] for r in rows[1:]) == sorted(inputs)
    for stem, pixels in rows[1:]:
        np.testing.assert_array_equal(decode(pixels, written[stem].shape, "kaggle"), written[stem])


def test_predict_siim_rle_and_same_stem_in_two_folders(ws: Path, demo: Path, model: Path, tmp_path: Path,
                                                       capsys) -> None:
    from engine.rle import decode_union, read_siim_csv

    t = pick_tiffs(demo, 1)[0]
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(t, tmp_path / sub / t.name)
    dicoms = sorted((demo / "ptx").rglob("*.dcm"))
    out, rle = tmp_path / "out", tmp_path / "siim.csv"
    rc, text, _ = run(capsys, "predict", tmp_path / "a", tmp_path / "b", *dicoms[:3], "--weights", MODEL,
                      "--out", out, "--device", "cpu", "--rle", rle, "--rle-format", "siim")
    assert rc == 0 and "RLE (siim)" in text
    # the same stem from two folders is kept twice: both are named by their path below the inputs'
    # common folder (suffix included), so neither overwrites the other
    sfx = t.suffix.lstrip(".").lower()
    first, second = f"a_{t.stem}_{sfx}", f"b_{t.stem}_{sfx}"
    expected = {first, second, *(d.stem for d in dicoms[:3])}
    assert {p.stem for p in out.iterdir()} == expected
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{first}.png")),
                                  np.asarray(Image.open(out / f"{second}.png")))
    rows, _ = read_siim_csv(rle)
    assert set(rows) == expected
    for stem, rles in rows.items():
        mask = np.asarray(Image.open(out / f"{stem}.png"))
        assert len(rles) == (1 if mask.any() else 0)  # one row per image; '-1' when empty
        np.testing.assert_array_equal(decode_union(rles, mask.shape, "siim"), mask)


def test_predict_tta_flag_matches_the_api(ws: Path, demo: Path, model: Path, tmp_path: Path, capsys) -> None:
    files = pick_tiffs(demo, 2)
    masks = {}
    for label, flags in (("none", []), ("flip", ["--tta"]), ("flip4", ["--tta", "flip4"])):
        out = tmp_path / label
        assert run(capsys, "predict", *files, "--weights", MODEL, "--out", out, "--device", "cpu", *flags)[0] == 0
        api = Predictor.from_weights(MODEL, device="cpu", tta=label)
        for f in files:
            mask = np.asarray(Image.open(out / f"{f.stem}.png"))
            np.testing.assert_array_equal(mask, api.predict(load_image(f)[0]).mask, err_msg=f"{label} {f.name}")
            masks[label, f.stem] = mask
    assert any((masks["none", f.stem] != masks["flip", f.stem]).any() for f in files)  # the flag is not ignored
    assert any((masks["flip", f.stem] != masks["flip4", f.stem]).any() for f in files)


def test_predict_names_a_corrupt_file_and_writes_the_others(ws: Path, demo: Path, model: Path, tmp_path: Path,
                                                            capsys) -> None:
    good = pick_tiffs(demo, 2)
    folder = tmp_path / "in"
    folder.mkdir()
    for t in good:
        shutil.copy(t, folder / t.name)
    B.truncate(Path(shutil.copy(good[0], folder / "broken.tif")), keep=0.3)
    (folder / "empty.png").write_bytes(b"")
    out, rle = tmp_path / "out", tmp_path / "sub.csv"
    rc, text, _ = run(capsys, "predict", folder, "--weights", MODEL, "--out", out, "--device", "cpu", "--rle", rle)
    assert rc == 0  # some files were written
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t.stem}.png" for t in good)
    assert f"wrote {len(good)} masks" in text
    failed = [line for line in text.splitlines() if line.strip().startswith("failed:")]
    assert len(failed) == 2
    for name in ("broken.tif", "empty.png"):
        line = next(f for f in failed if name in f)
        assert str(folder / name) in line and "Fix:" in line  # names the file and says what to do
    with open(rle, newline="") as fh:
        assert sorted(r[0] for r in list(csv.reader(fh))[1:]) == sorted(t.stem for t in good)
    # nothing readable at all → exit code 1
    rc, text, _ = run(capsys, "predict", folder / "broken.tif", "--weights", MODEL, "--out", tmp_path / "out2")
    assert rc == 1 and "wrote 0 masks" in text and "broken.tif" in text
    assert not list((tmp_path / "out2").iterdir())


def test_predict_unknown_weights_or_missing_input_is_a_user_error(ws: Path, demo: Path, model: Path,
                                                                  tmp_path: Path, capsys) -> None:
    files = pick_tiffs(demo, 1)
    rc, _, err = run(capsys, "predict", *files, "--weights", "no-such-model", "--out", tmp_path / "o1")
    assert rc == 2
    assert err.startswith("error: ") and "no weights named 'no-such-model'" in err
    assert "Fix: available:" in err and MODEL in err  # says what exists
    assert not (tmp_path / "o1").exists()
    rc, _, err = run(capsys, "predict", tmp_path / "missing.tif", "--weights", MODEL, "--out", tmp_path / "o2")
    assert rc == 2 and "missing.tif" in err and "input not found" in err and not (tmp_path / "o2").exists()
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "notes.txt").write_text("x")
    rc, _, err = run(capsys, "predict", tmp_path / "txt", "--weights", MODEL, "--out", tmp_path / "o3")
    assert rc == 2 and "no image files found" in err
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(files[0]), "--out", str(tmp_path / "o4")])  # --weights is required
    assert exc.value.code == 2


def test_python_dash_m_engine_exit_status_and_message(ws: Path, model: Path, demo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SEGWB_WORKSPACE": str(ws)}
    argv = [sys.executable, "-m", "engine", "predict", str(pick_tiffs(demo, 1)[0]), "--weights", "no-such-model",
            "--out", str(tmp_path / "o")]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "no weights named 'no-such-model'" in proc.stderr and MODEL in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ evaluate

def test_evaluate_json_and_per_image_csv(ws: Path, disks: Path, model: Path, tmp_path: Path, capsys) -> None:
    js = tmp_path / "eval" / "nerve.json"
    rc, text, _ = run(capsys, "evaluate", disks, "--weights", MODEL, "--json", js, "--device", "cpu",
                      "--labels", "nerve")
    assert rc == 0
    s = json.loads(js.read_text())
    assert {"mean_dice", "mean_iou", "per_class", "n_cases", "empty_policy", "settings", "dice_gt_empty",
            "presence", "model", "dataset", "cases", "results_folder", "n_failed"} <= set(s)
    assert s["n_cases"] == N_POS + N_EMPTY and s["n_failed"] == 0 and s["cases"] == "all labelled"
    assert s["per_class"] == {"nerve": pytest.approx(s["mean_dice"])}
    assert s["empty_policy"] == "kaggle" and s["settings"]["empty_policy"] == "kaggle"
    assert s["settings"]["tta"] == "none" and s["settings"]["post"]["threshold"] == 0.5
    assert s["settings"]["class_map"] == {"nerve": "nerve"}
    assert s["settings"]["weights_sha256"] == read_card(model).tensors_sha256
    assert s["model"] == MODEL and Path(s["dataset"]) == disks.resolve()
    assert f"mean Dice {s['mean_dice']:.4f}" in text and "over 12 cases" in text
    csv_path = js.with_suffix(".csv")
    df = pd.read_csv(csv_path, dtype={"case_id": str})
    assert len(df) == s["n_cases"] and sorted(df["case_id"]) == [f"c{i:02d}" for i in range(N_POS + N_EMPTY)]
    assert df["dice"].mean() == pytest.approx(s["mean_dice"], abs=1e-9)
    assert df["dice_nerve"].tolist() == pytest.approx(df["dice"].tolist())
    # every row's Dice is what the saved prediction and the mask file on disk give
    from engine.evaluation import prediction_path

    for row in df.itertuples():
        pred = np.asarray(Image.open(prediction_path(Path(s["results_folder"]), row.case_id)))
        gt = np.asarray(Image.open(disks / "masks" / f"{row.case_id}.png")) > 127
        assert row.dice == pytest.approx(np_dice(pred, gt), abs=1e-9), row.case_id
        assert row.gt_area == int(gt.sum()) and row.pred_area == int((pred > 0).sum())
    assert 0 < s["mean_dice"] < 1 and df["dice"].nunique() > 3


def test_evaluate_empty_policy_flag(ws: Path, disks: Path, model: Path, tmp_path: Path, capsys) -> None:
    """With a threshold no pixel reaches, every prediction is empty: Kaggle scores the 4 empty images 1,
    ``exclude`` leaves them out."""
    res = {}
    for policy in ("kaggle", "exclude"):
        js = tmp_path / f"{policy}.json"
        assert run(capsys, "evaluate", disks, "--weights", MODEL, "--json", js, "--device", "cpu",
                   "--threshold", "0.999", "--empty-policy", policy)[0] == 0
        res[policy] = (json.loads(js.read_text()), pd.read_csv(js.with_suffix(".csv"), dtype={"case_id": str}))
    (k, kdf), (x, xdf) = res["kaggle"], res["exclude"]
    assert (kdf["pred_area"] == 0).all() and k["settings"]["post"]["threshold"] == 0.999
    assert k["mean_dice"] == pytest.approx(N_EMPTY / (N_POS + N_EMPTY))
    assert x["mean_dice"] == 0.0 and x["empty_policy"] == "exclude"
    assert k["n_cases"] == x["n_cases"] == len(xdf) == N_POS + N_EMPTY
    assert xdf.loc[xdf["gt_area"] == 0, "dice"].isna().all() and xdf["dice"].notna().sum() == N_POS
    assert xdf["dice"].mean() == x["mean_dice"]


def test_evaluate_holdout_and_cases_file(ws: Path, disks: Path, model: Path, tmp_path: Path, capsys) -> None:
    full = tmp_path / "full.json"
    assert run(capsys, "evaluate", disks, "--weights", MODEL, "--json", full, "--device", "cpu")[0] == 0
    per_case = pd.read_csv(full.with_suffix(".csv"), dtype={"case_id": str}).set_index("case_id")["dice"]
    hold = tmp_path / "hold.json"
    assert run(capsys, "evaluate", disks, "--weights", MODEL, "--json", hold, "--device", "cpu", "--holdout")[0] == 0
    h = json.loads(hold.read_text())
    hdf = pd.read_csv(hold.with_suffix(".csv"), dtype={"case_id": str})
    assert h["cases"] == "holdout" and h["n_cases"] == len(HOLDOUT) == len(hdf)
    assert sorted(hdf["case_id"]) == sorted(HOLDOUT)
    assert h["mean_dice"] == pytest.approx(per_case[HOLDOUT].mean(), abs=1e-9)
    ids = tmp_path / "ids.txt"
    ids.write_text("c02\n\nc10\n")
    cf = tmp_path / "cases.json"
    assert run(capsys, "evaluate", disks, "--weights", MODEL, "--json", cf, "--device", "cpu", "--cases", ids)[0] == 0
    c = json.loads(cf.read_text())
    assert c["cases"] == f"file {ids}" and c["n_cases"] == 2
    assert c["mean_dice"] == pytest.approx(per_case[["c02", "c10"]].mean(), abs=1e-9)
    ids.write_text("c02\nnot-a-case\n")
    rc, _, err = run(capsys, "evaluate", disks, "--weights", MODEL, "--json", cf, "--cases", ids)
    assert rc == 2 and "not-a-case" in err and "not in the dataset" in err
    copy_model(model, ws / "models" / "clitest-noval", "clitest-noval", training={})
    rc, _, err = run(capsys, "evaluate", disks, "--weights", "clitest-noval", "--json", cf, "--holdout")
    assert rc == 2 and "records no validation cases" in err and "drop --holdout" in err


# ------------------------------------------------------------------------------------ weights

def test_weights_list_and_show(ws: Path, model: Path, tmp_path: Path, capsys) -> None:
    js = tmp_path / "list.json"
    rc, text, _ = run(capsys, "weights", "list", "--json", js)
    assert rc == 0
    size_mb = round((model / "model.safetensors").stat().st_size / 1e6, 2)
    line = next(ln for ln in text.splitlines() if ln.startswith(MODEL + " "))
    assert "trained here" in line and "unet_classic" in line and "classes background/nerve" in line
    assert f"{size_mb:.2f} MB" in line
    entry = next(e for e in json.loads(js.read_text()) if e["name"] == MODEL)
    assert entry["classes"] == ["background", "nerve"] and entry["size_mb"] == size_mb
    assert entry["metrics"] == read_card(model).metrics and Path(entry["folder"]) == model
    assert entry["origin"] == "trained here" and entry["arch"] == "unet_classic"
    rc, text, _ = run(capsys, "weights", "show", MODEL)
    assert rc == 0
    assert json.loads(text) == json.loads(json.dumps(read_card(model).to_dict()))
    rc, _, err = run(capsys, "weights", "show", "no-such-model")
    assert rc == 2 and "no weights named" in err


def test_weights_list_shows_the_metrics_training_records(ws: Path, model: Path, capsys) -> None:
    rc, text, _ = run(capsys, "weights", "list")
    line = next(ln for ln in text.splitlines() if ln.startswith(MODEL + " "))
    assert rc == 0 and f"val Dice {VAL_DICE:.3f} (nerve {VAL_DICE:.3f})" in line


def _val_ids(disks: Path) -> list[str]:
    from engine.splits import SplitSpec
    from engine.training.prepare import split_cases

    cfg = SimpleNamespace(folds_file=None, split=SplitSpec(k=3, seed=0, val_fold=0, stratify=True))
    _, val, _ = split_cases(cfg, open_dataset(disks).labelled_cases())
    return [c.case_id for c in val]


def _make_run(model: Path, run_dir: Path, disks: Path, with_ids: bool, n_val: int | None = None) -> Path:
    """A training run folder as `engine train` leaves it: <run>/best/{model.safetensors, card.json}."""
    val = _val_ids(disks)
    split = {"source": "grouped_kfold", "k": 3, "val_fold": 0, "seed": 0, "stratify": True,
             "n_val": len(val) if n_val is None else n_val}
    if with_ids:
        split["val_case_ids"] = val
    training = {"data": str(disks), "layout": "paired", "dataset_options": {"threshold": 127}, "split": split,
                "run_dir": str(run_dir), "argv": "python -m engine train --data somewhere", "epochs_run": 3}
    copy_model(model, run_dir / "best", "clitest-run", training=training, metrics={"val_dice": 0.5})
    return run_dir


def test_weights_publish_copies_the_model_and_records_evaluations(ws: Path, disks: Path, model: Path,
                                                                  tmp_path: Path, capsys) -> None:
    from safetensors.numpy import load_file

    run_dir = _make_run(model, tmp_path / "run", disks, with_ids=True)
    val = _val_ids(disks)
    dest = ws / "models" / "clitest-published"
    cmd = "python -m engine train --data disks --epochs 3"
    rc, text, _ = run(capsys, "weights", "publish", run_dir, "--dest", dest, "--name", "clitest-published",
                      "--command", cmd, "--eval", f"hold={disks}:holdout", "--eval", f"all={disks}")
    assert rc == 0 and f"published {dest}" in text
    src_t, dst_t = load_file(str(run_dir / "best" / "model.safetensors")), load_file(str(dest / "model.safetensors"))
    assert src_t.keys() == dst_t.keys() and all(np.array_equal(src_t[k], dst_t[k]) for k in src_t)
    _, card = load_checkpoint(dest)  # hash in the card matches the copied tensors
    assert card.name == "clitest-published" and card.labels == {0: "background", 1: "nerve"}
    assert card.training["command"] == cmd
    assert "run_dir" not in card.training and "argv" not in card.training  # machine-specific, dropped
    assert card.training["split"]["val_case_ids"] == val and card.training["data"] == str(disks)
    assert card.metrics["val_dice"] == 0.5
    evals = {e["id"]: e for e in card.metrics["evaluations"]}
    assert set(evals) == {"hold-kaggle", "hold-exclude", "all-kaggle", "all-exclude"}
    for eid, e in evals.items():
        holdout = eid.startswith("hold")
        assert e["n_cases"] == (len(val) if holdout else N_POS + N_EMPTY)
        assert e["empty_policy"] == eid.split("-")[1] and Path(e["dataset"]) == disks.resolve()
        assert e["cases"] == ("holdout (validation fold)" if holdout else "all labelled")
        assert e["per_class"] == {"foreground": pytest.approx(e["mean_dice"])}
        assert f"{eid.split('-')[0]} [{e['empty_policy']}]: mean Dice {e['mean_dice']:.4f}" in text
        # the recorded command, run as written, gives the same numbers
        js = tmp_path / f"{eid}.json"
        argv = shlex.split(e["command"].replace("OUT.json", str(js)))
        assert argv[:3] == ["python", "-m", "engine"]
        assert run(capsys, *argv[3:], "--device", "cpu", "--no-cache")[0] == 0
        s = json.loads(js.read_text())
        assert s["n_cases"] == e["n_cases"] and s["empty_policy"] == e["empty_policy"]
        assert s["mean_dice"] == pytest.approx(e["mean_dice"], abs=1e-9), eid
        assert s["cases"] == ("holdout" if holdout else "all labelled")
    rc, text, _ = run(capsys, "weights", "show", "clitest-published")
    assert rc == 0 and json.loads(text)["training"]["command"] == cmd


def test_weights_publish_recomputes_missing_validation_ids(ws: Path, disks: Path, model: Path, tmp_path: Path,
                                                           capsys) -> None:
    run_dir = _make_run(model, tmp_path / "old-run", disks, with_ids=False)
    dest = tmp_path / "pub"
    assert run(capsys, "weights", "publish", run_dir / "best", "--dest", dest, "--float16")[0] == 0
    card = read_card(dest)
    assert card.training["split"]["val_case_ids"] == _val_ids(disks)  # the split training used
    assert card.dtype == "float16" and card.name == "clitest-run"
    from safetensors.numpy import load_file

    tensors = load_file(str(dest / "model.safetensors"))
    assert {str(v.dtype) for v in tensors.values() if v.dtype.kind == "f"} == {"float16"}
    net, _ = load_checkpoint(dest)  # loads back as float32
    assert all(p.dtype.is_floating_point and str(p.dtype) == "torch.float32" for p in net.parameters())
    # a run whose recorded validation count no longer matches the data is refused, nothing is written
    bad = _make_run(model, tmp_path / "stale-run", disks, with_ids=False, n_val=len(_val_ids(disks)) + 1)
    rc, _, err = run(capsys, "weights", "publish", bad, "--dest", tmp_path / "pub2")
    assert rc == 2 and "recomputed" in err and "validation cases" in err
    assert not (tmp_path / "pub2").exists()


def test_weights_publish_rejects_an_eval_without_an_id(ws: Path, disks: Path, model: Path, tmp_path: Path,
                                                       capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an empty folder: what the command wrongly opens as the dataset
    dest = tmp_path / "pub"
    rc, _, err = run(capsys, "weights", "publish", model, "--dest", dest, "--eval", disks)
    assert rc == 2 and "ID=DATASET" in err
    assert not dest.exists()


# ------------------------------------------------------------------------------------ tune-post

def test_tune_post_finds_a_setting_that_evaluate_confirms(ws: Path, disks: Path, model: Path, tmp_path: Path,
                                                          capsys) -> None:
    name = "clitest-tune"
    copy_model(model, ws / "models" / name, name)
    assert read_card(ws / "models" / name).postprocess.to_dict() == PostProcessConfig().to_dict()
    # tune-post searches 6 cases spread evenly over the labelled ones
    labelled = [c.case_id for c in open_dataset(disks).labelled_cases()]
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(labelled[int(i * len(labelled) / 6)] for i in range(6)))

    def evaluate_used_cases() -> dict:
        out = tmp_path / "e.json"
        assert run(capsys, "evaluate", disks, "--weights", name, "--json", out, "--cases", ids, "--device", "cpu",
                   "--no-cache")[0] == 0
        return json.loads(out.read_text())

    before = evaluate_used_cases()
    js = tmp_path / "tune.json"
    rc, text, _ = run(capsys, "tune-post", disks, "--weights", name, "--json", js, "--max-images", "6",
                      "--device", "cpu", "--write-card")
    assert rc == 0
    t = json.loads(js.read_text())
    assert t["n_images"] == 6 and t["empty_policy"] == "kaggle" and len(t["table"]) > 10
    assert t["best_score"] >= t["baseline_score"]
    assert max(r["score"] for r in t["table"]) == pytest.approx(t["best_score"])
    assert f"best mean Dice {t['best_score']:.4f}" in text and "written as the default" in text
    assert read_card(ws / "models" / name).postprocess.to_dict() == t["best"]
    # evaluate on the same cases agrees: the card's old default scores the baseline, the new one the best.
    # tune-post scores float16 probabilities, and this model puts ~1 % of pixels within float16 resolution
    # of 0.5, so the scores agree to ~2e-3 rather than exactly
    assert before["n_cases"] == 6 and before["mean_dice"] == pytest.approx(t["baseline_score"], abs=5e-3)
    after = evaluate_used_cases()
    assert after["settings"]["post"] == t["best"]
    assert after["mean_dice"] == pytest.approx(t["best_score"], abs=5e-3)
    assert after["mean_dice"] - before["mean_dice"] == pytest.approx(t["best_score"] - t["baseline_score"], abs=1e-2)


def test_predict_on_a_paired_dataset_folder_skips_its_masks(ws: Path, disks: Path, model: Path, tmp_path: Path,
                                                            capsys) -> None:
    out = tmp_path / "pred-disks"
    rc, text, _ = run(capsys, "predict", disks, "--weights", model, "--out", out, "--device", "cpu")
    assert rc == 0, text
    images = sorted(p.stem for p in (disks / "images").glob("*.png"))
    assert sorted(p.stem for p in out.glob("*.png")) == images  # one per image; masks/ is ground truth
    # a masks/ folder passed explicitly is predicted (the user asked for it)
    rc, _, _ = run(capsys, "predict", disks / "masks", "--weights", model, "--out", tmp_path / "m", "--device", "cpu")
    assert rc == 0 and len(list((tmp_path / "m").glob("*.png"))) == len(list((disks / "masks").glob("*.png")))
