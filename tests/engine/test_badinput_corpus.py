"""The hostile-input corpus (tests/support/hostile.py) through readers, info, masks and predict,
in a subprocess under an address-space limit (RLIMIT_AS). Zero tracebacks, zero memory blow-ups,
zero unclear errors, zero silently wrong answers; every input has its expected outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BAD = ("unclear", "traceback", "memory", "silent")


def _run(tmp_path: Path, predict: bool) -> dict:
    out = tmp_path / "hostile.json"
    env = {**os.environ, "HOSTILE_AS_GB": "3", "SEGWB_WORKSPACE": str(tmp_path / "ws")}
    env.pop("SEGWB_MAX_PIXELS", None)
    env.pop("HOSTILE_ENGINE_ROOT", None)
    cmd = [sys.executable, "-m", "tests.support.hostile", str(out)] + (["--predict"] if predict else [])
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"corpus run died (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def test_hostile_corpus_has_no_bad_outcomes(tmp_path: Path) -> None:
    predict = (REPO / "weights" / "lung-cxr" / "model.safetensors").exists()
    res = _run(tmp_path, predict)
    bad = [r for r in res["rows"] if r["outcome"] in BAD]
    detail = "\n".join(f"[{r['outcome']}] {r['channel']} | {r['input']}: {r['detail']}" for r in bad)
    assert not bad, f"counts {res['counts']}\n{detail}"
    channels = {r["channel"] for r in res["rows"]}
    assert {"load_image", "read_mask", "rle.decode", "load_image (pydicom data)", "info+masks"} <= channels
    if predict:
        assert "predict" in channels
    # both kinds of right answer occur: correct values and the expected clear errors
    assert res["counts"].get("fine", 0) > 50 and res["counts"].get("clear", 0) > 20


def test_rle_decode_on_arbitrary_strings() -> None:
    """Property: any string decodes to a valid mask or raises the project error, nothing else."""
    hypothesis = pytest.importorskip("hypothesis")
    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from engine.errors import RLEError
    from engine.rle import decode

    ints = st.one_of(st.integers(-5, 70), st.integers(-2**70, 2**70)).map(str)
    tokens = st.lists(st.one_of(ints, st.text(max_size=4)), max_size=12).map(" ".join)

    @settings(max_examples=400, deadline=None)
    @given(text=st.one_of(st.text(max_size=40), tokens), h=st.integers(1, 9), w=st.integers(1, 9),
           conv=st.sampled_from(["kaggle", "siim"]))
    def prop(text: str, h: int, w: int, conv: str) -> None:
        try:
            m = decode(text, (h, w), conv, where="x.csv row 3")
        except RLEError as exc:
            assert "x.csv row 3" in str(exc)
            return
        assert m.shape == (h, w) and m.dtype == np.uint8 and set(np.unique(m).tolist()) <= {0, 1}

    assert hypothesis is not None
    prop()
