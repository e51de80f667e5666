"""Test helpers: an independent latent-diffusion (LDM) VAE in REPA-E's key layout, and the taming PatchGAN.

Written from the documented module tree (prior-implementations §4 and §7: ``encoder.down.N.block.M.*``,
``down.N.attn.M.{norm,q,k,v,proj_out}``, ``down.N.downsample.conv`` with (0, 1, 0, 1) padding, ``mid.block_1``,
``mid.attn_1``, ``mid.block_2``, ``norm_out``, ``conv_out``, ``quant_conv``, ``post_quant_conv``; GroupNorm(32, eps
1e-6), swish; the decoder's ``up`` list indexed from the highest resolution, with one more block per level), not
from irepa's code, so the conversion tests are real cross-checks. Not a test module; imported by path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class Resnet(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)  # (B, HW, C)
        k = self.k(h).reshape(b, c, -1)  # (B, C, HW)
        v = self.v(h).reshape(b, c, -1)
        w = torch.softmax(q @ k * c**-0.5, dim=-1)  # (B, HW_q, HW_k)
        out = (v @ w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class LdmVAE(nn.Module):
    """A KL autoencoder with the LDM module tree; ``attn_levels`` are the levels that carry attention blocks."""

    def __init__(self, *, ch=32, ch_mult=(1, 2), num_res_blocks=1, z=4, attn_levels=(), mid_attn=True) -> None:
        super().__init__()
        self.num_res_blocks, self.levels, self.mid_attn = num_res_blocks, len(ch_mult), mid_attn
        enc = nn.Module()
        enc.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        enc.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(Resnet(cin, ch * m))
                cin = ch * m
                if i in attn_levels:
                    level.attn.append(Attn(cin))
            if i != len(ch_mult) - 1:
                level.downsample = nn.Module()
                level.downsample.conv = nn.Conv2d(cin, cin, 3, stride=2)
            enc.down.append(level)
        enc.mid = nn.Module()
        enc.mid.block_1 = Resnet(cin, cin)
        if mid_attn:
            enc.mid.attn_1 = Attn(cin)
        enc.mid.block_2 = Resnet(cin, cin)
        enc.norm_out, enc.conv_out = _norm(cin), nn.Conv2d(cin, 2 * z, 3, padding=1)
        self.encoder = enc

        dec = nn.Module()
        dec.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        dec.mid = nn.Module()
        dec.mid.block_1 = Resnet(cin, cin)
        if mid_attn:
            dec.mid.attn_1 = Attn(cin)
        dec.mid.block_2 = Resnet(cin, cin)
        ups = []
        for i in reversed(range(len(ch_mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(Resnet(cin, ch * ch_mult[i]))
                cin = ch * ch_mult[i]
                if i in attn_levels:
                    level.attn.append(Attn(cin))
            if i != 0:
                level.upsample = nn.Module()
                level.upsample.conv = nn.Conv2d(cin, cin, 3, padding=1)
            ups.insert(0, level)
        dec.up = nn.ModuleList(ups)
        dec.norm_out, dec.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)
        self.decoder = dec
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def _mid(self, side, h):
        h = side.mid.block_1(h)
        if self.mid_attn:
            h = side.mid.attn_1(h)
        return side.mid.block_2(h)

    def encode(self, x):
        """(mean, logvar) of the posterior (logvar clamped to [-30, 20])."""
        e = self.encoder
        h = e.conv_in(x)
        for level in e.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample.conv(F.pad(h, (0, 1, 0, 1)))
        h = e.conv_out(F.silu(e.norm_out(self._mid(e, h))))
        mean, logvar = self.quant_conv(h).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        d = self.decoder
        h = self._mid(d, d.conv_in(self.post_quant_conv(z)))
        for i in reversed(range(self.levels)):
            level = d.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return d.conv_out(F.silu(d.norm_out(h)))


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter distinct random values (so that a wrong key mapping changes the outputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_weight = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm_weight else 0.05 * noise)
    return module
