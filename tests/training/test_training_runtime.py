"""Guard, signals, timing and batch arithmetic (small pieces of the training loop)."""

import os
import random
import signal

import numpy as np
import pytest
import torch

from irepa.errors import ConfigError
from irepa.training.distributed import capture_rng_state, per_device_batch_size, restore_rng_state, seed_everything
from irepa.training.guard import NonFiniteError, NonFiniteGuard
from irepa.training.signals import StopSignal
from irepa.training.timing import StepTimer


def test_guard_skips_counts_and_stops():
    guard = NonFiniteGuard(patience=3)
    assert guard.observe(True, step=1) is False
    assert guard.observe(False, step=2) is True
    assert guard.observe(True, step=3) is False  # a finite step resets the run of failures
    assert guard.observe(False, step=4) and guard.observe(False, step=5)
    with pytest.raises(NonFiniteError, match=r"stopped at step 6: 3 consecutive steps .* \(4 skipped in total\)"):
        guard.observe(False, step=6)
    restored = NonFiniteGuard(patience=3)
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped == 4 and restored.consecutive == 3


@pytest.mark.parametrize(
    ("global_batch", "world", "accum", "expected"), [(256, 8, 1, 32), (256, 1, 1, 256), (256, 4, 2, 32), (6, 2, 3, 1)]
)
def test_per_device_batch(global_batch, world, accum, expected):
    assert per_device_batch_size(global_batch, world, accum) == expected


def test_indivisible_batch_names_the_numbers():
    with pytest.raises(ConfigError) as info:
        per_device_batch_size(250, 8, 1)
    msg = str(info.value)
    assert "global_batch_size=250" in msg and "8 process(es)" in msg and "248 or 256" in msg and "\n" not in msg


def test_signal_sets_flag_then_restores_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_second_sigint_interrupts():
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_timer_shares_are_fractions():
    timer = StepTimer(torch.device("cpu"))
    import time

    with timer.section("teacher"):
        time.sleep(0.02)
    with timer.section("data"):
        time.sleep(0.01)
    time.sleep(0.01)
    out = timer.summary(steps=2, samples=16)
    assert 0.3 < out["teacher_share"] < 0.9 and 0.1 < out["data_share"] < 0.6
    assert out["teacher_share"] + out["data_share"] < 1.0
    assert out["img_per_s"] > 0 and out["step_ms"] > 10
    assert timer.summary(steps=1, samples=1)["teacher_share"] == 0.0  # reset after a summary


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    seed_everything(3)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(99)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])


def test_launcher_process_count_mismatch_is_refused():
    from irepa.errors import IrepaError
    from irepa.training.distributed import make_accelerator

    assert make_accelerator("cpu", expected_world_size=1).num_processes == 1
    with pytest.raises(IrepaError, match="the launcher started 2 processes but accelerate set up 1"):
        make_accelerator("cpu", expected_world_size=2)
