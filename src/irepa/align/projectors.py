"""Projectors: map diffusion tokens ``(B, T, D_in)`` to the encoder's feature space ``(B, T, D_out)``.

Kinds (the ``PROJECTORS`` registry):

``mlp`` (REPA)
    ``Linear(D_in → hidden) · SiLU · Linear(hidden → hidden) · SiLU · Linear(hidden → D_out)`` applied per token,
    ``hidden = 2048`` in REPA and iREPA.
``linear``
    One ``Linear(D_in → D_out)`` per token (equal to a 1×1 ``conv``).
``conv`` (iREPA)
    One ``Conv2d(D_in → D_out, k, padding=k // 2)`` over the token grid, no activation. Each output token sees the
    ``k × k`` neighbourhood of its input token; zero padding at the grid border.

State-dict layout (what :mod:`irepa.models` maps official checkpoints onto). The layers live in ``Projector.net``:

========  ==============================================  =============================================
kind      irepa keys (inside ``projectors.<k>.``)         official keys
========  ==============================================  =============================================
mlp       ``net.0.*``, ``net.2.*``, ``net.4.*`` (Linear)  REPA/REPA-E ``projectors.<k>.{0,2,4}.*``;
                                                          iREPA ``projectors.<k>.projection_layer.{0,2,4}.*``
linear    ``net.weight`` (D_out, D_in), ``net.bias``      iREPA ``projectors.<k>.projection_layer.*``
conv      ``net.weight`` (D_out, D_in, k, k), ``net.bias``  iREPA ``projectors.<k>.projection_layer.*``
========  ==============================================  =============================================

So an iREPA key maps by renaming ``projection_layer`` → ``net``, a REPA key by inserting ``net.``.

Initialization follows the official code, including its asymmetry (prior-implementations §13 item 12): the
Linear layers of ``mlp`` and ``linear`` get xavier-uniform weights and zero biases (SiT's ``initialize_weights``
reaches them), while ``conv`` keeps PyTorch's default Conv2d init (kaiming-uniform with a = √5 and a uniform bias),
because the official iREPA code never re-initializes it. A 3×3 conv and an MLP therefore start at different output
scales; this matters only for the first steps and is what the published iREPA runs did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from irepa.align.tokens import Grid, map_to_tokens, resolve_grid, tokens_to_map
from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = ["PROJECTORS", "Projector", "ProjectorKind"]


@dataclasses.dataclass(frozen=True)
class ProjectorKind:
    """A registered projector kind.

    Attributes:
        build: ``build(in_dim, out_dim, hidden_dim, kernel_size) -> nn.Module``; the module becomes
            ``Projector.net``.
        spatial: True if ``net`` consumes feature maps ``(B, D, H, W)`` (needs the token grid); False if it acts
            per token on ``(B, T, D)``.
        description: One line for listings and docs.
    """

    build: Callable[[int, int, int, int], nn.Module]
    spatial: bool
    description: str


PROJECTORS: Registry[ProjectorKind] = Registry("projector")


def _xavier_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _build_mlp(in_dim: int, out_dim: int, hidden_dim: int, kernel_size: int) -> nn.Module:
    # Indices 0, 2, 4 are the Linear layers: the official REPA key layout (``projectors.K.{0,2,4}``).
    return nn.Sequential(
        _xavier_linear(in_dim, hidden_dim),
        nn.SiLU(),
        _xavier_linear(hidden_dim, hidden_dim),
        nn.SiLU(),
        _xavier_linear(hidden_dim, out_dim),
    )


def _build_linear(in_dim: int, out_dim: int, hidden_dim: int, kernel_size: int) -> nn.Module:
    return _xavier_linear(in_dim, out_dim)


def _build_conv(in_dim: int, out_dim: int, hidden_dim: int, kernel_size: int) -> nn.Module:
    # PyTorch's default init on purpose: the official iREPA conv projector is never re-initialized.
    return nn.Conv2d(in_dim, out_dim, kernel_size=kernel_size, stride=1, padding=kernel_size // 2)


PROJECTORS.register("mlp", ProjectorKind(_build_mlp, False, "REPA: 3-layer MLP with SiLU, applied per token"))
PROJECTORS.register("linear", ProjectorKind(_build_linear, False, "one Linear layer per token"))
PROJECTORS.register("conv", ProjectorKind(_build_conv, True, "iREPA: k x k Conv2d over the token grid, no activation"))


class Projector(nn.Module):
    """Map diffusion tokens to an encoder's feature space.

    Args:
        kind: A ``PROJECTORS`` name: ``"mlp"``, ``"linear"`` or ``"conv"``.
        in_dim: Width ``D_in`` of the diffusion tokens.
        out_dim: Width ``D_out`` of the encoder's patch tokens.
        hidden_dim: Hidden width of ``mlp`` (REPA: 2048); ignored by the other kinds.
        kernel_size: Odd kernel size of ``conv`` (iREPA: 3); ignored by the other kinds.

    Raises:
        IrepaError: Unknown kind, non-positive widths, or an even/non-positive kernel size for ``conv``.
    """

    def __init__(self, kind: str, in_dim: int, out_dim: int, hidden_dim: int = 2048, kernel_size: int = 3) -> None:
        super().__init__()
        spec = PROJECTORS.get(kind)
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise IrepaError(f"projector {name} must be a positive integer, got {value!r}")
        if spec.spatial and (not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0):
            # An even kernel with padding k // 2 would grow the grid by one row and column.
            raise IrepaError(f"conv projector kernel_size must be a positive odd integer, got {kernel_size!r}")
        self.kind = PROJECTORS.canonical(kind)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden_dim, self.kernel_size = hidden_dim, kernel_size
        self.spatial = spec.spatial
        self.net = spec.build(in_dim, out_dim, hidden_dim, kernel_size)

    def forward(self, tokens: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        """Project ``tokens``.

        Args:
            tokens: Diffusion tokens ``(B, T, D_in)``, row-major over the grid, without prefix tokens.
            grid: ``(H, W)`` with ``H * W = T``. Spatial kinds need it unless ``T`` is a perfect square (then the
                grid is square); per-token kinds only check it when given.

        Returns:
            Projected tokens ``(B, T, D_out)`` (same grid, same token order).

        Raises:
            IrepaError: Wrong rank or width, a grid that does not multiply to ``T``, a non-square ``T`` without a
                grid for a spatial kind.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.in_dim:
            raise IrepaError(f"{self.kind} projector expects tokens (B, T, {self.in_dim}), got {tuple(tokens.shape)}")
        if not self.spatial:
            if grid is not None:
                resolve_grid(tokens.shape[1], grid, what="projector input")
            return self.net(tokens)
        hw: Grid = resolve_grid(tokens.shape[1], grid, what="projector input")
        return map_to_tokens(self.net(tokens_to_map(tokens, hw)))

    def extra_repr(self) -> str:
        """Settings shown by ``print(projector)``."""
        extra = f", kernel_size={self.kernel_size}" if self.spatial else ""
        hidden = f", hidden_dim={self.hidden_dim}" if self.kind == "mlp" else ""
        return f"kind={self.kind!r}, in_dim={self.in_dim}, out_dim={self.out_dim}{hidden}{extra}"
