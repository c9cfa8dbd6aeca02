"""Home page (app.py) with AppTest: dataset status from the real index, demo-data button,
readable errors for a bad folder, and the model picker listing a workspace model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.helpers import clear_streamlit_caches, save_tiny_unet

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp("home_app")
    demo = root / "demo"
    generate_demo(demo, scale="tiny")
    return SimpleNamespace(root=root, demo=demo)


@pytest.fixture()
def with_demo(demo_env, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    monkeypatch.setenv("SEGWB_WORKSPACE", str(ws))
    monkeypatch.setenv("SEGWB_DEMO_DATA", str(demo_env.demo))
    save_tiny_unet(ws / "models" / "home-tiny", seed=0, description="tiny test model")
    clear_streamlit_caches()
    yield SimpleNamespace(ws=ws, demo=demo_env.demo)
    clear_streamlit_caches()


@pytest.fixture()
def without_demo(tmp_path, monkeypatch):
    ws, demo = tmp_path / "ws", tmp_path / "no-demo"
    demo.mkdir()
    monkeypatch.setenv("SEGWB_WORKSPACE", str(ws))
    monkeypatch.setenv("SEGWB_DEMO_DATA", str(demo))
    clear_streamlit_caches()
    yield SimpleNamespace(ws=ws, demo=demo)
    clear_streamlit_caches()


def home():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=180)


def test_counts_come_from_the_real_index(with_demo):
    from engine.datasets import open_dataset
    from ui import state

    at = home()
    at.run()
    assert not at.exception
    assert not at.error
    s = open_dataset(with_demo.demo / "nerve").summary()
    m = {x.label: x.value for x in at.metric}
    assert m == {"Cases": f"{s['n_cases']:,}", "With mask": f"{s['n_with_mask']:,}",
                 "Empty masks": f"{s['n_empty']:,}", "Groups": f"{s['n_groups']:,}"}
    assert s["n_cases"] > 0 and s["n_with_mask"] + s["n_empty"] == s["n_labelled"]
    assert "kaggle_uns" in " ".join(c.value for c in at.caption)
    assert "ultrasound nerve" in at.selectbox(key="home_dataset_choice").value
    assert "demo/nerve`" in " ".join(str(x.value) for x in at.sidebar.markdown)
    assert not any(b.key == "gen_demo" for b in at.button)
    # switching to the chest X-ray phantom shows its counts
    ptx_label = next(o for o in at.selectbox(key="home_dataset_choice").options if "chest" in o)
    at.selectbox(key="home_dataset_choice").set_value(ptx_label).run()
    assert not at.exception and not at.error
    s2 = open_dataset(with_demo.demo / "ptx").summary()
    assert {x.label: x.value for x in at.metric}["Cases"] == f"{s2['n_cases']:,}"
    assert at.session_state[state.Shared.DATASET] == str(with_demo.demo / "ptx")
    # the default model follows the dataset's classes (a pneumothorax model, not the nerve one)...
    assert at.session_state[state.Shared.MODEL] == "demo-ptx-phantom"
    assert at.selectbox(key="home_model").value == "demo-ptx-phantom"
    at.run()
    assert "matched to this dataset's classes" in " ".join(c.value for c in at.sidebar.caption)
    # ...but a model the user then picks for this dataset is kept
    at.selectbox(key="home_model").set_value("lung-cxr").run()
    at.run()
    assert at.session_state[state.Shared.MODEL] == "lung-cxr"


def test_model_picker_lists_workspace_model(with_demo):
    from ui import state

    at = home()
    at.run()
    assert not at.exception
    picker = at.selectbox(key="home_model")
    assert "home-tiny" in picker.options
    shipped = sorted(p.parent.name for p in (Path(APP).parent / "weights").glob("*/card.json"))
    assert set(shipped) <= set(picker.options)  # the shipped weights are offered too
    at.selectbox(key="home_model").set_value("home-tiny").run()
    assert at.session_state[state.Shared.MODEL] == "home-tiny"
    assert "tiny test model" in " ".join(str(x.value) for x in at.markdown)


def test_without_demo_data_offers_generate_button(without_demo, monkeypatch):
    import engine.checkpoint as ckpt

    empty = without_demo.ws.parent / "no-weights"
    empty.mkdir()
    monkeypatch.setattr(ckpt, "REPO_WEIGHTS", empty)  # as on a checkout without shipped weights
    at = home()
    at.run()
    assert not at.exception
    assert not at.error
    assert at.button(key="gen_demo").label == "Generate demo data"
    assert any("not generated" in i.value for i in at.info)
    assert not at.metric                                     # no dataset open yet
    assert any("No weights found" in i.value for i in at.info)


def test_missing_folder_shows_readable_error(with_demo, tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    at = home()
    at.run()
    at.selectbox(key="home_dataset_choice").set_value("Another folder or manifest…").run()
    at.text_input(key="home_dataset_path").input(str(missing)).run()
    at.button(key="home_open").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1
    assert str(missing) in errors[0] and "folder not found" in errors[0] and "Fix:" in errors[0]
    assert "Traceback" not in errors[0]


def test_session_keys_are_one_enum_per_page_with_unique_values():
    """Every key is a ``str`` member of exactly one page enum, and no two members share a value
    (two widgets with one key would clash, and f-string keys are built on these values)."""
    from enum import StrEnum

    from ui import state

    members = [m for enum in state.KEY_ENUMS for m in enum]
    values = [m.value for m in members]
    assert len(values) == len(set(values)), sorted(v for v in values if values.count(v) > 1)
    assert all(isinstance(m, str) and issubclass(type(m), StrEnum) for m in members)
    assert f"{state.Admin.ROLE}_ana" == "admin_role_ana" and state.Shared.DATASET == "segwb_dataset"
    assert {e.__name__ for e in state.KEY_ENUMS} == {n for n, v in vars(state).items()
                                                     if isinstance(v, type) and issubclass(v, StrEnum)
                                                     and v is not StrEnum}
    assert not hasattr(state, "set")  # state.put: never shadow the builtin
