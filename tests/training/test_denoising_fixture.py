"""Refactor safety: the ``denoising`` objective reproduces parameters recorded before the objective refactor.

``tests/assets/training/denoising_fixture.json`` holds, for two tiny fp32 CPU runs of 3 optimizer steps (pixel space
with gradient accumulation and alignment; latent space with alignment), the sha256 of every tensor of the final
checkpoint (model, EMA, aligner, AdamW moments by parameter index) under its checkpoint key. It was recorded with the
trainer of commit ac7ee1f (before objectives became registered recipes); the refactored trainer must reproduce
every hash bit for bit, which also pins the checkpoint key names, the parameter order of AdamW and the order of the
random draws. Single-threaded, so the float reduction order is fixed.

Hashes depend on the CPU kernels (torch version, instruction set). On another platform than the recorded one the
test compares the recorded float64 sums with a tight tolerance instead (printed as a note), so it still fails on a
real change of behaviour. Re-record after an *intended* change with::

    IREPA_RECORD_FIXTURE=1 pytest tests/training/test_denoising_fixture.py -p no:xdist
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from irepa.training.config import resolve_config
from irepa.training.trainer import Trainer

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "training" / "denoising_fixture.json"
COMMON = [
    "train.max_steps=3",
    "train.checkpoint_every_steps=0",
    "train.log_every_steps=1",
]


def _platform() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "cpu": torch.backends.cpu.get_cpu_capability()}


def _checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update({f"{file.stem}/{k}": v for k, v in load_file(file).items()})
    optim = torch.load(folder / "optimizer.main.pt", weights_only=True)
    for index, state in optim["state"].items():
        out.update({f"optimizer.main/{index}/{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    out["optimizer.main/param_groups"] = torch.tensor([len(g["params"]) for g in optim["param_groups"]])
    return out


def _record(run_dir: Path, overrides: list[str]) -> dict[str, dict[str, object]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(resolve_config(overrides=[*overrides, *COMMON]), run_dir).fit()
    finally:
        torch.set_num_threads(threads)
    assert result.step == 3
    tensors = _checkpoint_tensors(run_dir / "checkpoints" / "step-0000003")
    return {
        name: {
            "sha256": hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest(),
            "sum": float(t.double().sum()),
            "shape": list(t.shape),
        }
        for name, t in sorted(tensors.items())
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pixel_store, latent_stores, pixel_overrides, latent_overrides):
    root = tmp_path_factory.mktemp("fixture")
    return {
        "pixel-accum2-align": _record(root / "pixel", pixel_overrides(pixel_store, "optim.grad_accumulation=2")),
        "latent-align": _record(root / "latent", latent_overrides(latent_stores)),
    }


def test_denoising_objective_reproduces_the_pre_refactor_parameters(runs):
    if os.environ.get("IREPA_RECORD_FIXTURE"):
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps({"platform": _platform(), "runs": runs}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {FIXTURE}")
    recorded = json.loads(FIXTURE.read_text())
    same_platform = recorded["platform"] == _platform()
    for run, want in recorded["runs"].items():
        got = runs[run]
        assert sorted(got) == sorted(want), f"{run}: checkpoint keys changed"
        for name, entry in want.items():
            assert got[name]["shape"] == entry["shape"], (run, name)
            if same_platform:
                assert got[name]["sha256"] == entry["sha256"], f"{run}: {name} differs from the recorded run"
            else:
                assert got[name]["sum"] == pytest.approx(entry["sum"], rel=1e-6, abs=1e-9), (run, name)
