"""Non-finite guard: skip optimizer steps whose gradients are NaN/Inf, count them, stop after too many in a row.

A single non-finite step (a bad batch, an fp16 overflow) is skipped: no parameter, optimizer or EMA update, the
batch is consumed and the step counter advances, so the data position stays ``step × global_batch``. ``patience``
consecutive non-finite steps stop training with a message: at that point the run has diverged (or the data is
broken) and continuing would only burn compute. Skipped steps do not change the weights, so the last checkpoint and
the current weights are both usable.
"""

from __future__ import annotations

from typing import Any

import torch

from irepa.errors import IrepaError

__all__ = ["NonFiniteError", "NonFiniteGuard"]


class NonFiniteError(IrepaError):
    """Training stopped because too many consecutive steps had non-finite gradients."""


class NonFiniteGuard:
    """Counts non-finite steps (total and consecutive) and raises after ``patience`` in a row.

    Args:
        patience: Consecutive non-finite steps tolerated; the next one raises :class:`NonFiniteError`.

    Example:
        >>> guard = NonFiniteGuard(patience=2)
        >>> guard.observe(False, step=1), guard.observe(True, step=2), guard.skipped
        (False, True, 1)
    """

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.skipped = 0
        self.consecutive = 0
        self._device_consecutive: torch.Tensor | None = None  # observe_on_device's state
        self._device_tripped: torch.Tensor | None = None

    def observe(self, finite: bool, *, step: int, hint: str = "") -> bool:
        """Record one step; returns ``True`` if it must be skipped.

        Raises:
            NonFiniteError: On the ``patience``-th non-finite step in a row.
        """
        if finite:
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.patience:
            raise NonFiniteError(
                f"stopped at step {step}: {self.consecutive} consecutive steps had non-finite loss or gradients "
                f"({self.skipped} skipped in total){hint}; lower optim.lr, use train.precision=bf16, or check the "
                "data for NaN/Inf, then rerun to resume from the last checkpoint"
            )
        return True

    def observe_on_device(self, nonfinite: torch.Tensor) -> torch.Tensor:
        """Record one step without a host sync (the trainer with ``optim.fused``); returns whether to skip its update.

        Only the consecutive count is kept on the device, to freeze every update from the ``patience``-th
        non-finite step in a row on (the weights stay those before it); the caller replays the recorded flags
        through :meth:`observe` at its next host sync, which counts, warns and raises as if it had run every step.

        Args:
            nonfinite: 0-d bool device tensor: this step's gradients are non-finite.

        Returns:
            0-d bool device tensor: skip this update (non-finite, or the guard has tripped).
        """
        if self._device_consecutive is None or self._device_consecutive.device != nonfinite.device:
            # torch.full launches a fill; torch.tensor(..., device=cuda) would copy from host memory and wait
            self._device_consecutive = torch.full((), self.consecutive, device=nonfinite.device)
            self._device_tripped = torch.full((), self.consecutive >= self.patience, device=nonfinite.device)
        self._device_consecutive = (self._device_consecutive + 1) * nonfinite
        self._device_tripped = self._device_tripped | (self._device_consecutive >= self.patience)
        return nonfinite | self._device_tripped

    def state_dict(self) -> dict[str, Any]:
        """Counters, for checkpoints."""
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        self.skipped = int(state["skipped"])
        self.consecutive = int(state["consecutive"])
        self._device_consecutive = self._device_tripped = None
