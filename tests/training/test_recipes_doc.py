"""docs/recipes.md: the "add your own recipe" example is real code that trains with the trainer."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from irepa.errors import ConfigError
from irepa.training.config import resolve_config
from irepa.training.objectives import OBJECTIVES
from irepa.training.trainer import Trainer

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


@pytest.fixture(scope="module")
def huber():
    """Execute the documented example (it registers the ``huber`` objective), and unregister it afterwards: the
    registry is process-global and other tests list every objective (``irepa train --help-config``)."""
    text = DOC.read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if '@OBJECTIVES.register("huber")' in b]
    assert len(blocks) == 1, "docs/recipes.md must hold exactly one example registering 'huber'"
    module = types.ModuleType("recipes_doc_example")  # a real module: dataclasses and type hints look it up
    sys.modules[module.__name__] = module
    exec(compile(blocks[0], str(DOC), "exec"), module.__dict__)
    yield OBJECTIVES.get("huber")
    OBJECTIVES.unregister("huber")
    del sys.modules[module.__name__]


def test_documented_recipe_trains_with_alignment(huber, tmp_path, pixel_store, pixel_overrides):
    overrides = pixel_overrides(pixel_store, "objective.name=huber", "objective.c=0.05", "train.max_steps=4")
    cfg = resolve_config(overrides=overrides)
    assert cfg.objective.settings.c == 0.05
    trainer = Trainer(cfg, tmp_path)
    assert isinstance(trainer.objective, huber) and trainer.objective.settings.c == 0.05
    result = trainer.fit()
    assert result.step == 4 and result.snapshot.is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == pytest.approx(r["denoise"] + r["align"], rel=1e-5) for r in rows)
    assert all(r["denoise"] > 0 for r in rows)
    with pytest.raises(ConfigError, match=r"objective\.c must be > 0"):
        resolve_config(overrides=[*overrides, "objective.c=0"])
