"""engine.curation.export_corrected on the tiny phantoms and hand-made paired folders: the exported
masks are the current versions, the RLE CSVs decode back to them, the manifest opens as a dataset
with the same masks, and the dataset's own files never change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engine.curation import export_corrected
from engine.datasets import open_dataset
from engine.errors import ConfigError
from engine.fsutil import safe_name
from engine.io import read_mask
from engine.rle import decode, decode_union, read_kaggle_uns_csv, read_siim_csv
from engine.store import ReviewStore
from engine.workspace import Workspace


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp("export_demo")
    generate_demo(root, scale="tiny")
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def blob(shape: tuple[int, int], y: int, x: int, r: int, value: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - y) ** 2 + (xx - x) ** 2) <= r * r).astype(np.uint8) * np.uint8(value)


def test_kaggle_export_masks_csv_manifest_and_untouched_originals(demo: Path, tmp_path: Path) -> None:
    ds = open_dataset(demo / "nerve", workspace=Workspace(tmp_path / "ws"))
    before = tree_hashes(ds.root)
    labelled = [c for c in ds.cases if c.labelled]
    a, b, c = labelled[0], labelled[1], labelled[2]
    shape = (a.height, a.width)
    seen: list[tuple[int, int]] = []
    with ReviewStore.for_dataset(ds) as store:
        m1 = blob(shape, 100, 200, 30)
        store.save_mask_version(a.case_id, m1, "ann", "first")
        m2 = m1.copy()
        m2[90:110, 150:180] = 1
        store.save_mask_version(a.case_id, m2, "bob", "grow", base_version=1)       # latest of a: m2
        store.save_mask_version(b.case_id, np.zeros(shape, np.uint8), "ann", "empty")  # b emptied
        store.save_mask_version(c.case_id, blob(shape, 50, 50, 10), "ann", "oops")
        store.revert(c.case_id, 0, "ann")                                             # c back to its original
        info = export_corrected(ds, store, tmp_path / "out", progress=lambda d, t, m: seen.append((d, t)))

    out = tmp_path / "out"
    assert before == tree_hashes(ds.root)  # the dataset folder is only read
    assert info["n_exported"] == len(labelled) and info["n_corrected"] == 2 and info["n_dropped"] == 0
    assert info["versions"] == {a.case_id: 2, b.case_id: 1}
    assert info["rle_csv"] == str(out / "train_masks.csv") and seen and seen[-1][0] == seen[-1][1]
    expected = {cs.case_id: ds.load_mask(cs) for cs in labelled}
    expected[a.case_id], expected[b.case_id] = m2, np.zeros(shape, np.uint8)
    assert not np.array_equal(expected[c.case_id], blob(shape, 50, 50, 10))
    for cid, m in expected.items():
        got, _ = read_mask(out / "masks" / f"{safe_name(cid)}.png")
        assert np.array_equal(got, m), cid
    assert len(list((out / "masks").iterdir())) == len(labelled)
    rles, stats = read_kaggle_uns_csv(out / "train_masks.csv")
    assert set(rles) == set(expected)
    for cid, m in expected.items():
        assert np.array_equal(decode(rles[cid], shape, "kaggle"), (m > 0).astype(np.uint8)), cid
    # the manifest is a dataset with exactly these masks, original images
    man = open_dataset(out / "manifest.json")
    assert man.layout == "manifest" and len(man) == len(ds) and not man.bad_files
    for cs in man.cases:
        assert cs.image_path == ds.case(cs.case_id).image_path
        if cs.case_id in expected:
            assert np.array_equal(man.load_mask(cs), expected[cs.case_id])
            assert cs.mask_area == int(np.count_nonzero(expected[cs.case_id]))
    assert man.case(a.case_id).meta["mask_origin"] == "review:corrected"
    lines = (out / "images.csv").read_text().splitlines()
    assert lines[0] == "case_id,image_path" and len(lines) == len(ds) + 1
    assert f"{a.case_id},{a.image_path}" in lines
    saved = json.loads((out / "export.json").read_text())
    assert saved["n_exported"] == info["n_exported"] and saved["format"] == "segwb-corrected-export"


def test_siim_export_csv_regions_and_empty(demo: Path, tmp_path: Path) -> None:
    ds = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    before = tree_hashes(ds.root)
    target = next(c for c in ds.cases if c.labelled)
    shape = (target.height, target.width)
    two = blob(shape, 60, 60, 12) | blob(shape, 180, 190, 20)
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version(target.case_id, two, "ann", "two regions")
        info = export_corrected(ds, store, tmp_path / "out")
    assert before == tree_hashes(ds.root)
    csv_path = tmp_path / "out" / "train-rle.csv"
    assert info["rle_csv"] == str(csv_path)
    rows, _ = read_siim_csv(csv_path)
    assert len(rows[target.case_id]) == 2  # one row per connected region, as in the official file
    for cs in ds.cases:
        if not cs.labelled:
            continue
        want = two if cs.case_id == target.case_id else ds.load_mask(cs)
        got = decode_union(rows[cs.case_id], (cs.height, cs.width), "siim")
        assert np.array_equal(got, (want > 0).astype(np.uint8)), cs.case_id
        if not want.any():
            assert rows[cs.case_id] == []  # written as -1
    assert "-1" in csv_path.read_text()


def test_decisions_drop_cases_unless_disabled(demo: Path, tmp_path: Path) -> None:
    ds = open_dataset(demo / "nerve", workspace=Workspace(tmp_path / "ws"))
    ids = [c.case_id for c in ds.cases if c.labelled]
    with ReviewStore.for_dataset(ds) as store:
        store.record_decision(ids[0], ids[1], "keep_a", "ann", "twin")  # drop ids[1]
        info = export_corrected(ds, store, tmp_path / "with")
        plain = export_corrected(ds, store, tmp_path / "without", apply_decisions=False)
    assert info["n_dropped"] == 1 and info["dropped"][0]["case_id"] == ids[1]
    assert not (tmp_path / "with" / "masks" / f"{safe_name(ids[1])}.png").exists()
    assert ids[1] not in open_dataset(tmp_path / "with" / "manifest.json")
    rles, _ = read_kaggle_uns_csv(tmp_path / "with" / "train_masks.csv")
    assert ids[1] not in rles and ids[0] in rles
    assert plain["n_dropped"] == 0 and (tmp_path / "without" / "masks" / f"{safe_name(ids[1])}.png").exists()
    none = export_corrected(ds, None, tmp_path / "nostore")
    assert none["n_corrected"] == 0 and none["store"] is None and none["n_exported"] == len(ids)


def test_refuses_folders_inside_the_dataset_or_foreign_and_replaces_its_own(demo: Path, tmp_path: Path) -> None:
    ds = open_dataset(demo / "nerve", workspace=Workspace(tmp_path / "ws"))
    before = tree_hashes(ds.root)
    with ReviewStore.for_dataset(ds) as store:
        with pytest.raises(ConfigError, match="inside the dataset"):
            export_corrected(ds, store, ds.root / "corrected")
        with pytest.raises(ConfigError, match="inside the dataset"):
            export_corrected(ds, store, ds.root)
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "notes.txt").write_text("mine")
        with pytest.raises(ConfigError, match="not empty"):
            export_corrected(ds, store, foreign)
        (tmp_path / "afile").write_text("x")
        with pytest.raises(ConfigError):
            export_corrected(ds, store, tmp_path / "afile")
        first = export_corrected(ds, store, tmp_path / "out")
        stale = tmp_path / "out" / "masks" / "stale_case.png"
        stale.write_bytes(b"x")
        with pytest.raises(ConfigError, match="earlier export"):
            export_corrected(ds, store, tmp_path / "out", overwrite=False)
        again = export_corrected(ds, store, tmp_path / "out")
    assert not stale.exists() and again["n_exported"] == first["n_exported"]
    assert before == tree_hashes(ds.root) and not (ds.root / "corrected").exists()


def _paired(root: Path, values: list[int], n: int = 3, size: int = 24) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(root / "images" / f"case{i}.png")
        m = np.zeros((size, size), np.uint8)
        m[2:8, 2:8] = values[1]
        m[12:20, 10:18] = values[2]
        if i == n - 1:
            m[:] = 0
        Image.fromarray(m).save(root / "masks" / f"case{i}.png")
    return root


def test_multiclass_paired_export_with_remapped_class_ids(tmp_path: Path) -> None:
    """Stored ids {0, 2, 5} are remapped to 0..2 by the dataset; exported PNGs and the manifest
    must hold the consecutive ids (a corrected version is never re-mapped a second time)."""
    root = _paired(tmp_path / "paired", [0, 2, 5])
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    assert ds.layout == "paired" and ds.num_classes == 3 and ds.label_lut is not None
    before = tree_hashes(root)
    orig = ds.load_mask("case0")
    assert set(np.unique(orig)) == {0, 1, 2}
    fixed = orig.copy()
    fixed[0:2, :] = 2
    fixed[12:20, 10:18] = 1
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version("case0", fixed, "ann")
        info = export_corrected(ds, store, tmp_path / "out", copy_images=True)
    assert before == tree_hashes(root)
    assert info["rle_csv"] is None and any("paired layout" in n for n in info["notes"])
    got, _ = read_mask(tmp_path / "out" / "masks" / "case0.png")
    assert np.array_equal(got, fixed)
    got1, _ = read_mask(tmp_path / "out" / "masks" / "case1.png")
    assert np.array_equal(got1, ds.load_mask("case1"))
    man = open_dataset(tmp_path / "out" / "manifest.json")
    assert np.array_equal(man.load_mask("case0"), fixed) and np.array_equal(man.load_mask("case1"),
                                                                          ds.load_mask("case1"))
    assert man.labels == ds.labels
    # images copied, mirroring the dataset's layout; the manifest points at the copies
    assert (tmp_path / "out" / "images" / "images" / "case0.png").read_bytes() == \
        (root / "images" / "case0.png").read_bytes()
    assert Path(man.case("case0").image_path).is_relative_to(tmp_path / "out")


def test_binary_paired_export_has_no_csv(tmp_path: Path) -> None:
    root = _paired(tmp_path / "bin", [0, 255, 255])
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    info = export_corrected(ds, None, tmp_path / "out")
    assert info["rle_csv"] is None and any("paired" in n for n in info["notes"])
    assert info["n_empty"] == 1 and info["n_exported"] == 3
    got, _ = read_mask(tmp_path / "out" / "masks" / "case0.png")
    assert np.array_equal(got, ds.load_mask("case0")) and got.max() == 1


def test_rle_csv_is_skipped_for_multiclass_corrections(demo: Path, tmp_path: Path) -> None:
    """RLE is binary: a correction that introduces a second class in a Kaggle layout gets no CSV
    (rather than a CSV that silently merges the classes); masks keep both classes."""
    ds = open_dataset(demo / "nerve", workspace=Workspace(tmp_path / "ws"))
    c = ds.cases[0]
    m = np.zeros((c.height, c.width), np.uint8)
    m[10:20, 10:20] = 1
    m[30:40, 30:40] = 2
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version(c.case_id, m, "ann")
        info = export_corrected(ds, store, tmp_path / "out")
    assert info["rle_csv"] is None and any("several classes" in n for n in info["notes"])
    assert not (tmp_path / "out" / "train_masks.csv").exists()
    got, _ = read_mask(tmp_path / "out" / "masks" / f"{c.case_id}.png")
    assert np.array_equal(got, m)


def test_cli_export_corrected_writes_the_corrected_version(demo: Path, tmp_path: Path, capsys) -> None:
    from engine.__main__ import main

    ds = open_dataset(demo / "nerve")
    case = next(c for c in ds.cases if c.has_mask)
    fixed = np.zeros((case.height, case.width), np.uint8)
    fixed[10:40, 20:90] = 1
    ReviewStore.for_dataset(ds).save_mask_version(case.case_id, fixed, "cli-test", "box")
    out = tmp_path / "export"
    assert main(["export-corrected", str(demo / "nerve"), str(out)]) == 0
    assert "1 corrected" in capsys.readouterr().out
    rows, _ = read_kaggle_uns_csv(out / "train_masks.csv")
    assert np.array_equal(decode(rows[case.case_id], fixed.shape), fixed)
    assert np.array_equal(open_dataset(out / "manifest.json").load_mask(case.case_id), fixed)
