"""Multi-process training smoke test: ``torchrun --nproc_per_node 2 -m engine train`` on CPU (Gloo).

Two processes train a tiny U-Net for one epoch on a tiny synthetic dataset. Rank 0 alone must
write the run folder: exactly one ``best/`` checkpoint, a history with one record per epoch, a
finished status that reports ``world_size`` 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:32, :32]
    for s in range(4):
        for f in range(4):
            img = rng.normal(0.3, 0.05, (32, 32))
            m = np.zeros((32, 32), np.uint8)
            if f % 2:
                disk = (yy - 16) ** 2 + (xx - 10 - 3 * s) ** 2 <= 36
                img[disk] += 0.5
                m[disk] = 255
            Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(root / "images" / f"p{s}_{f}.png")
            Image.fromarray(m).save(root / "masks" / f"p{s}_{f}.png")
    return root


def test_torchrun_two_process_gloo(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    ws = tmp_path / "ws"
    env = {**os.environ, "SEGWB_WORKSPACE": str(ws),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "engine", "train", "--data", str(data), "--arch", "unet_classic", "--base-channels", "4",
           "--size", "32", "--augment", "light", "--epochs", "2", "--batch-size", "2", "--device", "cpu",
           "--folds", "2", "--max-train-batches", "2", "--name", "ddp-smoke", "--out", str(out), "--quiet",
           "--num-workers", "0", "--preview-count", "2", "--export"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # rank 0 printed the summary once; rank 1 printed nothing
    assert proc.stdout.count("state    finished") == 1
    assert proc.stdout.count("epoch   1") == 1
    runs = [p for p in tmp_path.rglob("card.json") if p.parent.name == "best"]
    assert runs == [out / "best" / "card.json"]
    card = json.loads(runs[0].read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["epochs_run"] == 2
    hist = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2]
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["world_size"] == 2
    # each rank ran 2 batches of 2 → steps_per_epoch is per process
    assert status["steps_per_epoch"] == 2
    assert (ws / "models" / "ddp-smoke" / "card.json").exists()
    with Image.open(out / "preview" / "evolution.gif") as gif:
        assert gif.n_frames == 2
