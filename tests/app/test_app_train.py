"""AppTest of pages/5_Train.py: the form, the config it builds, and real training runs started from
the page (``python -m engine train`` subprocesses on the tiny nerve phantom, 64×64, width 4).

Two runs start from the page at once (module fixture): a 2-epoch run that finishes and a long one
that is cancelled from the page; their start-ups overlap on the busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine import jobs
from engine.checkpoint import list_weights
from engine.fsutil import atomic_write_json
from engine.training import TrainConfig, read_history
from engine.workspace import Workspace
from tests.support.helpers import app_test, metrics, ok, point_app_at, tiny_demo_dir
from ui import state
from ui.train_view import build_config, default_name

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "5_Train.py")
TIMEOUT = 240.0


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from engine.datasets import open_dataset
    from engine.datasets.manifest import write_manifest

    demo = tiny_demo_dir(tmp_path_factory, "train_demo")
    ws = tmp_path_factory.mktemp("train_ws")
    ds = open_dataset(demo / "nerve", workspace=Workspace(ws))
    manifest = write_manifest(Path(ds.workdir) / "manifests" / "clean-20250101-000000.json", ds, ds.cases[:20])
    return {"demo": demo, "ws": ws, "nerve": demo / "nerve", "manifest": manifest}


@pytest.fixture()
def env(setup: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    point_app_at(monkeypatch, setup["demo"], setup["ws"])
    return setup


def app(**session) -> AppTest:
    return app_test(PAGE, {state.Shared.DEVICE: "cpu"}, **session)


def tiny(at: AppTest, name: str, epochs: int) -> AppTest:
    """Fill the form for a tiny run: 64×64 input, classic U-Net of width 4, 3 folds, no augmentation."""
    at.number_input(key=state.Train.EPOCHS).set_value(epochs)
    at.number_input(key=state.Train.HEIGHT).set_value(64)
    at.number_input(key=state.Train.WIDTH).set_value(64)
    at.number_input(key=state.Train.BASE_CHANNELS).set_value(4)
    at.number_input(key=state.Train.BATCH).set_value(8)
    at.number_input(key=state.Train.FOLDS).set_value(3)
    at.selectbox(key=state.Train.AUGMENT).set_value("none")
    at.selectbox(key=state.Train.SCHEDULER).set_value("none")
    at.text_input(key=state.Train.NAME).set_value(name)
    return at.run()


def wait_final(run_dir: Path, timeout: float = TIMEOUT) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        info = jobs.job_status(run_dir)
        if not info["active"]:
            return info
        time.sleep(0.5)
    raise TimeoutError(f"{run_dir.name} still {info['state']} after {timeout:.0f} s:\n{jobs.tail_log(run_dir)}")


@pytest.fixture(scope="module")
def started(setup: dict):
    """Two runs started from the page: ``done`` (2 epochs) and ``long`` (200 epochs, to cancel)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SEGWB_DEMO_DATA", str(setup["demo"]))
    mp.setenv("SEGWB_WORKSPACE", str(setup["ws"]))
    runs: dict[str, Path] = {}
    try:
        for key, name, epochs in (("done", "apptest-done", 2), ("long", "apptest-long", 200)):
            at = tiny(app().run(), name, epochs)
            ok(at.button(key=state.Train.START).click().run())
            run = at.session_state[state.Train.RUN]
            assert run.startswith(name + "-")
            runs[key] = setup["ws"] / "runs" / run
            runs[key + "_at"] = at
        yield runs
    finally:
        for key in ("done", "long"):
            if key in runs and jobs.job_status(runs[key], 0)["alive"]:
                pid = jobs.job_status(runs[key], 0)["pid"]
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        mp.undo()


# ------------------------------------------------------------------------------------ form

def test_form_renders_with_the_current_dataset_and_manifests(env) -> None:
    at = ok(app().run())
    nerve = str(env["nerve"])
    src = at.selectbox(key=state.Train.SOURCE)
    assert src.value == f"Current dataset · {nerve}"
    assert f"Cleaned manifest · {env['manifest'].name}" in src.options
    assert "Demo: chest X-ray phantom (SIIM DICOM layout)" in src.options
    assert at.selectbox(key=state.Train.ARCH).value == "unet_classic"
    assert at.selectbox(key=state.Train.AUGMENT).value == "ultrasound"  # the nerve phantom is ultrasound
    assert at.selectbox(key=state.Train.DEVICE).value == "cpu"  # the session's device
    # custom architecture: base channels, no encoder; smp architecture: encoder (resnet18), no base channels
    assert at.number_input(key=state.Train.BASE_CHANNELS).value == 16
    keys = {w.key for w in at.selectbox}
    assert state.Train.ENCODER not in keys and state.Train.BASE_CHANNELS in {w.key for w in at.number_input}
    at.selectbox(key=state.Train.ARCH).set_value("unet").run()
    ok(at)
    assert at.selectbox(key=state.Train.ENCODER).value == "resnet18"
    assert state.Train.BASE_CHANNELS not in {w.key for w in at.number_input}
    assert any("no pretrained weights are downloaded" in c.value for c in at.caption)
    # the manifest can be chosen as data
    at.selectbox(key=state.Train.SOURCE).set_value(f"Cleaned manifest · {env['manifest'].name}")
    at.toggle(key=state.Train.SHOW_JSON).set_value(True)
    ok(at.run())
    assert json.loads(at.json[0].value)["data"] == str(env["manifest"])
    assert any("No training runs" in i.value for i in at.info)


def test_config_json_equals_the_form_values(env) -> None:
    at = ok(app().run())
    at.selectbox(key=state.Train.ARCH).set_value("unet").run()
    at.selectbox(key=state.Train.ENCODER).set_value("resnet34")
    at.checkbox(key=state.Train.PRESENCE).check()
    at.checkbox(key=state.Train.AUTO_CLASSES).uncheck().run()
    at.number_input(key=state.Train.CLASSES).set_value(3)
    at.number_input(key=state.Train.HEIGHT).set_value(96)
    at.number_input(key=state.Train.WIDTH).set_value(160)
    at.selectbox(key=state.Train.RESIZE).set_value("letterbox")
    at.selectbox(key=state.Train.MEDIAN).set_value(5)
    at.selectbox(key=state.Train.LOSS).set_value("dice")
    at.selectbox(key=state.Train.AUGMENT).set_value("em").run()
    at.checkbox(key="train_aug_vflip_em").uncheck()
    at.checkbox(key="train_aug_noise_em").check()
    at.number_input(key=state.Train.EPOCHS).set_value(7)
    at.number_input(key=state.Train.BATCH).set_value(4)
    at.number_input(key=state.Train.LR).set_value(0.0003)
    at.selectbox(key=state.Train.SCHEDULER).set_value("cosine")
    at.number_input(key=state.Train.PATIENCE).set_value(3)
    at.number_input(key=state.Train.FOLDS).set_value(4)
    at.number_input(key=state.Train.VAL_FOLD).set_value(2)
    at.number_input(key=state.Train.SEED).set_value(11)
    at.selectbox(key=state.Train.DEVICE).set_value("cuda")
    at.selectbox(key=state.Train.AMP).set_value("bf16")
    at.text_input(key=state.Train.NAME).set_value("my-unet")
    at.toggle(key=state.Train.SHOW_JSON).set_value(True)
    ok(at.run())
    d = json.loads(at.json[0].value)
    cfg = TrainConfig.from_dict(d)
    assert cfg.to_dict() == d  # round trip
    assert d["data"] == str(env["nerve"]) and d["auto_classes"] is False and d["export"] is True
    model = {k: d["model"][k] for k in ("arch", "encoder", "presence_head", "num_classes", "base_channels",
                                         "in_channels", "pretrained")}
    assert model == {"arch": "unet", "encoder": "resnet34", "presence_head": True, "num_classes": 3,
                     "base_channels": None, "in_channels": 1, "pretrained": None}
    assert d["preprocess"]["size"] == [96, 160] and d["preprocess"]["resize_policy"] == "letterbox"
    assert d["preprocess"]["median_filter"] == 5 and d["loss"] == "dice"
    from engine.augment import AugmentConfig

    em = AugmentConfig.preset("em")
    assert d["augment"]["vflip"] == 0.0 and d["augment"]["hflip"] == em.hflip and d["augment"]["elastic"] == em.elastic
    assert d["augment"]["speckle"] == 0.3 and d["augment"]["gauss_noise"] == 0.3  # switched on: default strength
    assert (d["epochs"], d["batch_size"], d["scheduler"], d["early_stopping_patience"]) == (7, 4, "cosine", 3)
    assert d["lr"] == pytest.approx(3e-4)
    assert d["split"] == {"k": 4, "seed": 11, "val_fold": 2, "stratify": True} and d["seed"] == 11
    assert (d["device"], d["amp"], d["name"]) == ("cuda", "bf16", "my-unet")
    # the same values through build_config directly
    assert build_config({
        "data": str(env["nerve"]), "dataset_options": None, "arch": "unet", "encoder": "resnet34",
        "base_channels": None, "presence_head": True, "auto_classes": False, "num_classes": 3, "size": (96, 160),
        "resize_policy": "letterbox", "median_filter": 5, "loss": "dice", "augment": "em",
        "augment_toggles": {"vflip": False, "noise": True, "hflip": True}, "epochs": 7, "batch_size": 4,
        "lr": 3e-4, "scheduler": "cosine", "patience": 3, "folds": 4, "val_fold": 2, "seed": 11,
        "device": "cuda", "amp": "bf16", "name": "my-unet"}).to_dict() == d


def test_bad_form_values_show_a_readable_error(env) -> None:
    at = ok(app().run())
    at.number_input(key=state.Train.VAL_FOLD).set_value(7)  # only 5 folds
    at.run()
    assert not at.exception
    assert any("val_fold" in e.value and "Fix:" in e.value for e in at.error), [e.value for e in at.error]
    assert state.Train.START not in {b.key for b in at.button}  # no Start button under an invalid config
    assert default_name("/x/nerve", "unet") == "nerve-unet" and default_name("", "a b") == "model-a-b"


# ------------------------------------------------------------------------------------ runs

def test_started_runs_are_real_processes_listed_in_the_table(env, started) -> None:
    for key in ("done", "long"):
        run = started[key]
        rec = json.loads((run / jobs.JOB_FILE).read_text())
        assert rec["command"][1:4] == ["-m", "engine", "train"] and rec["workspace"] == str(env["ws"])
        cfg = TrainConfig.load(run / "config.json")
        assert cfg.data == str(env["nerve"].resolve()) and cfg.preprocess.size == (64, 64)
        assert cfg.model.base_channels == 4 and cfg.device == "cpu" and cfg.export
    assert TrainConfig.load(started["long"] / "config.json").epochs == 200
    at = started["long_at"]
    ok(at)
    assert any("Started" in s.value and started["long"].name in s.value for s in at.success)
    table = at.dataframe[0].value
    assert set(table["run"]) >= {started["done"].name, started["long"].name}
    assert table["run"].iloc[0] == started["long"].name  # newest first
    assert at.selectbox(key=state.Train.RUN).value == started["long"].name  # the new run is selected
    assert at.get("progress")  # the live panel


def test_finished_run_shows_state_curves_and_the_exported_model(env, started) -> None:
    run = started["done"]
    info = wait_final(run)
    assert info["state"] == "finished", (info, jobs.tail_log(run))
    at = ok(app(**{state.Train.RUN_PENDING: run.name}).run())
    assert at.selectbox(key=state.Train.RUN).value == run.name
    m = metrics(at)
    assert m["State"].endswith("finished") and m["Epoch"] == "2 / 2"
    assert m["Best val_dice"] == f"{info['best_metric']:.4f}"
    hist = read_history(run)
    assert len(hist) == 2 and max(r["val_dice"] for r in hist) == pytest.approx(info["best_metric"])
    row = at.dataframe[0].value.set_index("run").loc[run.name]
    assert "finished" in row["state"] and row["epoch"] == "2/2" and row["model"] == "apptest-done"
    assert at.get("progress")[0].proto.value == 100
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = {c["layout"]["title"]["text"]: c for c in charts}
    assert set(titles) == {"Loss", "Validation metrics"}
    names = {t["name"] for t in titles["Loss"]["data"]}
    assert ({"train_loss", "val_loss"} <= names
            and "val_dice" in {t["name"] for t in titles["Validation metrics"]["data"]})
    assert len(at.get("image")) >= 2  # latest preview frame + evolution GIF
    # the exported model: named, listed by the model pickers, can become the current model
    assert any("apptest-done" in s.value and "model picker" in s.value for s in at.success)
    assert "apptest-done" in {w["name"] for w in list_weights(Workspace(env["ws"]))}
    ok(at.button(key=state.Train.USE_MODEL).click().run())
    assert at.session_state[state.Shared.MODEL] == "apptest-done"
    assert any("is the current model" in c.value for c in at.caption)


def test_cancel_from_the_page(env, started) -> None:
    run = started["long"]
    t0 = time.monotonic()
    while not (jobs.job_status(run, 0)["state"] == "running" and jobs.job_status(run, 0)["step"] >= 1):
        assert jobs.job_status(run, 0)["active"], jobs.tail_log(run)
        assert time.monotonic() - t0 < TIMEOUT
        time.sleep(0.3)
    at = ok(app(**{state.Train.RUN_PENDING: run.name}).run())
    assert metrics(at)["State"].endswith("running")
    ok(at.button(key=state.Train.CANCEL).click().run())
    assert (run / "CANCEL").exists() or not jobs.job_status(run, 0)["active"]
    info = wait_final(run)
    assert info["state"] == "cancelled", info
    at = ok(app(**{state.Train.RUN_PENDING: run.name}).run())
    assert metrics(at)["State"].endswith("cancelled")
    assert any("cancelled" in w.value for w in at.warning)
    assert state.Train.CANCEL not in {b.key for b in at.button}
    assert len(read_history(run)) < 200


def test_died_run_is_reported_without_a_traceback(env) -> None:
    run = env["ws"] / "runs" / "ghost-20000101-000000"
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "status.json", {"state": "running", "epoch": 3, "epochs": 9, "step": 1,
                                            "steps_per_epoch": 4, "pid": 2 ** 22 + 12345, "name": "ghost",
                                            "started": "2000-01-01T00:00:00+00:00"})
    (run / jobs.LOG_FILE).write_text("epoch 2 ...\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                                     "MemoryError: cannot allocate 4 GiB\n")
    at = app(**{state.Train.RUN_PENDING: run.name}).run()
    assert not at.exception
    assert metrics(at)["State"].endswith("died") and metrics(at)["Epoch"] == "3 / 9"
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "died" in errors[0] and "MemoryError: cannot allocate 4 GiB" in errors[0]
    assert "Traceback" not in errors[0]


def test_a_taken_name_is_refused_unless_replaced_and_failed_runs_stay_out_of_pickers(env, started,
                                                                                     monkeypatch) -> None:
    monkeypatch.delenv("SEGWB_MIN_USEFUL_DICE", raising=False)  # the product's default floor (0.2)
    wait_final(started["done"])
    wait_final(started["long"])
    at = tiny(app().run(), "apptest-done", 1)  # the finished run exported this name
    assert any("already exists in the workspace" in w.value for w in at.warning)
    assert at.button(key=state.Train.START).disabled
    at.checkbox(key=state.Train.REPLACE).check()
    assert not ok(at.run()).button(key=state.Train.START).disabled
    at = tiny(app().run(), "lung-cxr", 1)  # a shipped model's name: never
    assert any("shipped model is already named" in e.value for e in at.error)
    assert at.button(key=state.Train.START).disabled
    weak = {w["name"]: w["weak"] for w in list_weights(Workspace(env["ws"]))}
    assert weak["apptest-long"] == "its training run was cancelled" or weak["apptest-long"].startswith(
        "validation Dice 0.")  # cancelled, or (early-stopped first) a 4-channel net that learnt little
    from tests.support.helpers import app_test as home_test

    home = ok(home_test(str(REPO / "app.py"), {state.Shared.DEVICE: "cpu"}).run())
    model_box = home.selectbox(key=state.Home.MODEL)
    assert "apptest-long" not in model_box.options  # out of the pickers...
    home.toggle(key=state.Home.SHOW_WEAK).set_value(True)
    assert "apptest-long" in ok(home.run()).selectbox(key=state.Home.MODEL).options  # ...unless asked
