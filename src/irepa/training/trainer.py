"""The trainer: ``Trainer(config, run_dir).fit()``.

The recipe is the registered objective named by ``objective.name`` (:mod:`irepa.training.objectives`; default
``denoising``: SiT/REPA/iREPA). It owns the trained modules and their optimizers and EMAs; the trainer drives it.
One optimizer step (:meth:`Trainer.train_step`):

1. ``objective.draw`` draws the step's randomness for the whole global batch from one seeded generator (times,
   noise, label dropout, latent sampling, ...); each micro-batch gets this process's slice (so results do not
   depend on the number of processes).
2. For each phase of the objective (one for almost every recipe), for each of ``optim.grad_accumulation``
   micro-batches: the objective maps the micro-batch to named terms (e.g. ``loss = denoise + align``, teacher and
   model forwards under the training autocast, alignment maths in float32); backward of ``loss / accumulation``.
   Gradients are all-reduced by DDP on the last micro-batch only, or — for objectives with ``manual_grad_sync`` —
   by :func:`~irepa.training.distributed.sync_gradients` after it.
3. Gradient norm of the phase's optimizer (clipped to ``optim.grad_clip``); one host sync decides whether the
   update is finite (the non-finite guard) and whether a stop signal arrived on any process; AdamW step (through
   the loss scaler for fp16).
4. After the last phase: the EMA update of every EMA'd module.

Interval hooks run after a step: logging (``train.log_every_steps``), checkpoint (``train.checkpoint_every_steps``),
EMA snapshot (``train.snapshot_every_steps``), and any hook added with :meth:`Trainer.add_hook`. At the end, and on
SIGTERM/SIGINT, a checkpoint and a snapshot are written.

Run directory::

    RUN_DIR/
      config.yaml          resolved config (rewritten at each start; resuming refuses non-resumable changes)
      checkpoints/         full training state, last train.keep_last kept (see irepa.training.checkpoint)
      snapshots/           ema-<step>.safetensors: EMA inference snapshots for `irepa sample` (all kept)
      previews/            step-<step>.png: EMA sample grids (train.preview_every_steps > 0)
      metrics.jsonl, log.txt, tensorboard/      (see irepa.training.logging)

Resuming is re-running the same command: the newest readable checkpoint is loaded (falling back past corrupt ones)
and training continues bit-identically to an uninterrupted run on the same hardware and process count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import torch
import yaml
from torch import nn

from irepa.config import dump_yaml, to_dict
from irepa.errors import ConfigError, IrepaError
from irepa.training.checkpoint import CheckpointError, CheckpointManager, LoadedCheckpoint, check_state_dict
from irepa.training.config import TrainConfig, check_resume_compatible, check_run_dir
from irepa.training.distributed import (
    capture_rng_state,
    check_replicas_in_sync,
    make_accelerator,
    per_device_batch_size,
    restore_rng_state,
    seed_everything,
    sync_gradients,
)
from irepa.training.ema import EMA
from irepa.training.guard import NonFiniteError, NonFiniteGuard
from irepa.training.logging import MetricAccumulator, TrainLogger
from irepa.training.signals import StopSignal
from irepa.training.timing import StepTimer
from irepa.utils.io import write_text

if TYPE_CHECKING:
    from irepa.encoders import WeightLocations

__all__ = ["FitResult", "Hook", "Trainer", "snapshot_path"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    """The EMA inference snapshot of ``step`` in a run directory: ``RUN_DIR/snapshots/ema-<step:07d>.safetensors``."""
    return Path(run_dir) / "snapshots" / f"ema-{step:07d}.safetensors"


def _objective_class(cfg: TrainConfig) -> Any:
    from irepa.training.objectives import OBJECTIVES

    return OBJECTIVES.get(cfg.objective.name)


@dataclasses.dataclass
class FitResult:
    """How :meth:`Trainer.fit` ended.

    Attributes:
        status: ``"completed"`` (reached ``train.max_steps``) or ``"interrupted"`` (SIGTERM/SIGINT; checkpoint
            written, rerun the same command to resume).
        step: Optimizer steps completed.
        nimg: Images seen (``step × global_batch_size``).
        checkpoint: The last checkpoint written (or ``None``).
        snapshot: The last EMA snapshot written (or ``None``).
        signal: The signal that stopped training, if any.
    """

    status: Literal["completed", "interrupted"]
    step: int
    nimg: int
    checkpoint: Path | None = None
    snapshot: Path | None = None
    signal: str | None = None


@dataclasses.dataclass
class Hook:
    """An interval hook: ``fn(trainer)`` after every ``every_steps`` optimizer steps (and at the end if ``at_end``).

    Hooks run on every process; gate file writes with ``trainer.is_main``.
    """

    name: str
    every_steps: int
    fn: Callable[[Trainer], None]
    at_end: bool = True

    def due(self, step: int, final: bool) -> bool:
        """Whether the hook runs after ``step``."""
        return (self.every_steps > 0 and step % self.every_steps == 0) or (final and self.at_end)


class Trainer:
    """Trains the model of ``config`` in ``run_dir`` (resuming from its newest checkpoint if there is one).

    Args:
        config: The resolved training config.
        run_dir: Run directory (created; see the module docstring for its layout).
        expected_world_size: Process count announced by the launcher (``WORLD_SIZE``), checked against what
            accelerate set up (guards against silently unsynchronized processes on CPU machines).
        stream: Console stream for the main process (default stderr).
        weight_locations: Where the teacher's encoder weights are looked for (the CLI resolves ``$IREPA_CACHE``
            and the hub caches, like every command that loads an encoder); ``teacher.cache_dir`` and
            ``teacher.offline`` override it. ``None`` = only ``teacher.cache_dir``.

    Raises:
        IrepaError: Bad input: missing or mismatched data stores, a batch size that does not divide across
            processes, an incompatible run directory, missing encoder weights, ...
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        expected_world_size: int | None = None,
        stream: IO[str] | None = None,
        weight_locations: WeightLocations | None = None,
    ) -> None:
        from irepa.training.data import TrainData

        self.config = cfg = config
        self.run_dir = Path(run_dir)
        self.stream = stream
        self.weight_locations = weight_locations
        self.accelerator = make_accelerator(cfg.train.device, expected_world_size=expected_world_size)
        self.device = self.accelerator.device
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.batch_size = per_device_batch_size(
            cfg.optim.global_batch_size, self.world_size, cfg.optim.grad_accumulation
        )
        if cfg.train.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device (dynamic loss scaling); use bf16 or fp32")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
            torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        self._autocast_dtype = _AUTOCAST_DTYPES[cfg.train.precision]
        self._warnings: list[str] = []
        self.timer = StepTimer(self.device)
        self._check_run_dir()

        # Data first: it fixes the model's input shape and class count. Then build everything from one seed on
        # every process (DDP also broadcasts rank 0's weights; identical init keeps the EMA copies identical).
        seed_everything(cfg.train.seed)
        self.data = TrainData(
            cfg.data,
            global_batch_size=cfg.optim.global_batch_size,
            micro_batch_size=self.batch_size,
            world_size=self.world_size,
            rank=self.rank,
            seed=cfg.train.seed,
            device=self.device,
            need_images=_objective_class(cfg).needs_images(cfg),
        )
        from irepa.training.objectives import OBJECTIVES, ObjectiveContext

        context = ObjectiveContext(config=cfg, data=self.data, device=self.device, weight_locations=weight_locations)
        self.objective = OBJECTIVES.get(cfg.objective.name).build(context).to(self.device)
        self.objective.bind(autocast=self.autocast, timer=self.timer)
        self.alignment = self.objective.alignment
        # Named collections (one entry per trained module / optimizer / EMA of the recipe): every entry is
        # checkpointed as "<name>.safetensors", "optimizer.<name>.pt" and "ema.<name>.safetensors".
        self.modules: dict[str, nn.Module] = self.objective.trained_modules()
        self.emas: dict[str, EMA] = {
            name: EMA(self.modules[name], cfg.train.ema_decay).to(self.device) for name in self.objective.ema_modules()
        }
        self.snapshot_spec = self.objective.snapshot()
        if self.snapshot_spec.module not in self.emas:
            raise IrepaError(
                f"objective {cfg.objective.name!r} snapshots module {self.snapshot_spec.module!r}, which has no EMA"
            )
        self.phases = self.objective.phases()
        if len(self.phases) > 1 and not self.objective.manual_grad_sync:
            raise IrepaError(
                f"objective {cfg.objective.name!r} has {len(self.phases)} phases: it must set manual_grad_sync "
                "(DDP's backward hooks cannot sync phases that update different parameters)"
            )
        if cfg.train.compile:
            self.objective.compile_for_training()
        # DDP when world_size > 1, unless the objective all-reduces its gradients itself.
        if self.objective.manual_grad_sync:
            self.wrapped: nn.Module = self.objective
        else:
            self.wrapped = self.accelerator.prepare_model(self.objective)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.optimizer_params: dict[str, list[nn.Parameter]] = {}
        self._base_lr: dict[str, float] = {}
        o = cfg.optim
        for name, spec in self.objective.optimizers().items():
            self.optimizer_params[name] = list(spec.params)
            self._base_lr[name] = o.lr if spec.lr is None else spec.lr
            self.optimizers[name] = torch.optim.AdamW(
                self.optimizer_params[name],
                lr=self._base_lr[name],
                betas=o.betas if spec.betas is None else spec.betas,
                weight_decay=o.weight_decay if spec.weight_decay is None else spec.weight_decay,
                eps=o.eps if spec.eps is None else spec.eps,
                # PyTorch's default implementation (CUDA: multi-tensor; CPU: for-loop, bit-identical to it and as
                # fast here) unless optim.fused: one fused kernel, 3-4x faster updates but other rounding.
                **({"fused": True} if o.fused else {}),
            )
        unknown = sorted({p.optimizer for p in self.phases} - set(self.optimizers))
        if unknown:
            raise IrepaError(f"objective {cfg.objective.name!r}: phases name unknown optimizers {unknown}")
        self.params = [p for params in self.optimizer_params.values() for p in params]
        self._param_names = {id(p): name for name, p in self.objective.named_parameters()}
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
        #: No host sync inside a step (optim.fused without the fp16 loss scaler): the fused AdamW skips a non-finite
        #: update on the device and the guard's flags are read at log intervals, checkpoints and snapshots.
        self.deferred_guard = cfg.optim.fused and self.scaler is None
        self._deferred: list[tuple[Any, ...]] = []  # (step, where, nonfinite, term names, finite terms, samples)
        self._pending_stop: tuple[torch.Tensor, Any] | None = None

        # Per-step randomness: one generator, same seed and state on every process (see train_step).
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed)
        seed_everything(cfg.train.seed + self.rank)  # anything else random (official convention: seed + rank)

        self.step = 0
        self.nimg = 0
        self.guard = NonFiniteGuard(cfg.train.nonfinite_patience)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.train.keep_last)
        self.metrics = MetricAccumulator()
        self.hooks: list[Hook] = []
        self.logger = TrainLogger(self.run_dir, cfg.logging, enabled=False)  # replaced by fit()
        self.last_checkpoint: Path | None = None
        self.last_snapshot: Path | None = None
        self._resumed_from: LoadedCheckpoint | None = None
        self._preview_decode: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._stop = StopSignal()

    # ------------------------------------------------------------------------------------------------------------------
    # Construction helpers

    def _check_run_dir(self) -> None:
        """Refuse a run directory that is not a folder, or whose recorded config differs in a non-resumable key."""
        check_run_dir(self.run_dir)
        path = self.run_dir / "config.yaml"
        if path.exists():
            from irepa.config import read_yaml

            changed = check_resume_compatible(read_yaml(path), self.config, where=f"run directory {self.run_dir}")
            self._warnings.extend(f"config change on resume: {k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())

    # ------------------------------------------------------------------------------------------------------------------
    # Public API

    @property
    def model(self) -> nn.Module:
        """The sampled model of the recipe: the snapshot's module (no DDP wrapper; compiled if ``train.compile``)."""
        return self.modules[self.snapshot_spec.module]

    unwrapped_model = model

    @property
    def ema(self) -> EMA:
        """The EMA of :attr:`model`."""
        return self.emas[self.snapshot_spec.module]

    def add_hook(self, name: str, every_steps: int, fn: Callable[[Trainer], None], *, at_end: bool = True) -> None:
        """Run ``fn(trainer)`` every ``every_steps`` optimizer steps (e.g. previews, online evaluation)."""
        self.hooks.append(Hook(name, every_steps, fn, at_end))

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training autocast context (a no-op in fp32)."""
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def fit(self) -> FitResult:
        """Train to ``train.max_steps`` (resuming if the run directory holds a checkpoint).

        Returns:
            A :class:`FitResult`; ``status == "interrupted"`` after SIGTERM/SIGINT (checkpoint written).

        Raises:
            NonFiniteError: Too many consecutive non-finite steps.
            CheckpointError: A checkpoint could not be written (the previous one stays valid), or none is readable.
        """
        cfg = self.config
        resumed = self._resume()
        self.logger = TrainLogger(
            self.run_dir,
            cfg.logging,
            enabled=self.is_main,
            total_steps=cfg.train.max_steps,
            start_step=self.step,
            resumed=resumed or (self.run_dir / "metrics.jsonl").exists(),
            run_name=cfg.name,
            run_config=to_dict(cfg),
            stream=self.stream,
        )
        for message in self._warnings:
            self.logger.warning(message)
        try:
            with self._stop:
                return self._loop()
        finally:
            self.logger.close()
            self.data.close()

    # ------------------------------------------------------------------------------------------------------------------
    # Loop

    def _loop(self) -> FitResult:
        cfg = self.config
        if self.is_main:
            self.checkpoints.remove_stale_temporaries()
            # A snapshot write killed half-way leaves its atomic_write temporary behind (".ema-<step>...tmp").
            for stale in self.snapshot_path(0).parent.glob(".ema-*.tmp"):
                stale.unlink(missing_ok=True)
            write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        self.accelerator.wait_for_everyone()
        self._print_summary()
        if self._resumed_from is not None and self.step > 0:
            self._complete_snapshots()
        hooks = [
            Hook("checkpoint", cfg.train.checkpoint_every_steps, lambda t: t.save_checkpoint()),
            Hook("snapshot", cfg.train.snapshot_every_steps, lambda t: t.save_snapshot()),
            *self.hooks,
        ]
        if cfg.train.preview_every_steps > 0:
            hooks.append(Hook("preview", cfg.train.preview_every_steps, lambda t: t.save_preview()))
        batches = self.data.iterator()
        self.timer.reset()
        last_log_step = self.step
        while self.step < cfg.train.max_steps:
            stop = self.train_step(batches)
            self.logger.progress(self.step)
            final = self.step >= cfg.train.max_steps
            if self.step % cfg.train.log_every_steps == 0 or final or stop:
                self._log_interval(self.step - last_log_step)
                last_log_step = self.step
            if stop and not final:
                self.logger.info(
                    f"{self._stop.received or 'stop signal'} received: stopping after step {self.step}; "
                    "writing a checkpoint (rerun the same command to resume)"
                )
                self.save_checkpoint()
                for hook in hooks[1:]:  # what else is due at this step (snapshot, user hooks) still runs
                    if hook.due(self.step, False):
                        hook.fn(self)
                signal = self._stop.received or "SIGTERM"  # another process may have received it
                return FitResult("interrupted", self.step, self.nimg, self.last_checkpoint, self.last_snapshot, signal)
            for hook in hooks:
                if hook.due(self.step, final):
                    hook.fn(self)
                    self.timer.reset()  # hooks do not count as step time
        # A resumed run that had already finished (or max_steps == 0) still leaves both artifacts at its last step.
        if self.checkpoints.steps()[-1:] != [self.step]:
            self.save_checkpoint()
        if self.snapshot_path(self.step).exists():
            self.last_snapshot = self.snapshot_path(self.step)
        else:
            self.save_snapshot()
        self.logger.info(f"done: {self.step} steps, {self.nimg} images; EMA snapshot {self.last_snapshot}")
        return FitResult("completed", self.step, self.nimg, self.last_checkpoint, self.last_snapshot)

    def train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> bool:
        """One optimizer step: every phase of the objective over ``optim.grad_accumulation`` micro-batches.

        Returns:
            Whether a stop signal arrived on any process (the caller checkpoints and exits).
        """
        cfg = self.config
        accum = cfg.optim.grad_accumulation
        # The step's randomness for the whole global batch, from the one generator (same state on every process).
        draws = self.objective.draw(cfg.optim.global_batch_size, self.generator, self.device)
        micro_batches: list[dict[str, torch.Tensor]] = []  # the step's data, kept until the step ends
        fetched = 0
        multi = len(self.phases) > 1
        terms_sum: dict[str, torch.Tensor] = {}
        grad_norms: dict[str, torch.Tensor] = {}
        skipped: bool | torch.Tensor = False
        stop = False
        for index, phase in enumerate(self.phases):
            if phase.active is not None and not phase.active(self.step):
                continue
            optimizer = self.optimizers[phase.optimizer]
            params = self.optimizer_params[phase.optimizer]
            optimizer.zero_grad(set_to_none=True)
            prefix = f"{phase.name or phase.optimizer}/" if multi else ""
            for micro in range(accum):
                if micro < fetched:
                    batch = micro_batches[micro]
                else:  # the first phase that runs reads the step's micro-batches
                    with self.timer.section("data"):
                        batch = next(batches)
                    batch = _to_device(batch, self.device)
                    fetched += 1
                    micro_batches.append(batch)  # later phases reuse them; a non-finite step names their samples
                # This process's samples of the global batch: positions r, r + W, r + 2W, ... (the sampler's layout).
                positions = (
                    torch.arange(micro * self.batch_size, (micro + 1) * self.batch_size, device=self.device)
                    * self.world_size
                    + self.rank
                )
                micro_draws = {k: v[positions] for k, v in draws.items()}
                last = micro == accum - 1
                sync = contextlib.nullcontext() if last or self.wrapped is self.objective else None
                with sync or self.accelerator.no_sync(self.wrapped):
                    terms = self.wrapped(batch, micro_draws, self.step, index)
                    loss = terms["loss"] / accum
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
                for name, value in terms.items():
                    value = value.detach().float() / accum
                    key = prefix + name
                    terms_sum[key] = terms_sum[key] + value if key in terms_sum else value
            if self.objective.manual_grad_sync and self.world_size > 1:
                sync_gradients(params, self.world_size)
                every = self.objective.sync_check_every_steps
                if every and (self.step + 1) % every == 0:
                    grads = {self._param_names.get(id(p), str(i)): p.grad for i, p in enumerate(params)}
                    check_replicas_in_sync(grads, what="gradients", step=self.step + 1)
            phase_skipped, phase_stop, grad_norm = self._step_optimizer(
                optimizer, params, phase.optimizer, terms_sum, micro_batches
            )
            grad_norms[prefix + "grad_norm"] = grad_norm
            if isinstance(phase_skipped, torch.Tensor):  # a device flag: combine without reading it
                skipped = phase_skipped if skipped is False else skipped | phase_skipped
            else:
                skipped = skipped or phase_skipped
            stop = stop or phase_stop

        for _ in range(fetched, accum):
            next(batches)  # every phase was inactive: the step still consumes its data (the sampler advances)
        if isinstance(skipped, torch.Tensor):  # deferred guard: the skip is decided on the device
            keep = ~skipped
            for name, ema in self.emas.items():
                ema.update(self.modules[name], keep=keep)
            self.metrics.add({**terms_sum, **grad_norms}, keep=keep)
            if len(self._deferred) >= 1000:  # bounded memory when log and checkpoint intervals are very long
                self.settle_guard()
        elif not skipped:
            for name, ema in self.emas.items():
                ema.update(self.modules[name])
            self.metrics.add({**terms_sum, **grad_norms})
        self.step += 1
        self.nimg += cfg.optim.global_batch_size
        self.data.advance(cfg.optim.global_batch_size)
        return stop

    def _step_optimizer(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        name: str,
        terms: dict[str, torch.Tensor],
        batches: list[dict[str, torch.Tensor]],
    ) -> tuple[bool | torch.Tensor, bool, torch.Tensor]:
        """Clip, check and apply one optimizer's accumulated gradients. Returns ``(skipped, stop, grad_norm)``.

        ``terms`` (the step's summed loss terms) and ``batches`` (its micro-batches) only serve the warning of a
        non-finite step. With the deferred guard (:attr:`deferred_guard`) ``skipped`` is a 0-d bool device tensor
        and nothing is read from the device.
        """
        cfg = self.config
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        if cfg.optim.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(grads)
        if self.deferred_guard:
            return self._step_optimizer_deferred(optimizer, name, terms, batches, grad_norm)
        # The one host sync per optimizer: is the update finite, and did any process receive a stop signal?
        flags = torch.stack(
            [(~torch.isfinite(grad_norm)).float(), torch.tensor(float(bool(self._stop)), device=self.device)]
        )
        if self.world_size > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        nonfinite, stop = (bool(v > 0) for v in flags.tolist())
        hint = ""
        if nonfinite:  # the rare bad step: reading the terms' values here is a sync of its own
            bad = [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]
            hint = self._skip_hint(bad, self._sample_flags(batches))
        where = f" of optimizer {name!r}" if len(self.optimizers) > 1 else ""
        skip = self.guard.observe(not nonfinite, step=self.step + 1, hint=hint)
        if skip:
            self.logger.warning(f"step {self.step + 1}: skipped, non-finite gradients{where}{hint}")

        scale = self._lr_scale(self.step)
        for group in optimizer.param_groups:
            group["lr"] = self._base_lr[name] * scale
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skips the update itself when gradients overflowed
            self.scaler.update()
        elif not skip:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return skip, stop, grad_norm

    def _step_optimizer_deferred(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        terms: dict[str, torch.Tensor],
        batches: list[dict[str, torch.Tensor]],
        grad_norm: torch.Tensor,
    ) -> tuple[torch.Tensor, bool, torch.Tensor]:
        """The guard and the update without a host sync (fused AdamW skips a flagged update on the device)."""
        nonfinite = ~torch.isfinite(grad_norm)
        if self.world_size > 1:  # identical after the gradient all-reduce; agreed explicitly all the same
            nonfinite = self.accelerator.reduce(nonfinite.float(), reduction="sum") > 0
        skip = self.guard.observe_on_device(nonfinite)
        # Read at the next settle_guard (log interval, checkpoint, snapshot): the flags, which terms were finite and
        # which samples held non-finite inputs (what the warning of a skipped step names).
        finite_terms = torch.stack([torch.isfinite(v).all() for v in terms.values()])
        where = f" of optimizer {name!r}" if len(self.optimizers) > 1 else ""
        samples = self._sample_flags(batches)
        self._deferred.append((self.step + 1, where, nonfinite, list(terms), finite_terms, samples))
        scale = self._lr_scale(self.step)
        for group in optimizer.param_groups:
            group["lr"] = self._base_lr[name] * scale
        optimizer.found_inf = skip.float()  # the fused kernel leaves weights, moments and step count unchanged
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        optimizer.zero_grad(set_to_none=True)
        return skip, self._stop_flag(), grad_norm

    def _stop_flag(self) -> bool:
        """Whether any process received a stop signal, without waiting for the device.

        One process: the signal handler's host flag. Several: this step's flags are summed by a collective whose
        result is copied to host memory asynchronously and read one step later (a CUDA event waits for the previous
        step only), so every process stops at the same step, one step after the signal.
        """
        if self.world_size == 1:
            return bool(self._stop)
        local = torch.full((), float(bool(self._stop)), device=self.device)  # a fill: no blocking host copy
        reduced = self.accelerator.reduce(local, reduction="sum")
        cuda = self.device.type == "cuda"
        host = torch.empty((), pin_memory=cuda)
        host.copy_(reduced, non_blocking=cuda)
        event = torch.cuda.Event() if cuda else None
        if event is not None:
            event.record()
        previous, self._pending_stop = self._pending_stop, (host, event)
        if previous is None:
            return False
        if previous[1] is not None:
            previous[1].synchronize()
        return float(previous[0]) > 0

    def settle_guard(self) -> None:
        """Read the deferred guard's flags (one host sync): count and warn about skipped steps, in step order.

        Called at log intervals, before checkpoints and snapshots (whose guard state and weights it vouches for).

        Raises:
            NonFiniteError: ``train.nonfinite_patience`` consecutive non-finite steps happened since the last call
                (naming the step where it happened; no update was applied from that step on).
        """
        if not self._deferred:
            return
        pending, self._deferred = self._deferred, []
        flags = torch.cat([torch.stack([p[2].reshape(()), *(~p[4])]) for p in pending]).tolist()
        offset = 0
        for step, where, _, names, _, samples in pending:
            nonfinite, bad = flags[offset], flags[offset + 1 : offset + 1 + len(names)]
            offset += 1 + len(names)
            if not nonfinite:
                self.guard.observe(True, step=step)
                continue
            hint = self._skip_hint([n for n, b in zip(names, bad) if b], samples)
            self.guard.observe(False, step=step, hint=hint)
            self.logger.warning(f"step {step}: skipped, non-finite gradients{where}{hint}")

    def _sample_flags(self, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The step's dataset indices (host) and per-sample "stored input non-finite" flags (device; no sync)."""
        indices, bad = [], []
        for batch in batches:
            rows = torch.zeros(len(batch["index"]), dtype=torch.bool, device=self.device)
            for value in batch.values():
                if value.is_floating_point():  # latent moments (uint8 images cannot hold NaN)
                    rows |= ~torch.isfinite(value.flatten(1)).all(dim=1)
            indices.append(batch["index"])
            bad.append(rows)
        if not indices:
            return None
        return torch.cat(indices), torch.cat(bad)

    def _skip_hint(self, bad_terms: list[str], samples: tuple[torch.Tensor, torch.Tensor] | None) -> str:
        """`` (non-finite terms: denoise; non-finite inputs: samples 12, 40 of the data store)`` for a skipped step.

        Names the non-finite loss terms (or says the loss was finite) and the dataset indices (``batch["index"]``,
        over all processes) whose stored inputs are non-finite, else the step's samples, so that the bad data can be
        found in the store. A collective reading the device (:meth:`_sample_flags`' tensors): every process calls
        it, as every process agrees that the step is non-finite.
        """
        terms = f"non-finite terms: {', '.join(bad_terms)}" if bad_terms else "loss finite, gradients not"
        if samples is None:
            return f" ({terms}; no data read)"
        index, flag = samples
        if self.world_size > 1:
            index, flag = self.accelerator.gather(index.to(self.device)), self.accelerator.gather(flag)
        index, flag = index.tolist(), flag.tolist()
        named = [i for i, b in zip(index, flag, strict=True) if b]
        if named:
            return f" ({terms}; non-finite inputs: samples {_some(sorted(named))} of the data store)"
        return f" ({terms}; inputs finite, samples of the step: {_some(sorted(index))})"

    def _lr_scale(self, step: int) -> float:
        """Warmup factor of every optimizer's learning rate at ``step``."""
        warmup = self.config.optim.warmup_steps
        return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

    def _lr(self, step: int) -> float:
        """Learning rate of the first optimizer at ``step`` (logged)."""
        return next(iter(self._base_lr.values())) * self._lr_scale(step)

    def _log_interval(self, steps: int) -> None:
        cfg = self.config
        self.settle_guard()
        values = self.metrics.compute(lambda x: self.accelerator.reduce(x, reduction="mean"))
        perf = self.timer.summary(steps=max(steps, 1), samples=max(steps, 1) * cfg.optim.global_batch_size)
        record = {
            "loss": values.pop("loss", math.nan),
            **values,
            "lr": self._lr(max(self.step - 1, 0)),
            "nimg": float(self.nimg),
            "img_per_s": perf["img_per_s"],
            "step_ms": perf["step_ms"],
            "teacher_share": perf["teacher_share"],
            "data_share": perf["data_share"],
            "nonfinite_skipped": float(self.guard.skipped),
        }
        if self.scaler is not None:
            record["loss_scale"] = float(self.scaler.get_scale())
        if self.device.type == "cuda":
            record["mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.logger.log(record, self.step)

    def _print_summary(self) -> None:
        cfg = self.config
        counts = ", ".join(
            f"{name} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for name, m in self.modules.items()
        )
        grid = getattr(self.model, "grid", None)
        lines = [
            f"run {cfg.name or '(unnamed)'} in {self.run_dir}",
            f"processes {self.world_size} ({self.accelerator.distributed_type}, {self.device.type}); global batch "
            f"{cfg.optim.global_batch_size} = {self.world_size} x {cfg.optim.grad_accumulation} accumulation x "
            f"{self.batch_size} per device",
            f"model {cfg.model.name} {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params, input "
            f"{tuple(self.data.input_shape)}, grid {tuple(grid) if grid is not None else '-'}; precision "
            f"{cfg.train.precision}" + (", compiled" if cfg.train.compile else ""),
            f"data {self.data.describe()}",
            *self.objective.describe(),
            f"trained {counts}; optimizers {', '.join(self.optimizers)}; EMA {', '.join(self.emas) or 'none'}"
            + ("; gradients all-reduced by the objective's trainer sync" if self.objective.manual_grad_sync else ""),
        ]
        if self.alignment is not None:
            lines.append(self.alignment.describe(cfg.align))
        else:
            lines.append("align off (no encoders)")
        if self._resumed_from is not None:
            lines.append(f"resumed from {self._resumed_from.path.name} (step {self.step}, {self.nimg} images)")
        else:
            lines.append("starting from scratch")
        for line in lines:
            self.logger.info(line)

    # ------------------------------------------------------------------------------------------------------------------
    # Checkpoints and snapshots

    def _trainer_state(self) -> dict[str, Any]:
        from accelerate.utils import gather_object

        rng = gather_object([capture_rng_state()]) if self.world_size > 1 else [capture_rng_state()]
        return {
            "step": self.step,
            "nimg": self.nimg,
            "world_size": self.world_size,
            "generator": self.generator.get_state(),
            "rng": rng,
            "guard": self.guard.state_dict(),
            "data": self.data.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def _check_weights_finite(self, what: str) -> None:
        """Refuse to write ``what`` when any trained or EMA weight is NaN/inf.

        The non-finite guard watches gradients; an update can still make weights non-finite (e.g. a huge learning
        rate), and a checkpoint of such weights would replace the last good one.

        Raises:
            NonFiniteError: Naming the module, how many tensors are affected, one of them, and the last checkpoint.
        """
        parts = [(name, module) for name, module in self.modules.items()]
        parts += [(f"ema.{name}", ema.module) for name, ema in self.emas.items()]
        for name, module in parts:
            with torch.no_grad():
                state = module.state_dict()
                bad = [key for key, p in state.items() if p.is_floating_point() and not p.isfinite().all()]
            if bad:
                kept = f"the last checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint"
                raise NonFiniteError(
                    f"step {self.step}: {len(bad)} weight tensor(s) of {name} are non-finite (e.g. {bad[0]}); not "
                    f"writing the {what} ({kept}); lower optim.lr or check the data"
                )

    def save_checkpoint(self) -> Path | None:
        """Write the full training state (collective: call on every process; rank 0 writes).

        Raises:
            CheckpointError: If the write failed on rank 0 (the previous checkpoint stays valid).
        """
        from accelerate.utils import broadcast_object_list

        self.settle_guard()
        self._check_weights_finite("checkpoint")  # same weights on every process: the same decision everywhere
        self._check_processes_in_sync()  # collective
        state = self._trainer_state()  # collective (RNG gather)
        error: str | None = None
        path: Path | None = None
        if self.is_main:
            tensors = {name: module.state_dict() for name, module in self.modules.items()}
            tensors.update({f"ema.{name}": ema.state_dict() for name, ema in self.emas.items()})
            objects = {f"optimizer.{name}": opt.state_dict() for name, opt in self.optimizers.items()}
            try:
                path = self.checkpoints.save(
                    self.step,
                    tensors=tensors,
                    objects={**objects, "trainer": state},
                    texts={"config.yaml": dump_yaml(self.config)},
                    meta={"nimg": self.nimg, "name": self.config.name},
                )
            except CheckpointError as exc:
                error = str(exc)
        if self.world_size > 1:
            error = broadcast_object_list([error])[0]
        if error is not None:
            raise CheckpointError(error)
        self.last_checkpoint = self.checkpoints.path(self.step)
        synced = f" (weights identical on all {self.world_size} processes)" if self.world_size > 1 else ""
        self.logger.info(f"checkpoint {self.last_checkpoint}{synced}")
        self.accelerator.wait_for_everyone()
        return path

    def _check_processes_in_sync(self) -> None:
        """Verify that every process holds the same weights (DDP keeps them bit-identical).

        Guards against the silent failure mode of unsynchronized processes (environment.md §6): one float64 sum
        per parameter tensor is all-gathered and compared exactly.

        Raises:
            IrepaError: If the processes' weights differ.
        """
        if self.world_size == 1:
            return
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in self.params])
        gathered = self.accelerator.gather(sums[None])  # (world, num_params)
        if not bool((gathered == gathered[0]).all()):
            raise IrepaError(
                f"the {self.world_size} processes hold different weights at step {self.step}: they are not "
                "synchronized (see docs/training.md, multi-GPU launch); not writing a checkpoint"
            )

    def snapshot_path(self, step: int) -> Path:
        """Where the EMA snapshot of ``step`` is written."""
        return snapshot_path(self.run_dir, step)

    def _complete_snapshots(self) -> None:
        """On resume: every EMA snapshot due up to the checkpoint's step exists, or the log says which cannot.

        The snapshot of the checkpoint's own step is written from the checkpoint's EMA when missing (the run stopped
        by SIGTERM, SIGKILL or a full disk between the checkpoint and its snapshot). An earlier one cannot be rebuilt,
        since a checkpoint holds the EMA of its own step only; the trainer never loses one (a failed snapshot write
        stops the run before any later checkpoint), so a gap means the file was removed: a warning names it.
        """
        every = self.config.train.snapshot_every_steps
        if every > 0 and self.step % every == 0 and not self.snapshot_path(self.step).exists():
            self.save_snapshot()
        if not self.is_main:
            return
        # The interval in force when the checkpoint was written (the setting may change on resume).
        old_config = yaml.safe_load(self._resumed_from.texts.get("config.yaml", "")) or {}
        old_every = int((old_config.get("train") or {}).get("snapshot_every_steps", every) or 0)
        if old_every <= 0:
            return
        written = {path.name for path in self.snapshot_path(0).parent.glob("ema-*.safetensors")}
        missing = [s for s in range(old_every, self.step, old_every) if self.snapshot_path(s).name not in written]
        if missing:
            self.logger.warning(
                f"EMA snapshot(s) of step {_some(missing)} are missing from {self.snapshot_path(0).parent} and cannot "
                f"be rebuilt (checkpoint {self._resumed_from.path.name} holds the EMA of step {self.step} only); "
                "restore them from a copy if you need them"
            )

    def save_snapshot(self) -> Path:
        """Write the EMA inference snapshot for the current step (rank 0 writes; call on every process).

        Raises:
            CheckpointError: If the write failed on rank 0 (full disk, quota, I/O error); no partial file is left.
        """
        from accelerate.utils import broadcast_object_list

        from irepa.models.io import save_inference
        from irepa.training.checkpoint import describe_write_failure, is_write_failure

        path = self.snapshot_path(self.step)
        spec = self.snapshot_spec
        self.settle_guard()
        self._check_weights_finite("EMA snapshot")
        error: str | None = None
        if self.is_main:
            try:
                save_inference(
                    path,
                    self.emas[spec.module].module,
                    model_name=spec.model_name,
                    model_kwargs=spec.model_kwargs,
                    metadata={
                        "diffusion": dict(spec.diffusion),
                        "space": self.objective.snapshot_space(path) or self.data.space_metadata(),
                        "step": self.step,
                        "ema": True,
                        "config": to_dict(self.config),
                        "extra": {"nimg": self.nimg, "ema_decay": self.config.train.ema_decay},
                    },
                )
            except Exception as exc:
                if not is_write_failure(exc):
                    raise
                # atomic_write already removed its temporary file: no partial snapshot is left behind.
                kept = f"checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else "no file was changed"
                error = (
                    f"could not write EMA snapshot {path} ({describe_write_failure(exc, path.parent)}); {kept}; free "
                    "disk space or fix the folder, then rerun the same command to resume"
                )
        if self.world_size > 1:  # every process raises together instead of the others waiting at the barrier
            error = broadcast_object_list([error])[0]
        if error is not None:
            raise CheckpointError(error)
        if self.is_main:
            self.logger.info(f"EMA snapshot {path}")
        self.last_snapshot = path
        self.accelerator.wait_for_everyone()
        return path

    def save_preview(self) -> Path:
        """Write a grid of EMA samples for the current step, ``previews/step-<step>.png`` (rank 0 samples).

        Objectives whose model lives in another space than the data (``Objective.snapshot_space``, REPA-E) get no
        previews (a warning says so); sample their snapshots with ``irepa sample``.

        The library's generation loop (:mod:`irepa.diffusion.generate`) on the in-memory EMA module with the
        snapshot's diffusion metadata: Euler, 50 steps, CFG 4.0 over the whole interval (the official previews),
        ``train.preview_samples`` class-balanced samples with the same noise at every step (seed ``train.seed``).
        """
        from irepa.diffusion.generate import SamplingSettings, SnapshotSampler
        from irepa.diffusion.samplers import sample_labels
        from irepa.training.objectives import Objective
        from irepa.utils.io import atomic_write

        cfg = self.config
        path = self.run_dir / "previews" / f"step-{self.step:07d}.png"
        if type(self.objective).snapshot_space is not Objective.snapshot_space:
            # The model works in another space than the data (REPA-E): sample its snapshots with irepa sample.
            self.logger.warning(f"previews are not available for objective {cfg.objective.name!r}; skipped")
            return path
        if self.is_main:
            spec = self.snapshot_spec
            space = self.data.space_metadata()
            if space["kind"] == "latent" and self._preview_decode is None:
                from irepa.data.vae import snapshot_decoder

                self._preview_decode = snapshot_decoder(space, device=self.device)[0]
            model = self.emas[spec.module].module
            sampler = SnapshotSampler(model, dict(spec.diffusion), space, self._preview_decode, self.device)
            n = cfg.train.preview_samples
            labels = (
                sample_labels(n, sampler.num_classes, "balanced", cfg.train.seed)
                if sampler.num_classes > 0
                else torch.zeros(n, dtype=torch.long)
            )
            guided = sampler.null_label is not None
            settings = SamplingSettings(
                sampler="euler", steps=50, cfg_scale=4.0 if guided else 1.0, seed=cfg.train.seed
            )
            images = sampler.generate(range(n), labels, settings).images  # (n, 3, H, W) uint8
            from PIL import Image

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "wb") as f:
                Image.fromarray(_grid(images)).save(f, format="PNG")
            self.logger.info(f"preview {path}")
        self.accelerator.wait_for_everyone()
        return path

    def _resume(self) -> bool:
        """Load the newest readable checkpoint, if any. Returns whether training resumes."""
        warnings: list[str] = []
        loaded = self.checkpoints.load_latest(warn=warnings.append)
        if loaded is None:
            return False
        self.accelerator.wait_for_everyone()
        if self.is_main:
            for step in loaded.skipped:
                self.checkpoints.quarantine(step)
        old_config = yaml.safe_load(loaded.texts.get("config.yaml", "")) or {}
        check_resume_compatible(old_config, self.config, where=f"checkpoint {loaded.path}")
        where = f"checkpoint {loaded.path}"
        parts = [(name, module) for name, module in self.modules.items()]
        parts += [(f"ema.{name}", ema.module) for name, ema in self.emas.items()]
        for name, module in parts:
            if name not in loaded.tensors:
                raise CheckpointError(f"{where} has no {name!r} state (it was trained with another recipe)")
            check_state_dict(module, loaded.tensors[name], f"{name} from {where}")
            module.load_state_dict(loaded.tensors[name])
        for name, optimizer in self.optimizers.items():
            try:
                optimizer.load_state_dict(loaded.objects[f"optimizer.{name}"])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"optimizer {name!r} state in {where} does not match the model: {exc}") from exc
        state = loaded.objects["trainer"]
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        self.generator.set_state(state["generator"])
        self.guard.load_state_dict(state["guard"])
        self.data.load_state_dict(state["data"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        else:
            warnings.append(
                f"the checkpoint was written by {len(rng)} process(es), this run has {self.world_size}: the global "
                "RNG streams are re-seeded (data order, noise and weights resume exactly; anything drawn from the "
                "global RNG does not)"
            )
        self._warnings.extend(warnings)  # after every warning of this method: fit() logs them once the logger exists
        self._resumed_from = loaded
        self.last_checkpoint = loaded.path
        return True


#: Per-sample bookkeeping of a batch that stays on the host: the target cache and the non-finite warning read it
#: there without waiting for the device.
HOST_KEYS = ("index", "flipped")


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` with its data on ``device`` (asynchronous from pinned memory), :data:`HOST_KEYS` on the host."""
    return {k: v if k in HOST_KEYS else v.to(device, non_blocking=True) for k, v in batch.items()}


def _grid(images: torch.Tensor) -> Any:
    """uint8 images (N, 3, H, W) → one (rows·(H+1) − 1, cols·(W+1) − 1, 3) uint8 mosaic, about square."""
    n, _, h, w = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    canvas = torch.zeros(rows * (h + 1) - 1, cols * (w + 1) - 1, 3, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i].permute(1, 2, 0)
    return canvas.numpy()


def _some(values: list[int], limit: int = 16) -> str:
    """``"1, 2, 3"``, or the first ``limit`` values and how many more."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown if len(values) <= limit else f"{shown}, ... ({len(values)} in all)"
