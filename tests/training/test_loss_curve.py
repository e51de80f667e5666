"""A pinned loss curve for the ``debug`` preset (20 steps on 256 synthetic images).

The curve is deterministic on a CPU for a given thread count and library versions; the tolerance absorbs float
reduction-order differences (other thread counts, BLAS builds). Regenerate after an intended change with::

    OMP_NUM_THREADS=1 python tests/training/test_loss_curve.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PINNED = Path(__file__).resolve().parents[1] / "assets" / "losses" / "debug.json"
OVERRIDES = [
    "train.max_steps=20",
    "train.log_every_steps=5",
    "train.checkpoint_every_steps=0",
    "train.snapshot_every_steps=0",
    "logging.tensorboard=false",
    "logging.progress_bar=false",
]
KEYS = ("loss", "denoise", "align_loss", "align_cos", "grad_norm")


def debug_curve(workdir: Path) -> list[dict[str, float]]:
    from irepa.data.prepare import prepare_synthetic_store
    from irepa.training.config import resolve_config
    from irepa.training.trainer import Trainer

    store = workdir / "synth32"
    prepare_synthetic_store(store, num_images=256, resolution=32, num_classes=10, seed=0)
    cfg = resolve_config(preset="debug", overrides=[f"data.images={store}", *OVERRIDES])
    Trainer(cfg, workdir / "run").fit()
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], **{k: r[k] for k in KEYS}} for r in rows]


def test_debug_preset_loss_curve_is_pinned(tmp_path):
    pinned = json.loads(PINNED.read_text())
    curve = debug_curve(tmp_path)
    assert [r["step"] for r in curve] == [r["step"] for r in pinned["curve"]]
    for got, want in zip(curve, pinned["curve"]):
        for key in KEYS:
            assert got[key] == pytest.approx(want[key], rel=2e-3, abs=1e-4), (got["step"], key)
    assert curve[-1]["denoise"] < curve[0]["denoise"]  # it learns


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        curve = debug_curve(Path(tmp))
    PINNED.parent.mkdir(parents=True, exist_ok=True)
    PINNED.write_text(json.dumps({"preset": "debug", "overrides": OVERRIDES, "curve": curve}, indent=1) + "\n")
    print(json.dumps(curve, indent=1), file=sys.stderr)
