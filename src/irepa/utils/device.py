"""Turning a user's device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``) into a ``torch.device``."""

from __future__ import annotations

import torch

from irepa.errors import IrepaError, first_line

__all__ = ["resolve_device"]


def resolve_device(
    name: str | torch.device | None = "auto", *, option: str = "--device", local_rank: int | None = None
) -> torch.device:
    """Resolve a device name, checking that CUDA exists when it is asked for.

    Args:
        name: ``"auto"`` or None (CUDA when available, else CPU), or any torch device name (``"cpu"``, ``"cuda"``,
            ``"cuda:1"``) or ``torch.device``.
        option: How the user spelled the setting (``--device``, ``train.device``), quoted by the error messages.
        local_rank: With ``"auto"`` on a CUDA machine, pick ``cuda:<local_rank>`` (one GPU per launched process)
            instead of the current CUDA device.

    Returns:
        The ``torch.device``.

    Raises:
        IrepaError: ``name`` is not a device name, or names a CUDA device while CUDA is not available.
    """
    if name is None or name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise IrepaError(
            f"{option}={name!r} is not a torch device ({first_line(exc)}); use cpu, cuda, cuda:1, ... or auto"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise IrepaError(f"{option}={name!r} but CUDA is not available here; use {option}=cpu or auto")
    return device
