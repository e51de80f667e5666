import pytest
import torch

from irepa.errors import IrepaError
from irepa.utils.device import resolve_device


def test_auto_picks_cuda_only_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


def test_auto_with_a_local_rank_picks_that_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda:3")
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")


def test_explicit_names_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("meta") == torch.device("meta")


def test_bad_names_and_missing_cuda_are_one_line_errors(monkeypatch):
    with pytest.raises(IrepaError, match=r"^--device='gpu0' is not a torch device .*; use cpu, cuda"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(IrepaError, match=r"^train.device='cuda' but CUDA is not available here; use train.device=cpu"):
        resolve_device("cuda", option="train.device")
    with pytest.raises(IrepaError, match="CUDA is not available"):
        resolve_device("cuda:1")
