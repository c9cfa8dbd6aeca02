"""Hostile names never become paths: every writer that names a file after a case id, UID, upload
name or user text (masks CLI, predict naming, PNG/COCO/NIfTI exports, manifests, thumbnails,
evaluation predictions, uploads, conversion) keeps every file inside its target folder.

The dataset is a manifest whose case ids are attacks (``../../x``, absolute paths, separators,
``..``, NUL, 400 characters, Windows device names, unicode); each writer runs into a fresh folder
inside a sandbox, and the test asserts that nothing was created anywhere in the sandbox outside
that folder (and that a file planted as a target outside is untouched)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine.datasets import Case, Dataset, MaskSource, open_dataset, write_manifest
from engine.fsutil import MAX_NAME_LEN, safe_child, safe_filename, safe_name
from engine.workspace import Workspace

HOSTILE = ["../../x", "/tmp/segwb-hostile-abs", "a/b", "..", ".", "a\x00b", "x" * 400, "CON", "nul.txt", "COM1",
           "LPT9.png", "ünïcødé-名前", "..\\..\\win", " ", "-rf", ".hidden", "a/../../../../etc/passwd",
           "1.2.840.113619.2.55.3", "case..1", "trailing."]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE + ["", "\n", "/", "C:\\x"])
def test_safe_child_stays_inside(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "out"
    p = safe_child(folder, name, ".png")
    assert p.parent == folder and "/" not in p.name and "\\" not in p.name and "\x00" not in p.name
    assert not p.name.startswith(".") and len(p.name) <= MAX_NAME_LEN + len(".png")
    assert p.name.split(".")[0].upper() not in ("CON", "NUL", "COM1", "LPT9")
    assert p.name.isascii()
    # stable, and two different names never share a file
    assert safe_child(folder, name, ".png") == p


def test_safe_names_are_distinct_and_keep_safe_ids() -> None:
    names = [safe_name(n) for n in HOSTILE]
    assert len(set(names)) == len(HOSTILE)
    assert safe_name("1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"  # a plain UID stays readable
    assert safe_name("12_34") == "12_34"


@pytest.mark.parametrize("name,suffix", [("../../scan.dcm", ".dcm"), ("C:\\Users\\x\\scan.DCM", ".DCM"),
                                         ("..", ""), ("a\x00b.png", ".png"), ("CON.png", ".png"),
                                         ("x" * 300 + ".tif", ".tif"), ("名前.jpg", ".jpg"), (".bashrc", "")])
def test_safe_filename_keeps_suffix(name: str, suffix: str) -> None:
    f = safe_filename(name)
    assert "/" not in f and "\\" not in f and "\x00" not in f and f not in (".", "..") and not f.startswith(".")
    assert f.endswith(suffix) and len(f) <= MAX_NAME_LEN + 11


@pytest.fixture()
def hostile_manifest(tmp_path: Path) -> Path:
    """A manifest of 2-class cases named by HOSTILE ids (images/masks are plain PNGs)."""
    from PIL import Image

    from engine.io import write_mask_png

    src = tmp_path / "sandbox" / "data"
    (src / "img").mkdir(parents=True)
    cases = []
    for i, cid in enumerate(HOSTILE):
        img = (np.random.default_rng(i).random((24, 32)) * 255).astype(np.uint8)
        Image.fromarray(img).save(src / "img" / f"{i}.png")
        mask = np.zeros((24, 32), np.uint8)
        mask[4 + i % 5: 12 + i % 5, 6:20] = 1
        write_mask_png(src / "img" / f"{i}_mask.png", mask)
        cases.append(Case(cid, cid, str(src / "img" / f"{i}.png"),
                          MaskSource("file", str(src / "img" / f"{i}_mask.png")),
                          True, True, int(mask.sum()), 24, 32))
    source = Dataset(src, "paired", cases, {0: "background", 1: "nerve"})
    path = src / "hostile.json"
    write_manifest(path, source, cases)
    return path


def _sandbox_check(sandbox: Path, out: Path, before: set[Path]) -> None:
    created = _files(sandbox) - before
    allowed = set(out.parents)  # folders created on the way to OUT
    outside = [p for p in created if out not in p.parents and p != out and p not in allowed
               and not p.name.startswith("index-") and p.name != "secret.key"
               and not (p.is_dir() and p.parent.name == "datasets")]
    assert not outside, f"written outside {out}: {sorted(map(str, outside))[:5]}"
    assert not Path("/tmp/segwb-hostile-abs").exists() and not Path("/tmp/segwb-hostile-abs.png").exists()


def test_every_writer_keeps_hostile_ids_inside(hostile_manifest: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from engine.__main__ import main
    from engine.curation import export_corrected, save_manifest
    from engine.curation.export import export_dataset
    from engine.evaluation import prediction_path
    from engine.thumbnails import thumbnail_path, thumbs_dir

    sandbox = tmp_path / "sandbox"
    ws = Workspace(sandbox / "ws")
    monkeypatch.setenv("SEGWB_WORKSPACE", str(ws.root))  # the CLI's --workspace sets it: restore after
    ds = open_dataset(hostile_manifest, workspace=ws)
    assert sorted(ds.case_ids) == sorted(HOSTILE) and not ds.bad_files
    planted = sandbox / "x.png"
    planted.write_bytes(b"user file")

    def run(out: Path, fn) -> None:
        before = _files(sandbox)
        fn(out)
        _sandbox_check(sandbox, out, before)
        assert planted.read_bytes() == b"user file"

    # masks CLI
    run(sandbox / "deep" / "a" / "masks", lambda out: main(["--workspace", str(ws.root), "masks",
                                                            str(hostile_manifest), "--out", str(out)]))
    assert len(list((sandbox / "deep" / "a" / "masks").glob("*.png"))) == len(HOSTILE)
    # exports, every format (NIfTI/COCO/PNG; DICOM-SEG needs DICOM sources: tested in test_phi)
    for fmt in ("png", "coco", "nifti"):
        run(sandbox / "deep" / "b" / fmt, lambda out, fmt=fmt: export_dataset(ds, None, out, fmt))
    assert len(list((sandbox / "deep" / "b" / "png" / "masks").glob("*.png"))) == len(HOSTILE)
    assert len(list((sandbox / "deep" / "b" / "nifti" / "labels").glob("*.nii.gz"))) == len(HOSTILE)
    # copy_images too (plain PNG sources: copied under images/)
    run(sandbox / "deep" / "c" / "copied", lambda out: export_corrected(ds, None, out, copy_images=True))
    # manifests named by user text
    for i, text in enumerate(["../../x", "/tmp/segwb-hostile-abs"]):
        folder = sandbox / "deep" / "d" / str(i)
        run(folder, lambda out, text=text: save_manifest(out / safe_filename(text + ".json"), ds, ds.cases, []))
    # thumbnails (cache files named by a hash of the inputs) and evaluation predictions
    run(thumbs_dir(ds), lambda out: [thumbnail_path(ds, c) for c in ds.cases])
    for cid in HOSTILE:
        p = prediction_path(sandbox / "deep" / "eval", cid)
        assert p.parent == sandbox / "deep" / "eval" / "pred"
    # uploads named by the browser
    from engine.phi import save_upload

    up = ws.root / "uploads"
    for name in HOSTILE + ["../../../evil.dcm", "/etc/passwd", "..\\..\\evil.png"]:
        run(up, lambda out, name=name: save_upload(name, name.encode("utf-8", "surrogatepass") + b"!", ws.root))
    # conversion to a paired folder
    run(sandbox / "deep" / "e", lambda out: main(["--workspace", str(ws.root), "convert",
                                                  str(hostile_manifest), "--out", str(out)]))
    capsys.readouterr()


def test_predict_output_names_stay_inside(tmp_path: Path) -> None:
    """The predict CLI names outputs by input stems (output_names → safe_child)."""
    from engine.cli.models import output_names

    files = [tmp_path / "in" / f"{n.replace('/', '_').replace(chr(0), '_')}.png" for n in HOSTILE if n.strip(".")]
    names = output_names(files)
    out = tmp_path / "out"
    paths = {safe_child(out, stem, ".png") for stem in names.values()}
    assert len(paths) == len(set(files)) and all(p.parent == out for p in paths)


def test_hostile_case_id_never_climbs_out_of_cli_masks_with_symlinked_out(hostile_manifest: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """Even when OUT is reached through a symlink, files land in the real OUT folder."""
    from engine.__main__ import main

    monkeypatch.setenv("SEGWB_WORKSPACE", str(tmp_path / "ws"))
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    os.symlink(real, link)
    main(["--workspace", str(tmp_path / "ws"), "masks", str(hostile_manifest), "--out", str(link)])
    assert len(list(real.glob("*.png"))) == len(HOSTILE)
    assert {p.parent for p in real.rglob("*")} == {real}


def test_atomic_writes_fsync_only_when_durable(tmp_path: Path, monkeypatch) -> None:
    """Derived files (reports, index caches) skip the fsyncs but stay atomic: a failed write leaves
    the old file whole; user work (the default) is fsynced, file and folder."""
    import os

    from engine import fsutil

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    p = tmp_path / "r.json"
    fsutil.atomic_write_json(p, {"v": 1})
    assert len(synced) == 2 and fsutil.read_json(p) == {"v": 1}
    synced.clear()
    fsutil.atomic_write_json(p, {"v": 2}, durable=False)
    assert synced == [] and fsutil.read_json(p) == {"v": 2}
    with pytest.raises(RuntimeError):
        with fsutil.atomic_path(p, durable=False) as tmp:
            tmp.write_text('{"v": 3, "torn')
            raise RuntimeError("crash mid-write")
    assert fsutil.read_json(p) == {"v": 2} and [q.name for q in tmp_path.iterdir()] == ["r.json"]
