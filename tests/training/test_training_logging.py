import io
import json
import sys
import types

import pytest
import torch

from irepa.errors import IrepaError
from irepa.training.config import LoggingConfig
from irepa.training.logging import MetricAccumulator, TrainLogger, format_metrics


def test_accumulator_means_and_reduce():
    acc = MetricAccumulator()
    for value in (1.0, 2.0, 6.0):
        acc.add({"loss": torch.tensor(value), "align_cos": value / 10})
    seen = []

    def reduce(x):
        seen.append(x.clone())
        return x * 2  # stands in for an all-reduce

    assert acc.compute(reduce) == pytest.approx({"align_cos": 0.6, "loss": 6.0})
    assert seen[0].tolist() == pytest.approx([0.3, 3.0])  # sorted names: align_cos, loss
    assert acc.compute() == {} and len(acc) == 0


def test_accumulator_leaves_out_observations_flagged_on_the_device():
    acc = MetricAccumulator()
    for value, keep in ((1.0, True), (float("nan"), False), (3.0, True)):
        acc.add({"loss": torch.tensor(value)}, keep=torch.tensor(keep))
    assert acc.compute() == {"loss": 2.0}


def test_format_metrics():
    line = format_metrics({"loss": 0.51234, "nimg": 2048.0, "lr": 1e-4, "bad": float("nan")}, 12, 100)
    assert line == "step 12/100  loss 0.5123  nimg 2048  lr 1.000e-04  bad nan"


def _cfg(**kw):
    base = dict(console=True, progress_bar=False, jsonl=True, tensorboard=False, wandb=False)
    return LoggingConfig(**{**base, **kw})


def test_sinks_write_console_jsonl_and_log_txt(tmp_path):
    stream = io.StringIO()
    with TrainLogger(tmp_path, _cfg(), total_steps=10, stream=stream) as logger:
        logger.info("hello")
        logger.log({"loss": 0.5}, step=2)
        logger.warning("careful")
    out = stream.getvalue()
    assert "hello" in out and "step 2/10  loss 0.5" in out and "warning: careful" in out
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 2 and records[0]["loss"] == 0.5
    assert "careful" in (tmp_path / "log.txt").read_text()


def test_disabled_logger_writes_nothing(tmp_path):
    stream = io.StringIO()
    logger = TrainLogger(tmp_path / "run", _cfg(tensorboard=True, wandb=True), enabled=False, stream=stream)
    logger.log({"loss": 1.0}, step=1)
    logger.info("x")
    logger.close()
    assert stream.getvalue() == "" and not (tmp_path / "run").exists()


def test_resume_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    with TrainLogger(tmp_path, _cfg(console=False), start_step=20, resumed=True) as logger:
        logger.log({"loss": 1.0}, step=30)
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [10, 20, 30]


def test_tensorboard_events_are_written(tmp_path):
    with TrainLogger(tmp_path, _cfg(console=False, jsonl=False, tensorboard=True)) as logger:
        logger.log({"loss": 0.25, "align_cos": 0.5}, step=3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["align_cos", "loss"]
    assert events.Scalars("loss")[0].step == 3 and events.Scalars("loss")[0].value == 0.25


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(IrepaError, match="wandb package is not installed"):
        TrainLogger(tmp_path, _cfg(wandb=True))


def test_wandb_sink_resumes_the_same_run(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, metrics, step):
            calls.append(("log", metrics, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    fake = types.SimpleNamespace(init=init, util=types.SimpleNamespace(generate_id=lambda: "abc123"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for _ in range(2):  # a second start (resume) reuses the stored id
        with TrainLogger(tmp_path, _cfg(console=False, wandb=True), run_name="r", run_config={"a": 1}) as logger:
            logger.log({"loss": 1.0}, step=5)
    inits = [c[1] for c in calls if c[0] == "init"]
    assert [i["id"] for i in inits] == ["abc123", "abc123"] and inits[0]["resume"] == "allow"
    assert inits[0]["config"] == {"a": 1} and ("log", {"loss": 1.0}, 5) in calls
    assert (tmp_path / "wandb_id.txt").read_text().strip() == "abc123"
