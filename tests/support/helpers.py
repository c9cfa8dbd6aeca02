"""Test helpers shared by several test modules: tiny synthetic datasets, tiny U-Nets, AppTest plumbing.

Imported by the test modules as ``from tests.support.helpers import ...`` (``tests`` is a package;
pytest puts the checkout's root on ``sys.path``). torch, streamlit and the engine are imported inside the
functions, so importing this module stays cheap. Nothing here touches ../shared/data.

- :func:`make_dataset`: paired ``images/`` + ``masks/`` of ``s<subject>_<frame>.png`` (training data).
- :func:`make_disks` / :func:`disk_mask` / :func:`np_dice`: the 13-case disk folder used for evaluation.
- :func:`save_tiny_unet`: a random tiny classic U-Net saved as a weights folder, optionally with its
  foreground bias centred on an image.
- :func:`tiny_demo_dir`, :func:`point_app_at`, :func:`clear_streamlit_caches`, :func:`app_test`,
  :func:`ok`, :func:`metrics`, :func:`charts`: Streamlit AppTest set-up and checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

SIZE = 64  # side of the synthetic images (px)
N_POS, N_EMPTY = 8, 4  # make_disks: cases with a disk, cases with an empty mask


# ------------------------------------------------------------------------------------ datasets

def make_dataset(root: Path, n_subjects: int = 6, frames: int = 4, seed: int = 0) -> Path:
    """Paired images/ + masks/ PNGs (SIZE×SIZE, uint8; masks 0/255): bright disks on noise; every
    third image has an empty mask. Names ``s<subject>_<frame>.png`` group frames by subject."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for s in range(n_subjects):
        for f in range(frames):
            img = rng.normal(0.3, 0.06, (SIZE, SIZE))
            m = np.zeros((SIZE, SIZE), np.uint8)
            if (s * frames + f) % 3:
                r = rng.uniform(8, 14)
                cy, cx = rng.uniform(r + 2, SIZE - r - 2, 2)
                disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                img[disk] += 0.45
                m[disk] = 255
            Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(root / "images" / f"s{s}_{f}.png")
            Image.fromarray(m).save(root / "masks" / f"s{s}_{f}.png")
    return root


def disk_mask(cy: float, cx: float, r: float) -> np.ndarray:
    """(SIZE, SIZE) uint8 mask, 1 inside the disk of radius ``r`` centred at (cy, cx), else 0."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def make_disks(root: Path, seed: int = 0) -> Path:
    """images/cNN.png + masks/cNN.png (SIZE×SIZE, masks 0/255): c00..c07 have a disk, c08..c11 are
    empty, u00 has no mask (unlabelled)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(N_POS + N_EMPTY + 1):
        img = rng.normal(0.3, 0.06, (SIZE, SIZE))
        m = np.zeros((SIZE, SIZE), np.uint8)
        if i < N_POS:
            m = disk_mask(20 + 3 * i, 40 - 2 * i, 7 + i)
            img[m > 0] += 0.45
        stem = f"c{i:02d}" if i < N_POS + N_EMPTY else "u00"
        Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(root / "images" / f"{stem}.png")
        if stem != "u00":
            Image.fromarray(m * 255).save(root / "masks" / f"{stem}.png")
    return root


def np_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Reference Dice of two (H, W) masks written out here (foreground = > 0; both empty → 1, the Kaggle rule)."""
    p, g = pred > 0, gt > 0
    den = int(p.sum() + g.sum())
    return 1.0 if den == 0 else 2.0 * int((p & g).sum()) / den


# ------------------------------------------------------------------------------------ models

def save_tiny_unet(folder: Path, *, seed: int = 0, label: str = "nerve", presence_head: bool = False,
                   centre_on: np.ndarray | None = None, **card_fields: Any) -> Path:
    """Save a random tiny classic U-Net (width 4, 2 levels, classes background + ``label``, 64×64
    input) in ``folder``, named ``folder.name``; ``card_fields`` go to its ModelCard.

    ``centre_on``: an image as ``Predictor.predict_probs`` takes it (e.g. float32 (C, H, W)); when
    given, the foreground bias is shifted by the median logit difference on it and the model saved
    again, so it predicts about half of each image and its scores differ from case to case.
    Returns ``folder``.
    """
    import torch

    from engine.augment import Preprocess
    from engine.checkpoint import ModelCard, save_checkpoint
    from engine.models import ModelSpec, build_model

    torch.manual_seed(seed)
    spec = ModelSpec(arch="unet_classic", base_channels=4, num_classes=2, encoder_depth=2, presence_head=presence_head)
    net = build_model(spec, load_pretrained=False)
    card = ModelCard(name=folder.name, spec=spec, labels={0: "background", 1: label},
                     preprocess=Preprocess(size=(SIZE, SIZE)), **card_fields)
    save_checkpoint(folder, net, card)
    if centre_on is not None:
        from engine.inference import Predictor

        probs, _ = Predictor.from_weights(folder, device="cpu").predict_probs(centre_on)  # (2, H, W)
        diff = np.log(probs[1] + 1e-7) - np.log(probs[0] + 1e-7)
        with torch.no_grad():
            net.net.head.bias[1] -= float(np.median(diff))
        save_checkpoint(folder, net, card)
    return folder


# ------------------------------------------------------------------------------------ Streamlit AppTest

def tiny_demo_dir(tmp_path_factory: pytest.TempPathFactory, basename: str) -> Path:
    """Generate the ``tiny`` demo phantoms (``DIR/nerve`` + ``DIR/ptx``) in a new tmp folder; return DIR."""
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp(basename)
    generate_demo(root, scale="tiny")
    return root


def clear_streamlit_caches() -> None:
    """Empty st.cache_data and st.cache_resource (they outlive a test: cached datasets carry the
    workspace folder of an earlier test)."""
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def point_app_at(monkeypatch: pytest.MonkeyPatch, demo: Path, ws: Path) -> None:
    """Set $SEGWB_DEMO_DATA and $SEGWB_WORKSPACE for the pages, then clear the Streamlit caches."""
    monkeypatch.setenv("SEGWB_DEMO_DATA", str(demo))
    monkeypatch.setenv("SEGWB_WORKSPACE", str(ws))
    clear_streamlit_caches()


def team_workspace(monkeypatch: pytest.MonkeyPatch, demo: Path, ws: Path, users: dict[str, tuple[str, str]]) -> Path:
    """Team mode (``$SEGWB_MODE=team``) on a new workspace ``ws`` whose store holds ``users``
    (``{name: (role, password)}``, added by the local operator); the pages are pointed at it."""
    from engine.store import LOCAL_OPERATOR, ReviewStore, default_store_url

    ws.mkdir(parents=True, exist_ok=True)
    point_app_at(monkeypatch, demo, ws)
    monkeypatch.setenv("SEGWB_MODE", "team")
    monkeypatch.delenv("SEGWB_STORE_URL", raising=False)
    with ReviewStore(default_store_url(ws)) as s:
        for name, (role, password) in users.items():
            s.add_user(name, role, password, actor=LOCAL_OPERATOR)
    return ws


def app_test(page: str, base: dict[str, Any] | None = None, /, **session: Any) -> AppTest:
    """``AppTest`` of ``page`` (180 s timeout) with ``base`` then ``session`` put in its session state."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(page, default_timeout=180)
    for k, v in {**(base or {}), **session}.items():
        at.session_state[k] = v
    return at


def ok(at: AppTest) -> AppTest:
    """Assert that the run showed no exception and no st.error; return ``at``."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    """The page's st.metric values by label."""
    return {m.label: m.value for m in at.metric}


def charts(at: AppTest) -> dict[str, dict]:
    """The page's Plotly charts as their JSON specs, by title text ("" for an untitled chart)."""
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        out[(spec["layout"].get("title") or {}).get("text", "")] = spec
    return out
