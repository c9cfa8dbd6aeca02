"""Tests for engine.checkpoint: safetensors + card.json weights folders.

Models are tiny (classic U-Net, base width 4, two levels: ~7.5k parameters) so the whole file
runs in seconds on a busy CPU. BatchNorm running statistics are made non-trivial before saving,
so a round trip that dropped buffers would change the outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine.checkpoint as ckpt
from engine.augment import Preprocess
from engine.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelCard,
    add_evaluation,
    list_weights,
    load_checkpoint,
    publish,
    read_card,
    save_checkpoint,
)
from engine.errors import CheckpointError, ConfigError
from engine.models import ModelSpec, build_model
from engine.postprocess import PostProcessConfig, TripletGate
from engine.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(arch="unet_classic", base_channels=4, encoder_depth=2)


def make_net(seed: int = 0, spec: ModelSpec = SPEC) -> torch.nn.Module:
    """A tiny U-Net with random weights AND non-default BatchNorm running statistics."""
    torch.manual_seed(seed)
    net = build_model(spec)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(2, spec.in_channels, 32, 32) * 3 + 1)
    return net.eval()


def make_card(name: str = "tiny", spec: ModelSpec = SPEC, **kw: Any) -> ModelCard:
    fields: dict[str, Any] = {
        "labels": {0: "background", 1: "nerve"},
        "preprocess": Preprocess(size=(32, 48), normalize="meanstd", mean=(0.4,), std=(0.2,),
                                 in_channels=spec.in_channels, median_filter=3),
        "postprocess": PostProcessConfig(threshold=0.35, min_area=12, keep_largest=1, fill_holes=True,
                                         presence_threshold=0.6, class_thresholds={1: 0.45},
                                         triplet=TripletGate(0.8, 100, 0.3), connectivity=1),
        "tile": (32, 32),
        "description": "a test model",
        "training": {"epochs": 3, "seed": 7, "run_dir": "/home/me/runs/x", "argv": "python -m engine train"},
        "metrics": {"val_dice": 0.81},
        "license": {"license": "CC0", "attribution": "synthetic"},
        "synthetic": True,
    }
    fields.update(kw)
    return ModelCard(name=name, spec=spec, **fields)


def outputs(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)["mask"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def header_and_data_bytes(path: Path) -> tuple[int, int]:
    """(JSON header length, tensor data length) of a safetensors file (its documented layout)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, len(raw) - 8 - n


def edit_card(folder: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((folder / CARD_FILE).read_text())
    change(data)
    (folder / CARD_FILE).write_text(json.dumps(data))


def rewrite_tensors(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Replace model.safetensors and update the card's hash so only the content check can object."""
    save_file(state, str(folder / WEIGHTS_FILE))
    digest = sha256(folder / WEIGHTS_FILE)
    edit_card(folder, lambda d: d.update(tensors_sha256=digest))


@pytest.fixture()
def no_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the repository's weights/ search dir at an empty folder (results independent of weights/)."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(ckpt, "REPO_WEIGHTS", shipped)
    return shipped


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module, ModelCard]:
    net, card = make_net(), make_card()
    folder = save_checkpoint(tmp_path / "tiny", net, card)
    return folder, net, card


# ------------------------------------------------------------------------------ round trip

def test_round_trip_gives_identical_outputs(saved) -> None:
    folder, net, _ = saved
    x = torch.rand(2, 1, 32, 48)
    loaded, _ = load_checkpoint(folder)
    assert loaded is not net and not loaded.training
    ref = outputs(net, x)
    assert torch.allclose(outputs(loaded, x), ref, rtol=0, atol=1e-6)
    for k, v in net.state_dict().items():  # every parameter and buffer, BN running stats included
        assert torch.equal(loaded.state_dict()[k], v), k
    # guard: another random model really gives other outputs (the check above is not vacuous)
    assert not torch.allclose(outputs(make_net(seed=1), x), ref, atol=1e-3)
    # a path to card.json (or the weights file) is accepted as the folder
    again, _ = load_checkpoint(folder / CARD_FILE)
    assert torch.allclose(outputs(again, x), ref, rtol=0, atol=1e-6)


def test_card_fields_survive_and_bookkeeping_is_filled_in(saved) -> None:
    folder, net, card = saved
    _, loaded = load_checkpoint(folder)
    assert loaded.spec == SPEC and loaded.spec.arch == "unet_classic" and loaded.spec.in_channels == 1
    assert loaded.labels == {0: "background", 1: "nerve"} and loaded.foreground == {1: "nerve"}
    assert loaded.num_classes == 2
    assert loaded.preprocess == card.preprocess and loaded.preprocess.size == (32, 48)
    assert loaded.postprocess == card.postprocess
    assert loaded.postprocess.class_thresholds == {1: 0.45}  # int keys back from JSON strings
    assert loaded.postprocess.triplet == TripletGate(0.8, 100, 0.3)
    assert loaded.tile == (32, 32)
    for name in ("description", "training", "metrics", "license", "synthetic"):
        assert getattr(loaded, name) == getattr(card, name), name
    # filled in by save_checkpoint
    assert loaded.tensors_sha256 == sha256(folder / WEIGHTS_FILE)
    assert loaded.n_parameters == sum(p.numel() for p in net.parameters())
    assert loaded.dtype == "float32" and loaded.created.startswith("20")
    assert read_card(folder) == loaded
    raw = json.loads((folder / CARD_FILE).read_text())
    assert raw["format"] == "segwb-model" and raw["format_version"] == 1
    # loaded tensors are float32, the (int64) BatchNorm counters stay integers
    state = load_file(str(folder / WEIGHTS_FILE))
    assert state["net.inc.1.num_batches_tracked"].dtype == torch.int64
    assert all(v.dtype == torch.float32 for k, v in state.items() if "num_batches" not in k)


def test_float16_storage_halves_the_tensor_data_and_still_loads(tmp_path: Path) -> None:
    net = make_net(spec=ModelSpec(arch="unet_classic", base_channels=8, encoder_depth=2))
    card = make_card(spec=net.spec)
    f32 = save_checkpoint(tmp_path / "f32", net, card)
    f16 = save_checkpoint(tmp_path / "f16", net, card, dtype="float16")
    s32, s16 = (f32 / WEIGHTS_FILE).stat().st_size, (f16 / WEIGHTS_FILE).stat().st_size
    assert 0.45 < s16 / s32 < 0.6, (s16, s32)
    # exactly: float tensors take 2 bytes per element instead of 4, int64 counters 8 bytes in both
    n_float = sum(v.numel() for v in net.state_dict().values() if v.is_floating_point())
    n_int = sum(v.numel() for v in net.state_dict().values() if not v.is_floating_point())
    assert header_and_data_bytes(f32 / WEIGHTS_FILE)[1] == 4 * n_float + 8 * n_int
    assert header_and_data_bytes(f16 / WEIGHTS_FILE)[1] == 2 * n_float + 8 * n_int

    loaded, lcard = load_checkpoint(f16)
    assert lcard.dtype == "float16"
    for k, v in net.state_dict().items():
        got = loaded.state_dict()[k]
        if v.is_floating_point():
            assert got.dtype == torch.float32  # loads as float32
            assert torch.equal(got, v.half().float()), k  # the float16-rounded values, nothing else
        else:
            assert torch.equal(got, v)
    x = torch.rand(1, 1, 32, 32)
    ref = outputs(net, x)
    diff = (outputs(loaded, x) - ref).abs().max().item()
    assert 0 < diff < 2e-2 * max(1.0, ref.abs().max().item())


def test_unsupported_dtype_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported weights dtype 'int8'"):
        save_checkpoint(tmp_path / "x", make_net(), make_card(), dtype="int8")
    assert not (tmp_path / "x" / WEIGHTS_FILE).exists()


# ------------------------------------------------------------------------------ no pickle

class _Evil:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_folder_holds_only_safetensors_and_card(saved) -> None:
    folder, _, _ = saved
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, WEIGHTS_FILE]  # no temp files left
    assert (folder / WEIGHTS_FILE).read_bytes()[8:9] == b"{"  # safetensors: u64 length + JSON header


def test_loading_never_unpickles(saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, net, _ = saved
    sentinel = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Evil(sentinel))
    for name in ("model.pt", "model.pth", "pytorch_model.bin", "model.ckpt"):
        (folder / name).write_bytes(payload)

    def forbidden(*a: Any, **k: Any) -> None:
        raise AssertionError("load_checkpoint must not unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded, _ = load_checkpoint(folder)  # the planted pickles are ignored
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(outputs(loaded, x), outputs(net, x), rtol=0, atol=1e-6)

    # a folder with only a pickle next to the card: refused, not loaded
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    assert "model.safetensors is missing" in str(info.value) and info.value.path == str(folder)
    assert "re-export" in (info.value.hint or "")

    # a pickle renamed to model.safetensors (hash updated to match): rejected as unreadable
    (folder / WEIGHTS_FILE).write_bytes(payload)
    edit_card(folder, lambda d: d.update(tensors_sha256=sha256(folder / WEIGHTS_FILE)))
    with pytest.raises(CheckpointError, match="cannot read tensors") as info:
        load_checkpoint(folder)
    assert info.value.path == str(folder / WEIGHTS_FILE) and "corrupt" in (info.value.hint or "")
    assert not sentinel.exists()


# ------------------------------------------------------------------------------ bad checkpoints

def _error(where: Path | str, **kw: Any) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(where, **kw)
    err = info.value
    assert ". Fix: " in str(err) and err.hint, str(err)  # says what to do
    return err


def test_missing_folder_names_it_and_says_what_to_do(tmp_path: Path, no_shipped: Path) -> None:
    missing = tmp_path / "nowhere"
    err = _error(missing, workspace=Workspace(tmp_path / "ws"))
    assert str(missing) in err.message and "no weights named" in err.message
    assert "model.safetensors + card.json" in err.hint and "train" in err.hint


def test_missing_card_json(saved) -> None:
    folder, _, _ = saved
    (folder / CARD_FILE).unlink()
    err = _error(folder)
    assert err.message == "card.json is missing" and err.path == str(folder)
    assert "re-export" in err.hint


def test_card_that_is_not_json(saved) -> None:
    folder, _, _ = saved
    (folder / CARD_FILE).write_text('{"format": "segwb-model", ')
    err = _error(folder)
    assert err.path == str(folder / CARD_FILE) and "not valid JSON" in err.message
    assert "corrupt" in err.hint and "re-export" in err.hint


def test_json_that_is_not_a_model_card(saved) -> None:
    folder, _, _ = saved
    (folder / CARD_FILE).write_text('{"name": "something else"}')
    err = _error(folder)
    assert err.message == "not a segwb model card" and err.path == str(folder / CARD_FILE)


def test_truncated_safetensors(saved) -> None:
    folder, _, _ = saved
    raw = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(raw[: len(raw) // 2])
    err = _error(folder)  # caught by the hash first
    assert "does not match the hash in card.json" in err.message and err.path == str(folder / WEIGHTS_FILE)
    assert "re-export" in err.hint
    err = _error(folder, verify_hash=False)  # and by the reader without it
    assert err.message.startswith("cannot read tensors") and err.path == str(folder / WEIGHTS_FILE)
    assert "corrupt" in err.hint


def test_corrupt_bytes_with_matching_hash(saved) -> None:
    folder, _, _ = saved
    (folder / WEIGHTS_FILE).write_bytes(b"\xff" * 64)
    edit_card(folder, lambda d: d.update(tensors_sha256=sha256(folder / WEIGHTS_FILE)))
    err = _error(folder)
    assert err.message.startswith("cannot read tensors") and err.path == str(folder / WEIGHTS_FILE)


def test_card_base_channels_not_matching_the_tensors(saved) -> None:
    folder, _, _ = saved
    edit_card(folder, lambda d: d["spec"].update(base_channels=8))
    err = _error(folder)
    assert err.message.startswith("card.json does not match model.safetensors") and err.path == str(folder)
    assert "shape mismatch(es) e.g. net.downs.0.0.weight: card (16, 8, 3, 3) vs file (8, 4, 3, 3)" in err.message
    assert "architecture" in err.hint and "re-export" in err.hint


def test_card_in_channels_not_matching_the_tensors(saved) -> None:
    folder, _, _ = saved

    def three_channels(d: dict) -> None:
        d["spec"]["in_channels"] = 3
        d["preprocess"].update(in_channels=3)

    edit_card(folder, three_channels)
    err = _error(folder)
    assert "net.inc.0.weight: card (4, 3, 3, 3) vs file (4, 1, 3, 3)" in err.message
    # the spec alone edited: the card contradicts itself and says so
    edit_card(folder, lambda d: d["preprocess"].update(in_channels=1))
    err = _error(folder)
    assert err.message.startswith("invalid model card") and err.path == str(folder / CARD_FILE)
    assert "preprocess.in_channels=1 but the model takes 3" in err.message and err.hint == "make them equal"


def test_card_depth_not_matching_the_tensors_lists_missing_tensors(saved) -> None:
    folder, _, _ = saved
    edit_card(folder, lambda d: d["spec"].update(encoder_depth=3))
    err = _error(folder)
    assert "missing tensor(s)" in err.message and "net.downs.2." in err.message


def test_missing_and_unexpected_tensors(saved) -> None:
    folder, net, _ = saved
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    del state["net.head.bias"]
    rewrite_tensors(folder, state)
    err = _error(folder)
    assert "1 missing tensor(s) e.g. ['net.head.bias']" in err.message and "unexpected" not in err.message
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    state["net.extra.weight"] = torch.zeros(3)
    rewrite_tensors(folder, state)
    err = _error(folder)
    assert "1 unexpected tensor(s) e.g. ['net.extra.weight']" in err.message and "missing" not in err.message


def test_newer_format_version(saved) -> None:
    folder, _, _ = saved
    edit_card(folder, lambda d: d.update(format_version=2))
    err = _error(folder)
    assert "card format version 2 is newer than this program supports (1)" in err.message
    assert err.path == str(folder / CARD_FILE) and err.hint == "upgrade the workbench"


def test_unknown_architecture_name(saved) -> None:
    folder, _, _ = saved
    edit_card(folder, lambda d: d["spec"].update(arch="no_such_net"))
    err = _error(folder)
    assert err.message.startswith("card describes a model that cannot be built")
    assert "unknown architecture 'no_such_net'" in err.message and err.path == str(folder / CARD_FILE)
    assert "unet_classic" in err.hint  # lists the valid names


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(colour="blue"), "ModelCard has no option(s) colour"),
    (lambda d: d.update(labels={"0": "background", "1": "a", "2": "b"}), "do not name classes 0..1"),
])
def test_invalid_card_content(saved, change: Callable[[dict], None], needle: str) -> None:
    folder, _, _ = saved
    edit_card(folder, change)
    err = _error(folder)
    assert err.message.startswith("invalid model card") and needle in err.message
    assert err.path == str(folder / CARD_FILE)


# ------------------------------------------------------------------------------ publish, evaluations

def test_publish_copies_model_records_command_and_drops_machine_paths(saved, tmp_path: Path) -> None:
    best, net, card = saved
    dest = publish(best, tmp_path / "weights" / "nerve", name="nerve", command="python -m engine train --config c.json",
                   extra_training={"val_cases": ["a", "b"]})
    assert dest == tmp_path / "weights" / "nerve"
    model, pub = load_checkpoint(dest)
    x = torch.rand(2, 1, 32, 48)
    assert torch.allclose(outputs(model, x), outputs(net, x), rtol=0, atol=1e-6)
    assert pub.name == "nerve" and pub.dtype == "float32"
    assert pub.training == {"epochs": 3, "seed": 7, "command": "python -m engine train --config c.json",
                            "val_cases": ["a", "b"]}  # run_dir and argv dropped, the rest kept
    assert pub.tensors_sha256 == sha256(dest / WEIGHTS_FILE) and pub.created
    for name in ("spec", "labels", "preprocess", "postprocess", "tile", "metrics", "license", "description"):
        assert getattr(pub, name) == getattr(card, name), name
    # the source is untouched
    assert read_card(best).training["run_dir"] == "/home/me/runs/x" and read_card(best).name == "tiny"


def test_publish_replaces_a_machine_run_folder_in_the_config(saved, tmp_path: Path) -> None:
    from engine.checkpoint import write_card

    best, _, card = saved
    write_card(best, card.replace(training={**card.training, "config": {"out": "/scratch/me/runs/x", "epochs": 3}}))
    _, pub = load_checkpoint(publish(best, tmp_path / "weights" / "lungs", name="lungs"))
    assert pub.training["config"] == {"out": ".workspace/runs/lungs", "epochs": 3}


def test_publish_float16_and_default_name(saved, tmp_path: Path) -> None:
    best, net, _ = saved
    dest = publish(best, tmp_path / "half", dtype="float16")
    model, pub = load_checkpoint(dest)
    assert pub.name == "tiny" and pub.dtype == "float16" and "command" not in pub.training
    assert (dest / WEIGHTS_FILE).stat().st_size < 0.65 * (best / WEIGHTS_FILE).stat().st_size
    w = net.state_dict()["net.head.weight"]
    assert torch.equal(model.state_dict()["net.head.weight"], w.half().float())


def test_add_evaluation_appends_and_replaces_by_id(saved) -> None:
    folder, net, _ = saved
    add_evaluation(folder, {"id": "val", "dice": 0.5})
    add_evaluation(folder, {"id": "test", "dice": 0.6})
    card = add_evaluation(folder, {"id": "val", "dice": 0.7, "n": 10})
    assert card.metrics["evaluations"] == [{"id": "test", "dice": 0.6}, {"id": "val", "dice": 0.7, "n": 10}]
    assert card.metrics["val_dice"] == 0.81  # the other metrics stay
    on_disk = read_card(folder)
    assert on_disk == card
    # the tensors (and their hash) are untouched: the folder still loads with hash verification
    model, _ = load_checkpoint(folder)
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(outputs(model, x), outputs(net, x), rtol=0, atol=1e-6)


def test_add_evaluation_on_a_broken_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="card.json is missing"):
        add_evaluation(tmp_path / "empty", {"id": "x"})


# ------------------------------------------------------------------------------ permissions

@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_are_world_readable(tmp_path: Path, umask_022: None) -> None:
    """0644 under umask 022 (safetensors 0.8 writes its own temp file and renames it, which used to leave 0600)."""
    folder = save_checkpoint(tmp_path / "perm", make_net(), make_card())
    pub = publish(folder, tmp_path / "pub")
    add_evaluation(pub, {"id": "x"})
    modes = {f"{p.name}/{f}": oct((p / f).stat().st_mode & 0o777)
             for p in (folder, pub) for f in (CARD_FILE, WEIGHTS_FILE)}
    assert set(modes.values()) == {"0o644"}, modes


# ------------------------------------------------------------------------------ list / find by name

def test_list_weights_finds_models_by_name_and_reports_broken_folders(tmp_path: Path, no_shipped: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    models = ws.root / "models"
    net = make_net()
    save_checkpoint(no_shipped / "alpha", net, make_card("alpha"))
    save_checkpoint(models / "beta", net, make_card("beta", labels={0: "background", 1: "vessel"}))
    save_checkpoint(models / "alpha", make_net(seed=3), make_card("alpha-local"))  # shadowed by the shipped one
    (models / "broken").mkdir()
    (models / "broken" / CARD_FILE).write_text("{oops")
    (models / "not-a-model").mkdir()  # no card.json: not listed at all
    (models / "not-a-model" / "notes.txt").write_text("hello")

    entries = list_weights(ws)
    by_name = {e["name"]: e for e in entries}
    assert [e["name"] for e in entries] == ["alpha", "beta", "broken"]
    a, b, broken = by_name["alpha"], by_name["beta"], by_name["broken"]
    assert a["origin"] == "shipped" and a["folder"] == str(no_shipped / "alpha")
    assert b["origin"] == "trained here" and b["classes"] == ["background", "vessel"]
    assert b["arch"] == "unet_classic" and b["in_channels"] == 1 and b["presence_head"] is False
    assert b["metrics"] == {"val_dice": 0.81} and b["synthetic"] is True and b["description"] == "a test model"
    assert b["size_mb"] == round((models / "beta" / WEIGHTS_FILE).stat().st_size / 1e6, 2)
    assert "error" not in a and "error" not in b
    assert "not valid JSON" in broken["error"] and str(models / "broken" / CARD_FILE) in broken["error"]
    assert "classes" not in broken

    # loading by name: the first search dir wins, the workspace's models are found too
    model_a, card_a = load_checkpoint("alpha", workspace=ws)
    assert card_a.name == "alpha"
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(outputs(model_a, x), outputs(net, x), rtol=0, atol=1e-6)
    assert load_checkpoint("beta", workspace=ws)[1].labels[1] == "vessel"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("gamma", workspace=ws)
    assert info.value.message == "no weights named 'gamma'"
    assert info.value.hint == "available: alpha, beta, broken"


def test_list_weights_with_nothing_saved(tmp_path: Path, no_shipped: Path) -> None:
    assert list_weights(Workspace(tmp_path / "empty-ws")) == []


def test_portable_paths_makes_checkout_and_shared_paths_relative(tmp_path: Path) -> None:
    from engine.checkpoint import portable_paths

    root = tmp_path / "main"
    root.mkdir()
    obj = {"data": str(root / ".workspace" / "x"), "eval": [{"dataset": str(tmp_path / "shared" / "data" / "lung")}],
           "other": "/somewhere/else", "text": "not a path", "n": 3, "sibling": str(tmp_path / "elsewhere" / "d")}
    out = portable_paths(obj, root)
    assert out == {"data": ".workspace/x", "eval": [{"dataset": "../shared/data/lung"}],
                   "other": "/somewhere/else", "text": "not a path", "n": 3,
                   "sibling": str(tmp_path / "elsewhere" / "d")}  # beside the checkout but not shared data
