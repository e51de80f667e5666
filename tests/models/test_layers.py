import math

import numpy as np
import pytest
import torch
from official_layout import mae_pos_embed
from torch import nn

from irepa.models.layers import Attention, Mlp, math_attention, sincos_pos_embed_2d, timestep_embedding


def test_timestep_embedding_is_cos_then_sin_of_raw_t():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t, 8)
    freqs = [10000 ** (-i / 4) for i in range(4)]
    expected = [[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expected))
    assert emb.dtype == torch.float32
    assert timestep_embedding(t.bfloat16(), 7).shape == (3, 7)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (16, 16)])
def test_pos_embed_matches_the_mae_recipe(grid):
    ours = sincos_pos_embed_2d(64, grid)
    reference = torch.from_numpy(mae_pos_embed(64, *grid)).float()
    assert ours.shape == (grid[0] * grid[1], 64)
    torch.testing.assert_close(ours, reference, atol=0, rtol=0)


def test_pos_embed_rejects_width_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(6, (2, 2))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_matches_timm_attention(qk_norm):
    from timm.layers import Attention as TimmAttention

    torch.manual_seed(0)
    ours = Attention(32, 4, qkv_bias=True, qk_norm=qk_norm)
    theirs = TimmAttention(32, num_heads=4, qkv_bias=True, qk_norm=qk_norm, norm_layer=nn.LayerNorm)
    if qk_norm:  # non-trivial norm parameters
        for p in (ours.q_norm.weight, ours.k_norm.bias):
            nn.init.normal_(p)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_mlp_matches_timm_mlp_keys_and_values():
    from timm.layers import Mlp as TimmMlp

    ours = Mlp(16, 64)
    theirs = TimmMlp(16, 64, act_layer=lambda: nn.GELU(approximate="tanh"))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(ours(x), theirs(x))


def test_attention_supports_forward_mode_ad_on_the_math_backend():
    attn = Attention(16, 2).double()
    x, tangent = torch.randn(1, 6, 16, dtype=torch.float64), torch.randn(1, 6, 16, dtype=torch.float64)
    with math_attention():
        _, jvp = torch.func.jvp(attn, (x,), (tangent,))
    eps = 1e-6
    finite = (attn(x + eps * tangent) - attn(x - eps * tangent)) / (2 * eps)
    np.testing.assert_allclose(jvp.detach().numpy(), finite.detach().numpy(), atol=1e-6)
