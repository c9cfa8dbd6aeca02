"""Workflows clicked through the running app: Predict (uploads), Compare models, Dataset browser,
Metrics dashboard. Models: MODEL_A (trained briefly) and MODEL_B (random), see conftest.py.
"""

from __future__ import annotations

import re

import pytest

from tests.browser.support import (
    MODEL_A,
    MODEL_B,
    active_tab,
    alerts,
    app_text,
    assert_healthy,
    click_button,
    dataframe_text,
    expand,
    goto_page,
    headings,
    image_captions,
    loaded_images,
    metrics,
    open_tab,
    screenshot,
    select_option,
    selected,
    set_multiselect,
    set_number,
    slide,
    toggle,
    upload,
    wait_until,
)

pytestmark = pytest.mark.browser


def _number(text: str) -> float:
    m = re.search(r"-?\d[\d,]*\.?\d*", text)
    assert m, f"no number in {text!r}"
    return float(m.group(0).replace(",", ""))


@pytest.fixture(scope="module")
def inputs(browser_env, tmp_path_factory):
    """A nerve TIFF, a chest DICOM (with its fake PHI) and a corrupt file."""
    import pydicom

    tif = browser_env.nerve / "train" / "1_2.tif"
    dcm = sorted(browser_env.ptx.rglob("*.dcm"))[0]
    bad = tmp_path_factory.mktemp("uploads") / "corrupt_scan.tif"
    bad.write_bytes(b"II*\x00" + b"not really a tiff " * 20)
    hdr = pydicom.dcmread(dcm, stop_before_pixels=True)
    phi = [str(hdr.PatientName), str(hdr.PatientID), str(hdr.InstitutionName), str(hdr.ReferringPhysicianName)]
    assert tif.is_file() and all(phi)
    return {"tif": tif, "dcm": dcm, "bad": bad, "phi": phi}


def test_predict_uploads(page, inputs) -> None:
    goto_page(page, "Predict")
    select_option(page, "Model", MODEL_A)
    tif, dcm, bad = inputs["tif"], inputs["dcm"], inputs["bad"]
    upload(page, [tif, dcm, bad])

    # the corrupt file is reported by name, the two good ones are segmented
    assert_healthy(page, allow_errors=[bad.name])
    errors = alerts(page, "error")
    assert len(errors) == 1 and bad.name in errors[0], errors
    assert "2 images" in headings(page)
    caps = image_captions(page)
    # thumbnails: long names are shortened to their end ("…" + tail)
    assert tif.name in caps and any(c == dcm.name or (c.startswith("…") and dcm.name.endswith(c[1:]))
                                    for c in caps), caps
    assert tif.name in headings(page)  # detail view of the first image
    assert f"{tif.name}: prediction" in caps
    assert loaded_images(page) >= 4  # 2 batch thumbnails + overlay + heat map
    table = dataframe_text(page)
    assert tif.name in table and dcm.name in table and "420×580" in table, table
    m = metrics(page)
    area_05 = _number(m["nerve area"])
    screenshot(page, "predict_results")

    # raise the threshold to its maximum (the settings sit in an expander, the results stay in view):
    # fewer (or as many) nerve pixels, page still fine
    expand(page, "Threshold, post-processing and presence gate")
    assert slide(page, "Threshold", "End") == "0.99"
    assert_healthy(page, allow_errors=[bad.name])
    area_099 = _number(metrics(page)["nerve area"])
    assert area_099 <= area_05
    assert "cached probabilities" in " ".join(metrics_deltas(page)), "the model ran again for a threshold change"

    # outline off: still an overlay
    assert toggle(page, "Outline") is False
    assert_healthy(page, allow_errors=[bad.name])
    assert f"{tif.name}: prediction" in image_captions(page)

    # the DICOM's detail view: overlay + metadata without the (fake) patient-identifying fields
    select_option(page, "Image", dcm.name)
    assert dcm.name in headings(page)
    assert f"{dcm.name}: prediction" in image_captions(page)
    # the metadata table is drawn only once its expander is opened (the batch table is the only one)
    assert page.locator('[data-testid="stDataFrame"]').count() == 1
    expand(page, "DICOM metadata", lazy=True)
    assert_healthy(page, allow_errors=[bad.name])
    meta = dataframe_text(page, nth=1)
    assert "CR" in meta or "modality" in meta.lower(), meta
    text = app_text(page)
    leaked = [p for p in inputs["phi"] if p in text]
    assert not leaked, f"patient-identifying DICOM fields shown: {leaked}"


def metrics_deltas(page) -> list[str]:
    return [t.strip() for t in page.locator('[data-testid="stMetricDelta"]:visible').all_inner_texts()]


def test_compare_models(page) -> None:
    goto_page(page, "Compare models")
    set_multiselect(page, "Models (two or three)", [MODEL_A, MODEL_B])
    assert_healthy(page)

    # one image of the dataset: overlays, disagreement map, inter-model Dice
    tab = active_tab(page)
    select_option(page, "Case", "2_3", scope=tab)
    assert_healthy(page)
    caps = image_captions(page, tab)
    assert "Ground truth" in caps
    assert any(c.startswith(f"A: {MODEL_A}") for c in caps) and any(c.startswith(f"B: {MODEL_B}") for c in caps), caps
    assert f"A = {MODEL_A}, B = {MODEL_B}" in caps  # the disagreement map
    assert loaded_images(page, tab) >= 4
    d = _number(metrics(page, tab)["Dice A vs B (foreground)"])
    assert 0.0 <= d <= 1.0
    assert MODEL_A in dataframe_text(page, 0, tab)

    # over the dataset: 6 cases, table sorted by disagreement, a case opened side by side
    open_tab(page, "Over the dataset")
    tab = active_tab(page)
    set_number(page, "N", 6, scope=tab)
    click_button(page, "Compare on these cases", scope=tab)
    assert_healthy(page)
    tab = active_tab(page)
    m = metrics(page, tab)
    assert 0.0 <= _number(m["Mean Dice AB"]) <= 1.0, m
    assert _number(m["Cases with disagreement > 0.5"].split("/")[1]) == 6, m
    table = dataframe_text(page, 0, tab)
    assert "disagreement" in table and re.search(r"\d+_\d+", table), table
    case_heading = [h for h in headings(page) if h.startswith("Case ")]
    assert case_heading, headings(page)
    assert f"A = {MODEL_A}, B = {MODEL_B}" in image_captions(page, tab)
    assert loaded_images(page, tab) >= 4
    screenshot(page, "compare_models_dataset")


def test_dataset_browser(page) -> None:
    goto_page(page, "Dataset browser")
    assert_healthy(page)
    caps = image_captions(page)
    assert len(caps) == 36 and all(re.match(r"^\d+_\d+ · ", c) for c in caps), caps[:5]
    assert loaded_images(page) == 36

    # pagination: 24 per page → page 2 shows the other 12
    select_option(page, "Thumbnails per page", "24")
    first = image_captions(page)
    assert len(first) == 24
    click_button(page, "Next")
    second = image_captions(page)
    assert len(second) == 12 and not set(first) & set(second)
    assert loaded_images(page) == 12

    # open a case: image + ground truth, then a model's live prediction and per-image metrics
    wanted = second[2].split(" · ")[0]
    click_button(page, "Open", nth=2)
    assert_healthy(page)
    assert "Per-image metrics" in headings(page) and "Case" in headings(page)
    assert any(c.startswith(f"{wanted} · image") for c in image_captions(page)), image_captions(page)
    select_option(page, "Model (prediction overlays, Dice filter)", MODEL_A)
    assert_healthy(page)
    caps = image_captions(page)
    assert any(c.startswith("prediction · ") for c in caps), caps
    assert loaded_images(page) >= 3
    table = dataframe_text(page, 0)
    assert "Dice" in table and "nerve" in table, table
    screenshot(page, "dataset_browser_detail")


def test_metrics_dashboard(page) -> None:
    goto_page(page, "Metrics dashboard")
    box = expand(page, "Evaluate a model on this dataset")
    select_option(page, "Model", MODEL_A, scope=box)
    click_button(page, f"Evaluate {MODEL_A}")
    assert_healthy(page)
    # the page reruns itself (st.rerun) to show the new evaluation
    # the model was trained on this dataset: the dashboard evaluates its held-out cases by default
    shown = wait_until(lambda: (lambda v: v if MODEL_A in v and re.search(r"\d+ cases", v) else "")(
        selected(page, "Evaluation shown")), timeout=30)
    n_cases = int(re.search(r"(\d+) cases", shown).group(1))
    assert 0 < n_cases < 36, shown
    m = metrics(page)
    assert 0.0 <= _number(m["Mean Dice"]) <= 1.0, m
    assert m["Images"] == str(n_cases) and m["Failed"] == "0", m
    assert "nerve" in dataframe_text(page, 0)
    screenshot(page, "metrics_dashboard_evaluation")

    open_tab(page, "Worst cases")
    assert_healthy(page)
    assert loaded_images(page, active_tab(page)) >= 6
