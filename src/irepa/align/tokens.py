"""Token grids: the ``(B, T, D)`` ↔ ``(B, D, H, W)`` bridge shared by projectors, the aligner and the spatial metrics.

Convention (see ``docs/architecture.md``): a token tensor ``(B, T, D)`` holds ``T = H * W`` tokens in row-major
order over an ``(H, W)`` grid, i.e. token ``t`` sits at row ``t // W`` and column ``t % W``. Prefix tokens (CLS,
registers, in-context class tokens) are never part of the grid; callers drop them explicitly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from irepa.errors import IrepaError

__all__ = ["Grid", "drop_prefix", "map_to_tokens", "parse_grid", "resolve_grid", "tokens_to_map"]

#: ``(H, W)``: rows and columns of the token grid.
Grid = tuple[int, int]


def resolve_grid(num_tokens: int, grid: Sequence[int] | None = None, *, what: str = "tokens") -> Grid:
    """Return the ``(H, W)`` grid of ``num_tokens`` tokens, inferring a square grid when ``grid`` is None.

    Args:
        num_tokens: Number of grid tokens ``T`` (prefix tokens already removed).
        grid: Explicit ``(H, W)``; required when ``T`` is not a perfect square.
        what: Name of the tensor, used in error messages.

    Raises:
        IrepaError: A grid that is not two positive integers, whose product is not ``T``, or a non-square ``T``
            without a grid.
    """
    if grid is None:
        side = math.isqrt(num_tokens)
        if num_tokens < 1 or side * side != num_tokens:
            raise IrepaError(
                f"{what} have {num_tokens} tokens, which is not a square grid; pass grid=(H, W) with H*W = {num_tokens}"
                " (and drop CLS/register tokens with prefix_tokens)"
            )
        return side, side
    try:
        height, width = (int(v) for v in grid)
        valid = all(float(v) == int(v) for v in grid)
    except (TypeError, ValueError):
        raise IrepaError(f"grid {grid!r} for {what} must be two positive integers (H, W)") from None
    if not valid or height < 1 or width < 1:
        raise IrepaError(f"grid {tuple(grid)!r} for {what} must be two positive integers (H, W)")
    if height * width != num_tokens:
        raise IrepaError(
            f"grid {height}x{width} has {height * width} cells but {what} have {num_tokens} tokens; "
            "pass the grid of the tokens (and drop CLS/register tokens with prefix_tokens)"
        )
    return height, width


def parse_grid(text: str) -> Grid:
    """Parse ``"16x16"`` (or ``"16,16"``, ``"16"`` for a square grid) into ``(H, W)``.

    Raises:
        IrepaError: Text that is not of the form ``HxW`` with positive integers.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×,]\s*(\d+))?\s*", text)
    if not match:
        raise IrepaError(f"grid {text!r} is not of the form HxW (e.g. 16x16)")
    height = int(match.group(1))
    width = int(match.group(2)) if match.group(2) is not None else height
    if height < 1 or width < 1:
        raise IrepaError(f"grid {text!r} must have positive sides (e.g. 16x16)")
    return height, width


def drop_prefix(tokens: torch.Tensor, prefix_tokens: int, *, what: str = "tokens") -> torch.Tensor:
    """Remove the first ``prefix_tokens`` tokens (CLS, registers) of ``tokens`` (B, P + T, D) → (B, T, D).

    Raises:
        IrepaError: A negative count, or a count that leaves no grid token.
    """
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
        raise IrepaError(f"prefix_tokens for {what} must be a non-negative integer, got {prefix_tokens!r}")
    if prefix_tokens == 0:
        return tokens
    if prefix_tokens >= tokens.shape[1]:
        raise IrepaError(
            f"prefix_tokens={prefix_tokens} removes all {tokens.shape[1]} tokens of {what} {tuple(tokens.shape)}"
        )
    return tokens[:, prefix_tokens:]


def tokens_to_map(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Reshape row-major tokens ``(B, H*W, D)`` into a feature map ``(B, D, H, W)``."""
    batch, _, dim = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """Flatten a feature map ``(B, D, H, W)`` into row-major tokens ``(B, H*W, D)``."""
    return feature_map.flatten(2).transpose(1, 2)
