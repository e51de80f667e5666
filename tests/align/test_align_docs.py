"""The quick-start of docs/align.md is executed verbatim, so the documentation cannot rot."""

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "align.md"


def _quick_start() -> str:
    text = DOC.read_text()
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "docs/align.md lost its quick-start code block"
    return match.group(1)


def test_quick_start_snippet_runs():
    code = _quick_start()
    assert "aligner.attach(model, 4)" in code
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    terms = namespace["terms"]
    assert set(terms) == {"align", "align_loss", "align_cos", "align_weight"}
    assert 0.0 <= terms["align_loss"].item() <= 2.0
    # The optimizer step moved the projector and the first four blocks.
    assert namespace["aligner"].projectors[0].net.weight.grad is not None
    assert namespace["model"].layers[3].linear1.weight.grad is not None


def test_readme_quick_start_is_the_tested_snippet():
    readme = (DOC.parents[1] / "README.md").read_text()
    section = readme.split("## Use iREPA in your own model", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md lost its quick-start code block"
    assert match.group(1) == _quick_start()
