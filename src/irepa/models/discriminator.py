"""The PatchGAN discriminator of taming-transformers (as REPA-E uses it) and the hinge GAN losses.

Architecture (Isola et al.'s pix2pix PatchGAN as in taming-transformers ``NLayerDiscriminator``, 3 layers, 64 base
channels), kernel 4, padding 1, LeakyReLU(0.2), BatchNorm in the middle layers, no bias before a BatchNorm::

    main.0   Conv(3 → 64, stride 2) + bias      main.1  LeakyReLU
    main.2   Conv(64 → 128, stride 2)           main.3  BatchNorm   main.4  LeakyReLU
    main.5   Conv(128 → 256, stride 2)          main.6  BatchNorm   main.7  LeakyReLU
    main.8   Conv(256 → 512, stride 1)          main.9  BatchNorm   main.10 LeakyReLU
    main.11  Conv(512 → 1, stride 1) + bias     → a (B, 1, h, w) map of patch logits

The module and key names are the official ones (``main.N.*``), so REPA-E's ``*-discriminator-ckpt.pt`` files and
the ``discriminator`` entry of its training dicts load as they are. Initialisation (taming ``weights_init``): conv
weights N(0, 0.02) (conv biases keep PyTorch's default), BatchNorm weights N(1, 0.02) and biases 0.

Losses (taming ``hinge_d_loss``; REPA-E's generator term)::

    d_loss = ½ (mean relu(1 − D(real)) + mean relu(1 + D(fake)))        g_loss = −mean D(fake)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from irepa.errors import IrepaError

__all__ = ["PatchDiscriminator", "generator_hinge_loss", "hinge_d_loss", "load_discriminator_state"]


class PatchDiscriminator(nn.Module):
    """Taming's PatchGAN discriminator (official key layout ``main.N.*``), initialised as the official code does.

    Args:
        in_channels: Image channels.
        base_channels: Channels of the first conv (``ndf``, 64).
        num_layers: Strided conv layers (3); channels double per layer up to 8 × ``base_channels``.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise IrepaError(f"the discriminator needs at least one layer, got num_layers={num_layers}")
        self.config = {"in_channels": in_channels, "base_channels": base_channels, "num_layers": num_layers}
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1  # the last middle layer keeps the resolution
            layers += [
                nn.Conv2d(base_channels * prev, base_channels * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(base_channels * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (see the module docstring)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch logits.

        Args:
            images: ``(B, C, H, W)``, float (REPA-E feeds [−1, 1]).

        Returns:
            ``(B, 1, h, w)`` logits, ``h ≈ H / 2^(num_layers) − 2``.
        """
        return self.main(images)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``½ (mean relu(1 − real) + mean relu(1 + fake))``, a float32 scalar."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def generator_hinge_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator GAN term ``−mean D(fake)``, a float32 scalar."""
    return -logits_fake.float().mean()


def load_discriminator_state(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read discriminator weights: a REPA-E ``*-discriminator-ckpt.pt``, a safetensors file, or a state dict.

    The file goes through the allow-listed reader of :mod:`irepa.models.official`; ``discriminator.``,
    ``module.`` and ``_orig_mod.`` prefixes are stripped.

    Raises:
        IrepaError: Unreadable file or not a state dict of tensors.
    """
    if isinstance(source, Mapping):
        state = dict(source)
        where = "the discriminator state"
    else:
        path = Path(source)
        where = f"discriminator weights {str(path)!r}"
        if path.suffix == ".safetensors":
            from irepa.utils.io import load_tensor_file

            state = load_tensor_file(path)
        else:
            from irepa.models.official import read_checkpoint_file

            state = read_checkpoint_file(path)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IrepaError(f"{where} is not a state dict of tensors")
    for prefix in ("discriminator.", "module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)
