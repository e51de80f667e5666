"""Exponential moving average of model weights (the weights used for sampling and evaluation).

The official REPA / iREPA / REPA-E recipe: the EMA starts as an exact copy of the model and is updated after every
optimizer step with decay 0.9999, over *all* parameters (including the frozen, fixed sin-cos ``pos_embed``, which
therefore stays constant) and copying the buffers. The EMA is kept in float32 whatever the training precision.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """A frozen float32 copy of a module tracking ``ema ← decay · ema + (1 − decay) · param`` per update.

    Args:
        module: The (unwrapped, uncompiled) module to track; it is deep-copied.
        decay: Decay per update (0.9999 in the SiT/REPA recipes). ``decay = 0`` makes the EMA a plain copy.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> ema = EMA(net, decay=0.5)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> ema.update(net)
        >>> bool(torch.allclose(ema.module.weight, net.weight - 0.5))
        True
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(module).float().eval().requires_grad_(False)
        self._names = [name for name, _ in self.module.named_parameters()]
        self._buffer_names = [name for name, _ in self.module.named_buffers()]

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float | None = None, *, keep: torch.Tensor | None = None) -> None:
        """Move the EMA towards ``module``'s current weights (same architecture, same parameter order).

        Args:
            module: The trained module (unwrapped from DDP / compile).
            decay: Overrides the decay for this update.
            keep: 0-d bool tensor on the EMA's device: ``False`` makes the update a no-op without a host sync
                (the trainer's skipped steps). ``True`` gives bit for bit the update without ``keep``.
        """
        decay = self.decay if decay is None else decay
        params = dict(module.named_parameters())
        ema_params = [p for _, p in self.module.named_parameters()]
        src = [params[name].detach().float() for name in self._names]  # .float() is free for float32 weights
        if ema_params:
            if keep is None:
                torch._foreach_lerp_(ema_params, src, 1.0 - decay)
            else:  # a tensor weight rounds like the scalar one: 0-d float32 (1 - decay) or exactly 0
                weight = keep.float() * (1.0 - decay)
                torch._foreach_lerp_(ema_params, src, [weight] * len(ema_params))
        buffers = dict(module.named_buffers())
        for name, buf in self.module.named_buffers():
            # running statistics, counters, fixed tables: copied, not averaged
            buf.copy_(buffers[name] if keep is None else torch.where(keep, buffers[name], buf))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights under the tracked module's state-dict names."""
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore EMA weights saved by :meth:`state_dict` (strict)."""
        self.module.load_state_dict(state, strict=True)

    def to(self, device: torch.device | str) -> EMA:
        """Move the EMA copy to ``device`` (in place); returns ``self``."""
        self.module.to(device)
        return self
