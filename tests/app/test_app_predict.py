"""Predict page (pages/1_Predict.py) with AppTest, plus the ui.predict_view helpers behind it.

Tiny demo phantoms and two tiny random U-Nets in a tmp workspace; real engine calls. The
threshold / min-area test recomputes the expected areas independently from the engine and
checks that the page did not run the model again.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.support.helpers import clear_streamlit_caches, save_tiny_unet

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "1_Predict.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp("predict_app")
    mp = pytest.MonkeyPatch()
    ws, demo = root / "ws", root / "demo"
    mp.setenv("SEGWB_WORKSPACE", str(ws))
    mp.setenv("SEGWB_DEMO_DATA", str(demo))
    generate_demo(demo, scale="tiny")
    save_tiny_unet(ws / "models" / "tiny-a", presence_head=False, seed=0)
    save_tiny_unet(ws / "models" / "tiny-b", presence_head=True, seed=1)
    clear_streamlit_caches()
    yield SimpleNamespace(root=root, ws=ws, demo=demo, nerve=demo / "nerve", ptx=demo / "ptx")
    clear_streamlit_caches()
    mp.undo()


def page(env, model: str = "tiny-a"):
    from streamlit.testing.v1 import AppTest

    from ui import state

    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state[state.Shared.MODEL] = model
    at.session_state[state.Shared.DATASET] = str(env.nerve)
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def runs(at) -> int:
    from ui import state

    return int(at.session_state[state.Predict.MODEL_RUNS])


def texts(at) -> str:
    parts = [str(e.value) for e in at.markdown] + [str(e.value) for e in at.caption]
    parts += [str(e.value) for e in at.code] + [d.value.to_string() for d in at.dataframe]
    parts += [str(e.value) for e in at.error] + [str(e.value) for e in at.info]
    return "\n".join(parts)


def reference(model: str, image_path: str):
    """Probabilities computed outside the app, for expected areas."""
    from engine.inference import Predictor
    from engine.io import load_image

    img, _ = load_image(image_path)
    return Predictor.from_weights(model, device="cpu").predict(img)


def test_no_input_shows_hint_and_demo_buttons(env):
    from engine.datasets import open_dataset
    from ui import predict_view as pv

    at = page(env)
    at.run()
    assert not at.exception
    assert not at.error
    assert any("Try demo image" in i.value for i in at.info)
    cases = pv.demo_cases(open_dataset(env.nerve), 3)
    labels = [b.label for b in at.button]
    for c in cases:
        assert any(c.case_id in lab for lab in labels)
    assert at.file_uploader(key="predict_upload").accept_multiple_files
    assert not at.get("image")


def test_demo_image_threshold_min_area_and_tta(env):
    from engine.compare import pairwise_dice
    from engine.datasets import open_dataset
    from engine.postprocess import PostProcessConfig, postprocess
    from ui import predict_view as pv

    ds = open_dataset(env.nerve)
    case = pv.demo_cases(ds, 3)[0]
    ref = reference("tiny-a", case.image_path)
    at = page(env)
    at.run()
    at.button(key="predict_demo_0").click().run()
    assert not at.exception and not at.error
    assert len(at.get("image")) >= 2                       # overlay + heat map
    m = metrics(at)
    assert m["nerve area"] == f"{int(np.count_nonzero(ref.mask)):,} px"
    gt = ds.load_mask(case)
    assert m["Dice vs ground truth"] == f"{pairwise_dice(ref.mask, gt)['foreground']:.3f}"
    assert m["Presence probability"] == "—"
    assert {"Mask PNG", "Overlay PNG", "RLE (Kaggle UNS)", "RLE (SIIM)"} <= {d.label for d in at.get("download_button")}
    assert runs(at) == 1

    # threshold: areas follow the engine's post-processing of the same probabilities, no model run
    p1 = ref.probs[1]
    t1, t2 = (round(float(np.quantile(p1, q)), 2) for q in (0.3, 0.8))
    assert 0.01 <= t1 < t2 <= 0.99
    areas = []
    for t in (t1, t2):
        at.slider(key="predict_thr_tiny-a").set_value(t).run()
        expected = int(np.count_nonzero(postprocess(ref.probs, PostProcessConfig(threshold=t))))
        assert metrics(at)["nerve area"] == f"{expected:,} px"
        areas.append(expected)
    assert areas[0] > areas[1]
    assert runs(at) == 1

    # the run-length encodings are drawn only once their expander is opened, and they are the mask's
    from engine.rle import decode
    from ui import state

    at.slider(key="predict_thr_tiny-a").set_value(t1).run()
    mask = postprocess(ref.probs, PostProcessConfig(threshold=t1)) > 0
    assert mask.any()
    assert "Run-length encodings (foreground = any class)" in [e.label for e in at.expander]
    assert not at.code
    at.session_state[state.Predict.RLE_OPEN] = True
    at.run()
    full = pv.rle_strings(mask)
    assert (decode(full["kaggle"], mask.shape, "kaggle") == mask).all()
    for code, conv in zip(at.code, ("kaggle", "siim"), strict=True):
        # a long RLE is shown as its first whole pairs (the download has it all)
        assert full[conv].startswith(code.value) and len(code.value.split()) % 2 == 0
        if code.value == full[conv]:
            assert (decode(code.value, mask.shape, conv) == mask).all()
    at.session_state[state.Predict.RLE_OPEN] = False
    at.run()
    assert not at.code and runs(at) == 1
    at.slider(key="predict_thr_tiny-a").set_value(t2).run()
    at.number_input(key="predict_minarea_tiny-a").set_value(500).run()
    expected = int(np.count_nonzero(postprocess(ref.probs, PostProcessConfig(threshold=t2, min_area=500))))
    assert metrics(at)["nerve area"] == f"{expected:,} px"
    assert runs(at) == 1
    # TTA is a different prediction: one more model run; going back is served from the cache
    at.radio(key="predict_tta").set_value("flip").run()
    assert runs(at) == 2 and not at.exception
    at.radio(key="predict_tta").set_value("none").run()
    assert runs(at) == 2
    assert metrics(at)["Total time"].endswith((" ms", " s"))


def test_demo_all_and_presence_model(env):
    at = page(env, model="tiny-b")
    at.run()
    at.button(key="predict_demo_all").click().run()
    assert not at.exception and not at.error
    assert runs(at) == 3
    table = at.dataframe[0].value
    assert len(table) == 3 and "presence" in table.columns
    pres = metrics(at)["Presence probability"]
    assert pres != "—" and 0.0 <= float(pres) <= 1.0
    assert {"All: Kaggle UNS RLE CSV", "All: SIIM RLE CSV", "All: masks (ZIP of PNG)"} <= {
        d.label for d in at.get("download_button")}
    # pick another image in the selector: detail view follows, no new model run
    names = at.selectbox(key="predict_pick").options
    at.selectbox(key="predict_pick").set_value(names[2]).run()
    assert at.subheader[-1].value == names[2]
    assert runs(at) == 3
    at.button(key="predict_demo_clear").click().run()
    assert any("Try demo image" in i.value for i in at.info)


def _tiff_bytes(pages: int = 1) -> bytes:
    import tifffile

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for _ in range(pages):
            tw.write(rng.integers(0, 255, (60, 90), dtype=np.uint8))
    return buf.getvalue()


def test_uploads_tiff_dicom_and_bad_files(env):
    from engine.datasets import open_dataset
    from engine.io.dicom import read_header

    dcm_path = open_dataset(env.ptx).cases[0].image_path
    phi = read_header(dcm_path, include_phi=True)
    at = page(env)
    at.run()
    at.file_uploader(key="predict_upload").set_value([
        ("scan.tif", _tiff_bytes(), "image/tiff"),
        ("chest.dcm", Path(dcm_path).read_bytes(), "application/dicom"),
        ("broken.tif", b"II*\x00garbage" * 10, "image/tiff"),
        ("stack.tif", _tiff_bytes(pages=3), "image/tiff"),
    ]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 2
    assert any(e.startswith("broken.tif") for e in errors)
    assert any(e.startswith("stack.tif") and "multi-page" in e for e in errors)
    table = at.dataframe[0].value
    assert list(table["image"]) == ["scan.tif", "chest.dcm"]
    assert list(table["size"]) == ["60×90", "256×256"]
    at.selectbox(key="predict_pick").set_value("chest.dcm").run()
    assert not at.exception
    assert "DICOM metadata" in " ".join(e.label for e in at.expander)
    assert not at.dataframe[1:]  # the metadata table is drawn only while its expander is open
    from ui import state

    at.session_state[state.Predict.META_OPEN] = True
    at.run()
    assert not at.exception
    page_text = texts(at)
    assert "DICOM metadata" in " ".join(e.label for e in at.expander)
    assert phi["sop_instance_uid"] in page_text and "view_position" in page_text
    for key in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName",
                "AccessionNumber"):
        assert str(phi[key]) not in page_text, key
        assert key not in page_text


# -- ui.predict_view helpers ------------------------------------------------------------------------

def test_rle_preview_keeps_whole_pairs():
    from ui import predict_view as pv

    rle = " ".join(f"{100 * i + 1} {i % 7 + 1}" for i in range(2000))
    assert pv.rle_preview("5 3 20 4", 100) == ("5 3 20 4", 0)
    shown, more = pv.rle_preview(rle, 50)
    toks = shown.split()
    assert len(shown) <= 50 and len(toks) % 2 == 0 and rle.startswith(shown + " ")
    assert more == 2000 - len(toks) // 2 and more > 0
    assert pv.rle_preview(rle, 2) == ("", 2000)  # not even one pair fits
    assert pv.rle_preview(rle, 3) == ("1 1", 1999)
    assert pv.rle_preview("", 10) == ("", 0)


def test_rle_strings_decode_back_to_the_mask():
    from engine.rle import decode
    from ui import predict_view as pv

    rng = np.random.default_rng(1)
    mask = (rng.random((37, 23)) > 0.7).astype(np.uint8) * 2   # class 2 counts as foreground
    rle = pv.rle_strings(mask)
    assert (decode(rle["kaggle"], mask.shape, "kaggle") == (mask > 0)).all()
    assert (decode(rle["siim"], mask.shape, "siim") == (mask > 0)).all()
    first = int(np.flatnonzero((mask > 0).ravel(order="F"))[0])
    assert rle["kaggle"].split()[0] == str(first + 1)            # 1-based absolute start
    assert rle["siim"].split()[0] == str(first)                  # 0-based first offset
    empty = pv.rle_strings(np.zeros((4, 4), np.uint8))
    assert empty == {"kaggle": "", "siim": "-1"}


def test_rle_csv_bytes_both_formats():
    from engine.rle import decode, read_siim_csv
    from ui import predict_view as pv

    a = np.zeros((6, 5), np.uint8)
    a[1:3, 2] = 1
    a[4, 0:3] = 1
    b = np.zeros((6, 5), np.uint8)
    items = [("img1", a), ("img2", b)]
    rows = list(csv.reader(io.StringIO(pv.rle_csv_bytes(items, "kaggle").decode())))
    assert rows[0] == ["img", "pixels"]
    assert [r[0] for r in rows[1:]] == ["img1", "img2"]
    assert (decode(rows[1][1], a.shape, "kaggle") == a).all() and rows[2][1] == ""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "s.csv"
        p.write_bytes(pv.rle_csv_bytes(items, "siim"))
        parsed, stats = read_siim_csv(p)
    assert stats.n_rows == 2                                     # one row per image, whole mask
    assert parsed["img2"] == []
    assert (decode(parsed["img1"][0], a.shape, "siim") == a).all()
    with pytest.raises(Exception, match="unknown RLE convention"):
        pv.rle_csv_bytes(items, "coco")


def test_mask_and_overlay_png_bytes_and_zip():
    from engine.errors import MaskError
    from ui import predict_view as pv

    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 1
    mask[7, :] = 2
    im = Image.open(io.BytesIO(pv.mask_png_bytes(mask)))
    assert im.mode == "P" and (np.asarray(im) == mask).all()  # palette PNG: values kept
    pal = im.getpalette()
    assert pal[3:6] != [0, 0, 0] and pal[3:6] != pal[6:9]  # class 1 and 2 visible and distinct
    with pytest.raises(MaskError):
        pv.mask_png_bytes(np.zeros((2, 2, 2), np.uint8))
    img = np.full((1, 10, 12), 0.5, np.float32)
    ov = np.asarray(Image.open(io.BytesIO(pv.overlay_png_bytes(img, mask, alpha=1.0, contour=False))))
    assert ov.shape == (10, 12, 3)
    assert (ov[0, 0] == 128).all() and not (ov[3, 4] == 128).all()
    hidden = np.asarray(Image.open(io.BytesIO(pv.overlay_png_bytes(img, mask, 1.0, hidden=[1], contour=False))))
    assert (hidden[3, 4] == 128).all() and not (hidden[7, 0] == 128).all()
    zf = zipfile.ZipFile(io.BytesIO(pv.masks_zip_bytes([("a.tif", mask), ("a.png", mask * 0)])))
    assert zf.namelist() == ["a_mask.png", "a_mask_2.png"]
    assert (np.asarray(Image.open(zf.open("a_mask.png"))) == mask).all()


def test_safe_meta_rows_hide_phi():
    from ui import predict_view as pv

    meta = {"format": "dicom", "sex": "F", "age_years": 61.0, "modality": "CR", "pixel_spacing_mm": [0.5, 0.5],
            "PatientName": "DOE^JANE", "PatientID": "123", "PatientBirthDate": "19500101",
            "InstitutionName": "General", "height": 256, "width": 256, "model": None}
    rows = pv.safe_meta_rows(meta)
    fields = [r["field"] for r in rows]
    assert {"sex", "age_years", "modality", "pixel_spacing_mm", "format", "height"} <= set(fields)
    assert "model" not in fields
    flat = str(rows)
    for bad in ("DOE^JANE", "123", "19500101", "General", "PatientName"):
        assert bad not in flat
    assert {"field": "pixel_spacing_mm", "value": "0.5 × 0.5"} in rows
    assert pv.is_dicom(meta) and not pv.is_dicom({"format": "tiff"})


def test_post_config_overrides():
    from engine.postprocess import PostProcessConfig, TripletGate
    from ui import predict_view as pv

    card = PostProcessConfig(threshold=0.5, min_area=10, class_thresholds={1: 0.7}, presence_threshold=0.4,
                             triplet=TripletGate())
    assert pv.post_config(card) == card
    same = pv.post_config(card, threshold=0.5)
    assert same.class_thresholds == {1: 0.7}
    cfg = pv.post_config(card, threshold=0.3, min_area=0, keep_largest=1, fill_holes=True,
                         presence_threshold=0.0, use_triplet=False)
    assert cfg.threshold == 0.3 and cfg.class_thresholds is None and cfg.min_area == 0
    assert cfg.keep_largest == 1 and cfg.fill_holes and cfg.presence_threshold is None and cfg.triplet is None


def test_inputs_unsupported_and_unique_names(tmp_path: Path):
    from engine.errors import ReadError
    from ui import predict_view as pv

    with pytest.raises(ReadError, match=r"notes\.txt: unsupported file type \.txt"):
        pv.check_supported(tmp_path / "x.txt", "notes.txt")
    a = pv.InputImage("a.tif", tmp_path / "1" / "a.tif", "k1")
    b = pv.InputImage("a.tif", tmp_path / "2" / "a.tif", "k2")
    c = pv.InputImage("a.tif", tmp_path / "1" / "a.tif", "k1")
    out = pv.unique_inputs([a, b, c])
    assert [i.name for i in out] == ["a.tif", "a (2).tif"]
    assert pv.image_ids("a (2).tif") == {"kaggle": "a (2)", "siim": "a (2)"}
    assert pv.image_ids("x.dcm", {"sop_instance_uid": "1.2.3"}) == {"kaggle": "x", "siim": "1.2.3"}
    f = tmp_path / "f.png"
    f.write_bytes(b"123")
    k1 = pv.file_key(f)
    f.write_bytes(b"12345")
    assert pv.file_key(f) != k1
    assert pv.fmt_seconds(0.0423) == "42 ms" and pv.fmt_seconds(1.5) == "1.50 s"


def test_gated_model_shows_classifier_probability_and_threshold_needs_no_model_run(env):
    """A card naming a presence classifier: Predict gates the mask, shows P(present), and moving the
    gate threshold re-gates the cached probabilities without running either model again."""
    import torch

    from engine.augment import Preprocess
    from engine.checkpoint import ClassifierCard, GateConfig, save_checkpoint
    from engine.models import ClassifierSpec, build_classifier
    from engine.postprocess import PostProcessConfig, postprocess

    net = build_classifier(ClassifierSpec("cnn_small"), load_pretrained=False)
    with torch.no_grad():
        net.backbone.fc.weight.zero_()
        net.backbone.fc.bias.fill_(-3.0)  # P(present) = sigmoid(-3) ≈ 0.047 for every image
    save_checkpoint(env.ws / "models" / "const-gate", net,
                    ClassifierCard(name="const-gate", classifier=ClassifierSpec("cnn_small"),
                                   preprocess=Preprocess(size=(64, 64)), labels={0: "absent", 1: "nerve"}))
    from engine.datasets import open_dataset
    from ui import predict_view as pv

    ds = open_dataset(env.nerve)
    case = pv.demo_cases(ds, 3)[0]
    save_tiny_unet(env.ws / "models" / "tiny-gated", seed=0, gate=GateConfig("const-gate", 0.2),
                   centre_on=ds.load_image_float(case))  # predicts about half of the image when ungated
    clear_streamlit_caches()
    ref = reference("tiny-gated", case.image_path)  # ungated reference (gate=None)
    at = page(env, model="tiny-gated")
    at.run()
    at.button(key="predict_demo_0").click().run()
    assert not at.exception and not at.error
    m = metrics(at)
    assert m["Presence probability (classifier)"] == f"{1 / (1 + np.exp(3.0)):.3f}"
    assert m["nerve area"] == "0 px"  # gated: P(present) 0.047 < 0.2
    assert at.selectbox(key="predict_gate_tiny-gated").value == "const-gate"
    n = runs(at)
    at.slider(key="predict_gate_thr_tiny-gated_const-gate").set_value(0.01).run()
    expected = int(np.count_nonzero(postprocess(ref.probs, PostProcessConfig())))
    assert metrics(at)["nerve area"] == f"{expected:,} px" and expected > 0
    assert runs(at) == n  # re-gating used the cached probabilities
    at.selectbox(key="predict_gate_tiny-gated").set_value("(no gate)").run()
    assert metrics(at)["Presence probability"] == "—" and metrics(at)["nerve area"] == f"{expected:,} px"


def test_one_presence_gate_control_for_head_and_classifier(env):
    """A segmenter with a presence head: one "Presence gate" control offers none / its head / any
    classifier; choosing the head with a threshold above every probability empties every mask."""
    at = page(env, model="tiny-b")
    at.run()
    gate = at.selectbox(key="predict_gate_tiny-b")
    assert gate.options[:2] == ["(no gate)", "the model's presence head"] and gate.value == "(no gate)"
    assert not [s for s in at.slider if s.key and s.key.startswith("predict_pres")]  # no second control
    at.button(key="predict_demo_all").click().run()
    assert not at.exception
    gate.set_value("the model's presence head").run()
    at.slider(key="predict_pres_tiny-b").set_value(1.0).run()
    assert not at.exception
    areas = [v for k, v in metrics(at).items() if k.endswith(" area")]
    assert areas and all(v == "0 px" for v in areas), metrics(at)
