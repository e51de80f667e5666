"""``RepresentationAligner``: projectors + target normalization + loss + weight schedule, for any model.

The aligner owns one :class:`~irepa.align.projectors.Projector` per encoder, in an ``nn.ModuleList`` named
``projectors`` ordered like the encoder list, so its state dict is ``projectors.<k>.*`` as in the official REPA /
iREPA checkpoints. It gets the diffusion tokens in one of two ways:

**Direct** (irepa's own models; compile-friendly)::

    out = model(x_t, t, y, return_hidden=cfg.depth)
    terms = aligner.compute(targets, source=out.hidden, step=step)

**Hooks** (a model irepa did not write: any ``nn.Module``)::

    aligner.attach(model, 4)                 # output of the 4th block of the model's largest ModuleList
    aligner.attach(unet, "mid_block", layout="BCHW")
    pred = model(x)                          # the hook captures the tokens (only while grad is enabled)
    terms = aligner.compute(targets, step=step)

``compute`` returns named terms: ``align`` = λ(step) · mean over encoders of the loss (add it to the total loss),
``align_loss`` (unweighted), ``align_cos`` (mean cosine, detached), ``align_weight`` (λ(step)) and, with several
encoders, ``align_cos/<name>``. Targets are detached; the target normalization and the loss run in float32 whatever
autocast is doing (the projector itself runs in the autocast dtype, like the rest of the model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from irepa.align.config import AlignConfig
from irepa.align.losses import ALIGN_LOSSES
from irepa.align.norms import TARGET_NORMS
from irepa.align.projectors import Projector
from irepa.align.schedule import WeightSchedule
from irepa.align.tokens import Grid, drop_prefix, resolve_grid
from irepa.errors import IrepaError

__all__ = ["Layout", "RepresentationAligner"]

#: Layout of the hooked module's output: ``BTD`` (batch-first tokens), ``TBD`` (sequence-first tokens, e.g.
#: ``nn.TransformerEncoder`` with ``batch_first=False``), ``BCHW`` (UNet/conv feature maps) or ``BHWC``
#: (channels-last feature maps, e.g. Hiera/Swin stages).
Layout = Literal["BTD", "TBD", "BCHW", "BHWC"]
_LAYOUTS = ("BTD", "TBD", "BCHW", "BHWC")

#: Picks the tensor out of a module output that is a tuple/list (an int), a dict (a key) or anything (a callable).
Select = int | str | Callable[[Any], torch.Tensor] | None


@dataclasses.dataclass(frozen=True)
class _HookSpec:
    where: str
    layout: str
    prefix_tokens: int
    grid: Grid | None
    select: Select
    capture: str


class RepresentationAligner(nn.Module):
    """Aligns diffusion tokens with frozen encoder tokens (REPA / iREPA).

    Args:
        source_dim: Width ``D`` of the diffusion tokens.
        target_dims: Encoder name → width ``D_k`` of its patch tokens, in encoder order (the order of
            ``projectors``).
        projector: Projector kind (``mlp``, ``linear``, ``conv``).
        projector_dim: Hidden width of the ``mlp`` projector.
        kernel_size: Kernel size of the ``conv`` projector.
        target_norm: ``TARGET_NORMS`` name applied to the targets (``none``, ``spatial``, ``layernorm``).
        gamma: γ of the spatial normalization.
        eps: eps of the target normalization.
        loss: ``ALIGN_LOSSES`` name.
        schedule: A :class:`WeightSchedule`, or a number for a constant weight λ.

    Raises:
        IrepaError: No encoders, bad widths or unknown names.
    """

    def __init__(
        self,
        source_dim: int,
        target_dims: Mapping[str, int],
        *,
        projector: str = "mlp",
        projector_dim: int = 2048,
        kernel_size: int = 3,
        target_norm: str = "none",
        gamma: float = 0.6,
        eps: float = 1e-6,
        loss: str = "cosine",
        schedule: WeightSchedule | float = 0.5,
    ) -> None:
        super().__init__()
        if not target_dims:
            raise IrepaError("RepresentationAligner needs at least one encoder in target_dims (name -> token width)")
        self.source_dim = source_dim
        self.encoder_names: tuple[str, ...] = tuple(str(name) for name in target_dims)
        self.target_dims: dict[str, int] = {str(k): int(v) for k, v in target_dims.items()}
        self.projectors = nn.ModuleList(
            Projector(projector, source_dim, dim, hidden_dim=projector_dim, kernel_size=kernel_size)
            for dim in self.target_dims.values()
        )
        self.target_norm = TARGET_NORMS.canonical(target_norm)
        self._target_norm_fn = TARGET_NORMS.get(target_norm)
        self.gamma, self.eps = float(gamma), float(eps)
        self.loss = ALIGN_LOSSES.canonical(loss)
        self._loss_fn = ALIGN_LOSSES.get(loss)
        self.schedule = schedule if isinstance(schedule, WeightSchedule) else WeightSchedule(weight=float(schedule))
        # Hook state (not part of the state dict).
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._hook: _HookSpec | None = None
        self._captured: tuple[torch.Tensor, Grid | None] | None = None
        self._paused = 0

    @classmethod
    def from_config(cls, cfg: AlignConfig, source_dim: int, target_dims: Mapping[str, int]) -> RepresentationAligner:
        """Build from an :class:`AlignConfig`.

        ``target_dims`` must name exactly ``cfg.encoders``, in any order; the projectors follow ``cfg.encoders``.

        Raises:
            IrepaError: Alignment disabled in ``cfg`` or ``target_dims`` not matching ``cfg.encoders``.
        """
        if not cfg.enabled:
            raise IrepaError("align.encoders is empty: alignment is disabled, there is nothing to build")
        if set(target_dims) != set(cfg.encoders):
            raise IrepaError(
                f"target_dims names {sorted(target_dims)} but align.encoders is {list(cfg.encoders)}; "
                "pass one width per configured encoder"
            )
        return cls(
            source_dim,
            {name: target_dims[name] for name in cfg.encoders},
            projector=cfg.projector,
            projector_dim=cfg.projector_dim,
            kernel_size=cfg.kernel_size,
            target_norm=cfg.target_norm,
            gamma=cfg.gamma,
            eps=cfg.eps,
            loss=cfg.loss,
            schedule=cfg.schedule(),
        )

    # ------------------------------------------------------------------------------------------------------------------
    # Hooks

    def attach(
        self,
        model: nn.Module,
        layer: str | int,
        *,
        layout: Layout = "BTD",
        prefix_tokens: int = 0,
        grid: Sequence[int] | None = None,
        select: Select = None,
        blocks: str | None = None,
        capture: Literal["grad", "always"] = "grad",
    ) -> RepresentationAligner:
        """Capture the output of one module of ``model`` as the diffusion tokens.

        Args:
            model: Any ``nn.Module`` (unwrap DDP/FSDP/compile wrappers first: attach to ``model.module``).
            layer: A module path (``"encoder.layers.3"``, resolved with ``get_submodule``) or a 1-based block index
                into the model's block list (REPA's "encoder depth": ``4`` = output of the 4th block).
            layout: Layout of the module's output: ``BTD``, ``TBD``, ``BCHW`` or ``BHWC``.
            prefix_tokens: Leading non-grid tokens (CLS, registers, in-context class tokens) to drop
                (``BTD``/``TBD`` only).
            grid: ``(H, W)`` of the token grid for ``BTD``/``TBD`` outputs (default: square); feature-map layouts
                take it from the output shape.
            select: Which tensor to take when the module returns a tuple/list (an index), a dict (a key) or
                anything else (a callable ``output -> Tensor``).
            blocks: Path of the block list for an integer ``layer`` (default: the largest ``nn.ModuleList``).
            capture: ``"grad"`` captures only while autograd is enabled (training forwards, not ``no_grad``
                evaluation); ``"always"`` captures every forward. :meth:`paused` switches capture off either way.

        Returns:
            ``self`` (for chaining).

        Raises:
            IrepaError: Already attached, a layer that does not exist or is ambiguous, or bad options.
        """
        if self._handle is not None:
            raise IrepaError(f"aligner is already attached to {self._hook.where!r}; call detach() first")
        if layout not in _LAYOUTS:
            raise IrepaError(f"layout must be one of {', '.join(_LAYOUTS)}, got {layout!r}")
        if capture not in ("grad", "always"):
            raise IrepaError(f"capture must be 'grad' or 'always', got {capture!r}")
        if layout in ("BCHW", "BHWC") and prefix_tokens:
            raise IrepaError(f"prefix_tokens applies to token layouts (BTD, TBD), not to {layout} feature maps")
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise IrepaError(f"prefix_tokens must be a non-negative integer, got {prefix_tokens!r}")
        hw = None
        if grid is not None:
            height, width = resolve_grid(_grid_product(grid), grid, what="the hooked tokens")
            hw = (height, width)
        module, where = _resolve_layer(model, layer, blocks)
        self._hook = _HookSpec(where, layout, prefix_tokens, hw, select, capture)
        self._handle = module.register_forward_hook(self._on_forward)
        self._captured = None
        return self

    def detach(self) -> None:
        """Remove the forward hook and drop any captured tokens (a no-op if not attached)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._hook, self._captured = None, None, None

    @property
    def attached(self) -> bool:
        """True while a forward hook is registered."""
        return self._handle is not None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Context manager: forwards inside it are not captured (e.g. a MeanFlow JVP pass or EMA evaluation)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def _on_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        spec = self._hook
        if spec is None or self._paused or (spec.capture == "grad" and not torch.is_grad_enabled()):
            return
        tensor = _select(output, spec)
        self._captured = _to_tokens(tensor, spec)

    # ------------------------------------------------------------------------------------------------------------------
    # Loss

    def weight_at(self, step: int) -> float:
        """λ at optimizer step ``step``."""
        return self.schedule(step)

    def active(self, step: int) -> bool:
        """False once the schedule has stopped the alignment (the teacher forward can then be skipped)."""
        return self.schedule.active(step)

    def compute(
        self,
        targets: Mapping[str, torch.Tensor],
        source: torch.Tensor | None = None,
        *,
        grid: Sequence[int] | None = None,
        step: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Alignment terms for one batch.

        Args:
            targets: Encoder name → patch tokens ``(B, T, D_k)`` (no CLS/register tokens), one entry per encoder.
                Detached here: the encoders get no gradient.
            source: Diffusion tokens ``(B, T, D)``; None takes (and consumes) the tokens captured by the hook.
            grid: ``(H, W)`` of the tokens (default: the hook's grid, else square). Needed for ``conv`` projectors
                on non-square grids.
            step: Optimizer step, for the weight schedule.

        Returns:
            ``align`` (λ · loss, differentiable), ``align_loss`` (unweighted, differentiable), ``align_cos``
            (detached), ``align_weight`` and, with several encoders, ``align_cos/<name>``; all float32 scalars.

        Raises:
            IrepaError: Nothing captured, missing/unknown encoders, or shape mismatches (naming both shapes).
        """
        if source is None:
            source, grid = self._take_captured(grid)
        if not isinstance(source, torch.Tensor) or source.ndim != 3 or source.shape[-1] != self.source_dim:
            shape = tuple(source.shape) if isinstance(source, torch.Tensor) else type(source).__name__
            raise IrepaError(f"diffusion tokens must be (B, T, {self.source_dim}), got {shape}")
        num_tokens = source.shape[1]
        hw = resolve_grid(num_tokens, grid, what="the diffusion tokens") if grid is not None else None
        self._check_targets(targets, source)

        losses, cosines = [], []
        for name, projector in zip(self.encoder_names, self.projectors):
            pred = projector(source, hw)
            with torch.autocast(device_type=source.device.type, enabled=False):
                target = self._target_norm_fn(targets[name].detach(), gamma=self.gamma, eps=self.eps)
                out = self._loss_fn(pred, target)
            losses.append(out.loss)
            cosines.append(out.cos)

        weight = self.schedule(step)
        loss = torch.stack(losses).mean()
        terms = {
            "align": loss * weight,
            "align_loss": loss,
            "align_cos": torch.stack(cosines).mean(),
            # full, not tensor: a fill kernel, where torch.tensor(..., device=cuda) copies from host memory and waits
            "align_weight": torch.full((), weight, dtype=torch.float32, device=source.device),
        }
        if len(self.encoder_names) > 1:
            for name, cos in zip(self.encoder_names, cosines):
                terms[f"align_cos/{name}"] = cos
        return terms

    def forward(
        self,
        targets: Mapping[str, torch.Tensor],
        source: torch.Tensor | None = None,
        *,
        grid: Sequence[int] | None = None,
        step: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Same as :meth:`compute` (so the aligner can be wrapped like any module)."""
        return self.compute(targets, source, grid=grid, step=step)

    def _take_captured(self, grid: Sequence[int] | None) -> tuple[torch.Tensor, Sequence[int] | None]:
        if self._captured is None:
            if self._handle is None:
                raise IrepaError("no diffusion tokens: pass source=tokens or attach() the aligner to the model first")
            raise IrepaError(
                f"no tokens were captured at {self._hook.where!r} since the last compute(): run the model's forward "
                "first, with autograd enabled (not under torch.no_grad or aligner.paused()), or attach with "
                "capture='always'; check that this layer runs in the forward pass"
            )
        tokens, hook_grid = self._captured
        self._captured = None  # consume: a stale capture must never be reused for the next batch
        if grid is not None and hook_grid is not None and tuple(grid) != tuple(hook_grid):
            raise IrepaError(f"grid {tuple(grid)} differs from the captured feature map's grid {hook_grid}")
        return tokens, grid if grid is not None else hook_grid

    def _check_targets(self, targets: Mapping[str, torch.Tensor], source: torch.Tensor) -> None:
        if not isinstance(targets, Mapping):
            raise IrepaError(f"targets must be a mapping encoder name -> tokens, got {type(targets).__name__}")
        missing = [n for n in self.encoder_names if n not in targets]
        extra = [n for n in targets if n not in self.target_dims]
        if missing or extra:
            raise IrepaError(
                f"targets must hold exactly the encoders {list(self.encoder_names)}; "
                f"missing {missing}, unexpected {extra}"
            )
        for name in self.encoder_names:
            target = targets[name]
            expected = (source.shape[0], source.shape[1], self.target_dims[name])
            if not isinstance(target, torch.Tensor) or tuple(target.shape) != expected:
                shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
                raise IrepaError(
                    f"target {name!r} has shape {shape} but the diffusion tokens {tuple(source.shape)} need "
                    f"{expected} (same batch and number of tokens, width {self.target_dims[name]}); drop CLS/register "
                    "tokens and match the encoder's grid to the model's"
                )

    def extra_repr(self) -> str:
        """Settings shown by ``print(aligner)``."""
        return (
            f"encoders={list(self.encoder_names)}, target_norm={self.target_norm!r}, gamma={self.gamma}, "
            f"loss={self.loss!r}, schedule={self.schedule}"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Hook helpers


def _grid_product(grid: Sequence[int]) -> int:
    try:
        height, width = grid
        return int(height) * int(width)
    except (TypeError, ValueError):
        raise IrepaError(f"grid {grid!r} must be two positive integers (H, W)") from None


def _resolve_layer(model: nn.Module, layer: str | int, blocks: str | None) -> tuple[nn.Module, str]:
    """Find the module to hook: a dotted path, or a 1-based index into the block list."""
    if isinstance(layer, str):
        return _get_submodule(model, layer), layer
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise IrepaError(f"layer must be a module path (str) or a 1-based block index (int), got {layer!r}")
    if blocks is not None:
        block_list = _get_submodule(model, blocks)
        if not isinstance(block_list, (nn.ModuleList, nn.Sequential)):
            raise IrepaError(f"blocks={blocks!r} is a {type(block_list).__name__}, not an nn.ModuleList/Sequential")
        path = blocks
    else:
        lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod)]
        if not lists:
            raise IrepaError(f"{type(model).__name__} has no nn.ModuleList of blocks; pass layer as a module path")
        longest = max(len(mod) for _, mod in lists)
        candidates = [(name, mod) for name, mod in lists if len(mod) == longest]
        if len(candidates) > 1:
            names = ", ".join(repr(name) for name, _ in candidates)
            raise IrepaError(f"several block lists have {longest} blocks ({names}); pass blocks=PATH to choose one")
        path, block_list = candidates[0]
    if not 1 <= layer <= len(block_list):
        raise IrepaError(f"layer {layer} is outside 1..{len(block_list)} (the blocks of {path or 'the model'!r})")
    where = f"{path}.{layer - 1}" if path else str(layer - 1)
    return block_list[layer - 1], where


def _get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise IrepaError(f"{type(model).__name__} has no submodule {path!r}{hint}") from None


def _select(output: Any, spec: _HookSpec) -> torch.Tensor:
    select = spec.select
    if callable(select):
        tensor = select(output)
    elif isinstance(output, torch.Tensor):
        if select is not None:
            raise IrepaError(f"layer {spec.where!r} returns a single tensor; drop select={select!r}")
        tensor = output
    elif isinstance(output, (tuple, list)):
        if not isinstance(select, int) or isinstance(select, bool):
            raise IrepaError(
                f"layer {spec.where!r} returns a {type(output).__name__} of {len(output)}; pass select=INDEX"
            )
        if not -len(output) <= select < len(output):
            raise IrepaError(f"select={select} is out of range for the {len(output)} outputs of {spec.where!r}")
        tensor = output[select]
    elif isinstance(output, Mapping):
        if select not in output:
            raise IrepaError(f"layer {spec.where!r} returns a mapping with keys {list(output)}; pass select=KEY")
        tensor = output[select]
    else:
        raise IrepaError(
            f"layer {spec.where!r} returns a {type(output).__name__}; pass select=callable(output) -> tensor"
        )
    if not isinstance(tensor, torch.Tensor):
        raise IrepaError(f"select picked a {type(tensor).__name__} from {spec.where!r}, not a tensor")
    return tensor


def _to_tokens(tensor: torch.Tensor, spec: _HookSpec) -> tuple[torch.Tensor, Grid | None]:
    expected_rank = 3 if spec.layout in ("BTD", "TBD") else 4
    if tensor.ndim != expected_rank:
        raise IrepaError(
            f"layer {spec.where!r} output has shape {tuple(tensor.shape)}, not {spec.layout}; pass the right layout"
        )
    if spec.layout == "BCHW":
        return tensor.flatten(2).transpose(1, 2), (tensor.shape[2], tensor.shape[3])
    if spec.layout == "BHWC":
        return tensor.flatten(1, 2), (tensor.shape[1], tensor.shape[2])
    tokens = tensor.transpose(0, 1) if spec.layout == "TBD" else tensor
    tokens = drop_prefix(tokens, spec.prefix_tokens, what=f"the output of {spec.where!r}")
    if spec.grid is not None:
        resolve_grid(tokens.shape[1], spec.grid, what=f"the tokens of {spec.where!r}")
    return tokens, spec.grid
