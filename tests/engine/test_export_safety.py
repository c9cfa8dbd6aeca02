"""Exports and manifests never destroy what the product did not write, and a crash never leaves a
manifest pointing at missing masks: exports are built beside OUT and renamed into place; a foreign
folder is refused untouched; a process killed (SIGKILL) mid-export leaves the earlier export intact
and its leftovers are cleaned up by the next export; a manifest never replaces a model's card.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.datasets import open_dataset
from engine.errors import ConfigError
from engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nerve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp("safety_demo")
    generate_demo(root, scale="tiny")
    return root / "nerve"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _manifest_ok(out: Path) -> int:
    """Every mask the manifest names exists; returns how many."""
    doc = json.loads((out / "manifest.json").read_text())
    paths = [c["mask"]["path"] for c in doc["cases"] if c["mask"]["kind"] == "file"]
    missing = [p for p in paths if not Path(p).is_file()]
    assert not missing, f"{len(missing)} masks missing, e.g. {missing[0]}"
    assert all(Path(p).parent == out / "masks" for p in paths)
    return len(paths)


@pytest.mark.parametrize("fmt", ["png", "coco", "nifti"])
def test_foreign_folder_refused_untouched(nerve: Path, tmp_path: Path, workspace: Path, fmt: str) -> None:
    from engine.curation.export import export_dataset

    ds = open_dataset(nerve, workspace=Workspace(workspace))
    user = tmp_path / "user"
    (user / "masks").mkdir(parents=True)
    (user / "masks" / "keep.png").write_bytes(b"mine")
    (user / "export.json").write_text('{"format": "somebody-else"}')  # not our marker
    before = _tree(user)
    with pytest.raises(ConfigError, match="not empty"):
        export_dataset(ds, None, user, fmt)
    assert _tree(user) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".user.")]  # no temp left behind


def test_reexport_replaces_our_export_and_removed_cases_go(nerve: Path, tmp_path: Path, workspace: Path) -> None:
    from engine.curation import export_corrected

    ds = open_dataset(nerve, workspace=Workspace(workspace))
    out = tmp_path / "exp"
    export_corrected(ds, None, out)
    (out / "masks" / "stale-from-an-old-run.png").write_bytes(b"x")
    n = _manifest_ok(out)
    export_corrected(ds, None, out)
    assert not (out / "masks" / "stale-from-an-old-run.png").exists() and _manifest_ok(out) == n
    with pytest.raises(ConfigError, match="earlier export"):
        export_corrected(ds, None, out, overwrite=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp.")]


def test_kill_during_reexport_keeps_old_export_and_next_run_cleans_up(nerve: Path, tmp_path: Path,
                                                                      workspace: Path) -> None:
    from engine.curation import export_corrected

    ds = open_dataset(nerve, workspace=Workspace(workspace))
    out = tmp_path / "exp"
    export_corrected(ds, None, out)
    old = _tree(out)
    n = _manifest_ok(out)
    # a second process re-exports and is SIGKILLed after writing a few masks (no clean-up possible)
    code = f"""
import os, signal
from engine.datasets import open_dataset
from engine.curation import export_corrected
from engine.workspace import Workspace
ds = open_dataset({str(nerve)!r}, workspace=Workspace({str(workspace)!r}))
def progress(done, total, msg=""):
    if done == 5:
        os.kill(os.getpid(), signal.SIGKILL)
export_corrected(ds, None, {str(out)!r}, progress)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "SEGWB_WORKSPACE": str(workspace)},
                       capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
    assert _tree(out) == old and _manifest_ok(out) == n  # the old export is whole
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".exp.tmp-")]
    assert leftovers and any((p / "masks").glob("*.png") for p in leftovers)
    info = export_corrected(ds, None, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp.")]
    assert any("interrupted export" in note for note in info["notes"]) and _manifest_ok(out) == n


def test_crash_between_the_two_renames_is_repaired(nerve: Path, tmp_path: Path, workspace: Path) -> None:
    from engine.curation import export_corrected
    from engine.fsutil import cleanup_staging

    ds = open_dataset(nerve, workspace=Workspace(workspace))
    out = tmp_path / "exp"
    export_corrected(ds, None, out)
    old = _tree(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".exp.old-{dead.pid}-abc"
    os.rename(out, aside)  # the state a crash leaves right after moving the old export aside
    done = cleanup_staging(out)
    assert out.is_dir() and _tree(out) == old and not aside.exists() and "restored" in done[0]


def test_manifest_never_replaces_a_foreign_file(nerve: Path, tmp_path: Path, workspace: Path) -> None:
    from engine.__main__ import main
    from engine.curation import is_product_manifest, save_manifest

    ds = open_dataset(nerve, workspace=Workspace(workspace))
    card = tmp_path / "model" / "card.json"
    card.parent.mkdir()
    card.write_text('{"name": "my-model", "note": "segwb-manifest mentioned in a text"}')
    before = card.read_bytes()
    with pytest.raises(ConfigError, match="not a manifest"):
        save_manifest(card, ds, ds.cases, [], on_exists="refuse")
    assert card.read_bytes() == before
    path, note = save_manifest(card, ds, ds.cases, [], on_exists="rename")
    assert path == card.with_name("card-1.json") and note and "card.json" in note and card.read_bytes() == before
    assert is_product_manifest(path)
    # our own manifest is replaced in place
    again, note2 = save_manifest(path, ds, ds.cases[:3], [], on_exists="refuse")
    assert again == path and note2 is None and json.loads(path.read_text())["n_cases"] == 3
    # a symlink named like a manifest is never followed
    target = tmp_path / "secret.txt"
    target.write_text("keep")
    link = tmp_path / "link.json"
    os.symlink(target, link)
    with pytest.raises(ConfigError):
        save_manifest(link, ds, ds.cases, [], on_exists="refuse")
    assert target.read_text() == "keep"
    # the CLI refuses (exit status != 0, file intact)
    rc = main(["manifest", str(nerve), "--out", str(card)])
    assert rc != 0 and card.read_bytes() == before
    assert main(["manifest", str(nerve), "--out", str(tmp_path / "new.json")]) == 0
    assert is_product_manifest(tmp_path / "new.json")


def test_convert_refuses_a_foreign_folder_and_replaces_its_own(nerve: Path, tmp_path: Path, workspace: Path) -> None:
    from engine.datasets.convert import convert_dataset
    from engine.errors import WorkbenchError

    ds = open_dataset(nerve, workspace=Workspace(workspace))
    user = tmp_path / "user"
    user.mkdir()
    (user / "convert.json").write_text("{}")  # a marker-named file is not enough
    (user / "notes.txt").write_text("mine")
    before = _tree(user)
    with pytest.raises(WorkbenchError, match="not made by `convert`"):
        convert_dataset(ds, user, 32)
    assert _tree(user) == before
    out = tmp_path / "conv"
    first = convert_dataset(ds, out, 32)
    (out / "images" / "stale.png").write_bytes(b"x")
    second = convert_dataset(ds, out, 48)
    assert not (out / "images" / "stale.png").exists() and second["size"] == [48, 48]
    assert first["n_images"] == second["n_images"] == len(list((out / "images").iterdir()))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".conv.")]
