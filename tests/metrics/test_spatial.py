"""Spatial metrics vs independent float64 references written from the definitions (explicit loops over pairs)."""

import json
import math

import numpy as np
import pytest
import torch

from irepa.errors import IrepaError, UnknownNameError
from irepa.metrics import spatial as sp

# ----------------------------------------------------------------------------------------------------------------------
# Reference implementations (float64, one image at a time, loops over token pairs)


def _positions(grid):
    height, width = grid
    return [(t // width, t % width) for t in range(height * width)]


def _cos(x, a, b):
    na = max(np.linalg.norm(x[a]), 1e-8)
    nb = max(np.linalg.norm(x[b]), 1e-8)
    return float(np.dot(x[a], x[b]) / (na * nb))


def _pairs(grid):
    pos = _positions(grid)
    for a, (ra, ca) in enumerate(pos):
        for b, (rb, cb) in enumerate(pos):
            if a != b:
                yield a, b, abs(ra - rb) + abs(ca - cb)


def ref_lds(x, grid, near_ok, far_ok):
    near, far = [], []
    for a, b, d in _pairs(grid):
        if near_ok(d):
            near.append(_cos(x, a, b))
        if far_ok(d):
            far.append(_cos(x, a, b))
    return np.mean(near) - np.mean(far)


def ref_cds(x, grid, dmax):
    g = []
    for delta in range(1, dmax + 1):
        g.append(np.mean([_cos(x, a, b) for a, b, d in _pairs(grid) if d == delta]))
    slope = np.polyfit(np.arange(1, dmax + 1), np.array(g), 1)[0]
    return -slope


def ref_srss(x, grid, mask, near, far):
    pos = _positions(grid)
    fg = [t for t in range(len(pos)) if mask[t]]
    bg = [t for t in range(len(pos)) if not mask[t]]
    if len(fg) < 2 or not bg:
        return math.nan

    def dist(a, b):
        return abs(pos[a][0] - pos[b][0]) + abs(pos[a][1] - pos[b][1])

    values = []
    for a in fg:
        positives = [_cos(x, a, t) for t in fg if 1 <= dist(a, t) <= near]
        negatives = [_cos(x, a, t) for t in bg if dist(a, t) >= far]
        if positives and negatives:
            values.append(np.mean(positives) - np.mean(negatives))
    return np.mean(values) if values else math.nan


def ref_rmsc(x):
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    mean = unit.mean(0)
    return math.sqrt(np.mean([np.sum((u - mean) ** 2) for u in unit]))


# ----------------------------------------------------------------------------------------------------------------------
# Token generators


def random_tokens(batch, grid, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, grid[0] * grid[1], dim, generator=g)


def smooth_tokens(batch, grid, dim=8, seed=0, noise=0.1):
    """Spatially smooth fields: low-frequency sinusoids of the position plus a shared offset and a little noise."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], -1).float()  # (T, 2)
    freq = torch.rand(batch, 2, dim, generator=g) * 0.6
    phase = torch.rand(batch, 1, dim, generator=g) * 6.28
    offset = torch.randn(batch, 1, dim, generator=g) * 0.5
    field = torch.sin(pos @ freq + phase) + offset
    return field + noise * torch.randn(batch, grid[0] * grid[1], dim, generator=g)


def random_masks(batch, grid, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, grid[0], grid[1], dtype=torch.bool)
    for i in range(batch):  # a random rectangle per image
        r0, c0 = torch.randint(0, grid[0] - 2, (2,), generator=g).tolist()
        masks[i, r0 : r0 + 3 + i % 2, c0 : c0 + 3] = True
    return masks.flatten(1)


CASES = [
    pytest.param(random_tokens, (6, 6), id="random-6x6"),
    pytest.param(smooth_tokens, (6, 6), id="smooth-6x6"),
    pytest.param(random_tokens, (5, 8), id="random-5x8"),
    pytest.param(smooth_tokens, (7, 4), id="smooth-7x4"),
]


# ----------------------------------------------------------------------------------------------------------------------
# Equality with the references


@pytest.mark.parametrize(("make", "grid"), CASES)
def test_lds_matches_reference(make, grid):
    x = make(3, grid)
    got = sp.lds(x, grid, near=1, far=6)
    got2 = sp.lds(x, grid, near=2, far=4)
    for i in range(3):
        xi = x[i].double().numpy()
        assert got[i].item() == pytest.approx(ref_lds(xi, grid, lambda d: d == 1, lambda d: d >= 6), abs=1e-5)
        assert got2[i].item() == pytest.approx(ref_lds(xi, grid, lambda d: 1 <= d <= 2, lambda d: d >= 4), abs=1e-5)


@pytest.mark.parametrize(("make", "grid"), CASES)
def test_lds_paper_matches_reference(make, grid):
    x = make(2, grid)
    radius = min(grid) / 2
    got = sp.lds_paper(x, grid)
    for i in range(2):
        ref = ref_lds(x[i].double().numpy(), grid, lambda d: 0 < d < radius, lambda d: d >= radius)
        assert got[i].item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize(("make", "grid"), CASES)
def test_cds_matches_reference(make, grid):
    x = make(3, grid)
    for dmax in (2, 5):
        got = sp.cds(x, grid, dmax=dmax)
        for i in range(3):
            assert got[i].item() == pytest.approx(ref_cds(x[i].double().numpy(), grid, dmax), abs=1e-5)


@pytest.mark.parametrize(("make", "grid"), CASES)
def test_srss_matches_reference(make, grid):
    x = make(4, grid)
    masks = random_masks(4, grid)
    for near, far in ((1, 6), (2, 3)):
        got = sp.srss(x, masks, grid, near=near, far=far)
        for i in range(4):
            ref = ref_srss(x[i].double().numpy(), grid, masks[i].tolist(), near, far)
            if math.isnan(ref):
                assert math.isnan(got[i].item())
            else:
                assert got[i].item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize(("make", "grid"), CASES)
def test_rmsc_matches_reference(make, grid):
    x = make(3, grid)
    got = sp.rmsc(x, grid)
    for i in range(3):
        assert got[i].item() == pytest.approx(ref_rmsc(x[i].double().numpy()), abs=1e-5)


def test_rmsc_near_uniform_tokens_stay_exact():
    # All tokens almost equal: RMSC ~ 1e-3, where the similarity-matrix shortcut would cancel; the direct path runs.
    base = torch.randn(2, 1, 16)
    x = base + 1e-3 * torch.randn(2, 36, 16)
    got = sp.rmsc(x)
    for i in range(2):
        ref = ref_rmsc(x[i].double().numpy())
        assert got[i].item() == pytest.approx(ref, rel=1e-3, abs=1e-7)
    assert sp.rmsc(base.expand(2, 36, 16).contiguous()).abs().max() < 1e-6


def near_uniform_tokens(batch, grid, dim, seed=0, spread=1e-2):
    """A strong shared component per image plus a weak smooth field: pairwise cosines ≈ 0.9999."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], -1).float()
    field = torch.sin(pos @ (torch.rand(batch, 2, dim, generator=g) * 0.6) + torch.rand(batch, 1, dim, generator=g) * 6)
    base = torch.randn(batch, 1, dim, generator=g)
    noise = 0.3 * torch.randn(batch, grid[0] * grid[1], dim, generator=g)
    return base + spread * base.norm(dim=-1, keepdim=True) / dim**0.5 * (field + noise)


def float64_distance_metrics(x, grid, near=1, far=6, dmax=8):
    """LDS and CDS in float64 throughout (vectorized; the loop references above are too slow for 16x16)."""
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    sim = unit @ unit.transpose(1, 2)
    rows = torch.arange(grid[0]).repeat_interleave(grid[1])
    cols = torch.arange(grid[1]).repeat(grid[0])
    dist = (rows[:, None] - rows[None]).abs() + (cols[:, None] - cols[None]).abs()
    lds = sim[:, (dist >= 1) & (dist <= near)].mean(1) - sim[:, dist >= far].mean(1)
    correlogram = torch.stack([sim[:, dist == d].mean(1) for d in range(1, dmax + 1)], 1)
    deltas = torch.arange(1, dmax + 1, dtype=torch.float64)
    centred = deltas - deltas.mean()
    return lds, -(correlogram @ centred) / centred.square().sum()


def test_distance_sums_keep_digits_on_near_uniform_tokens():
    # Every cosine ≈ 0.9999, so LDS and CDS are differences of means close to 1 (LDS ~ 5e-5 here). A float32
    # accumulation over all T² pairs lost 40 % relative on these tokens; the two-stage float64 accumulation stays at
    # the float32 rounding of S itself (~5e-4 relative), like a float64 reference.
    grid = (16, 16)
    x = near_uniform_tokens(4, grid, dim=64)
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    assert (unit @ unit.transpose(1, 2)).min() > 0.999
    lds_ref, cds_ref = float64_distance_metrics(x, grid)
    res = sp.compute(x, metrics=("lds", "cds"))
    assert res.values["lds"].dtype == torch.float32
    torch.testing.assert_close(res.values["lds"].double(), lds_ref, rtol=3e-3, atol=0)
    torch.testing.assert_close(res.values["cds"].double(), cds_ref, rtol=3e-3, atol=0)
    # RMSC on both sides of the direct-form threshold (RMSC 0.01): the similarity-matrix form stays exact too.
    for spread in (3e-3, 1e-2, 3e-2):
        y = near_uniform_tokens(4, grid, dim=64, spread=spread)
        ref = torch.tensor([ref_rmsc(img.double().numpy()) for img in y], dtype=torch.float64)
        torch.testing.assert_close(sp.rmsc(y).double(), ref, rtol=1e-3, atol=0)


def test_srss_undefined_images_are_nan():
    grid = (4, 4)
    x = random_tokens(4, grid)
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[0] = True  # no background
    masks[1, 5] = True  # a single foreground token
    # image 2: no foreground at all
    masks[3, :2] = True  # foreground at (0,0),(0,1): their negatives at d >= 5 do not exist on 4x4 (max d = 6)
    got = sp.srss(x, masks, grid, near=1, far=6)
    assert torch.isnan(got[:3]).all()
    ref = ref_srss(x[3].double().numpy(), grid, masks[3].tolist(), 1, 6)
    assert (math.isnan(ref) and math.isnan(got[3].item())) or got[3].item() == pytest.approx(ref, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Properties


def test_shuffled_tokens_have_no_local_structure():
    grid = (16, 16)
    smooth = smooth_tokens(32, grid, dim=16, noise=0.05)
    g = torch.Generator().manual_seed(1)
    shuffled = torch.stack([img[torch.randperm(256, generator=g)] for img in smooth])
    lds_smooth, lds_shuffled = sp.lds(smooth), sp.lds(shuffled)
    assert lds_smooth.min() > 0.05 and lds_smooth.mean() > 0.2
    assert abs(lds_shuffled.mean().item()) < 0.01
    assert sp.cds(smooth).mean() > 0 and abs(sp.cds(shuffled).mean().item()) < 0.005
    # RMSC ignores positions: identical after shuffling.
    torch.testing.assert_close(sp.rmsc(smooth), sp.rmsc(shuffled))


def test_lds_paper_radii_on_16x16():
    x = smooth_tokens(2, (16, 16))
    torch.testing.assert_close(sp.lds_paper(x), sp.lds(x, near=7, far=8))


def test_prefix_tokens_chunking_and_dtypes():
    grid = (5, 6)
    x = smooth_tokens(5, grid)
    with_cls = torch.cat([torch.randn(5, 2, 8) * 100, x], 1)
    masks = random_masks(5, grid)
    full = sp.compute(x, masks, grid=grid)
    chunked = sp.compute(with_cls, masks, grid=grid, prefix_tokens=2, chunk_size=2)
    for name in ("lds", "cds", "srss", "rmsc"):
        torch.testing.assert_close(full.values[name], chunked.values[name], equal_nan=True)
    as64 = sp.compute(x.double(), masks, grid=grid)
    assert as64.values["lds"].dtype == torch.float64
    torch.testing.assert_close(as64.values["lds"].float(), full.values["lds"], atol=1e-5, rtol=0)
    as_bf16 = sp.compute(x.bfloat16(), masks, grid=grid)
    assert as_bf16.values["lds"].dtype == torch.float32


def test_huge_finite_tokens_do_not_overflow():
    x = random_tokens(2, (4, 4))
    torch.testing.assert_close(sp.lds(x * 1e30, far=3), sp.lds(x, far=3), atol=1e-5, rtol=0)
    torch.testing.assert_close(sp.lds(x * 1e-20, far=3), sp.lds(x, far=3), atol=1e-5, rtol=0)  # no underflow
    torch.testing.assert_close(sp.rmsc(x * 1e30), sp.rmsc(x), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# compute() and results


def test_compute_matches_single_metric_functions():
    grid = (6, 6)
    x = smooth_tokens(4, grid)
    masks = random_masks(4, grid)
    res = sp.compute(x, masks, metrics=("lds", "lds_paper", "cds", "srss", "rmsc"), near=1, far=4, dmax=5)
    torch.testing.assert_close(res.values["lds"], sp.lds(x, near=1, far=4))
    torch.testing.assert_close(res.values["lds_paper"], sp.lds_paper(x))
    torch.testing.assert_close(res.values["cds"], sp.cds(x, dmax=5))
    torch.testing.assert_close(res.values["srss"], sp.srss(x, masks, near=1, far=4), equal_nan=True)
    torch.testing.assert_close(res.values["rmsc"], sp.rmsc(x))
    assert res.grid == (6, 6) and res.num_images == 4
    assert res.settings["lds_paper_near"] == 2 and res.settings["lds_paper_far"] == 3
    assert res.means["lds"] == pytest.approx(res.values["lds"].mean().item())


def test_compute_nan_aware_means_and_json():
    grid = (4, 4)
    x = random_tokens(3, grid)
    masks = random_masks(3, grid)
    masks[1] = False  # excluded image: SRSS NaN
    res = sp.compute(x, masks, far=3, dmax=4)
    assert res.counts["srss"] == 2 and res.counts["lds"] == 3
    valid = res.values["srss"][[0, 2]]
    assert res.means["srss"] == pytest.approx(valid.mean().item())
    payload = json.loads(json.dumps(res.to_dict()))
    assert payload["per_image"]["srss"][1] is None
    assert set(payload["means"]) == {"lds", "cds", "srss", "rmsc"}


def test_compute_default_metrics_and_dict_sources():
    grid = (6, 6)
    x = random_tokens(2, grid)
    res = sp.compute(x)
    assert list(res.values) == ["lds", "cds", "rmsc"]  # no masks: SRSS skipped
    out = sp.compute({"a": x, "b": smooth_tokens(2, (4, 9), dim=5)}, metrics="lds,rmsc", grid=None, far=4)
    assert list(out) == ["a", "b"] and list(out["a"].values) == ["lds", "rmsc"]
    assert out["a"].grid == (6, 6)
    with pytest.raises(IrepaError, match="tokens 'b' have 15 tokens, which is not a square grid"):
        sp.compute({"b": smooth_tokens(2, (3, 5), dim=5)})


def test_compute_dict_with_per_source_masks_and_grids():
    a, b = random_tokens(2, (6, 6)), smooth_tokens(2, (6, 6), dim=5)
    masks = random_masks(2, (6, 6))
    out = sp.compute({"a": a, "b": b}, masks={"a": masks, "b": masks}, far=3)
    torch.testing.assert_close(out["b"].values["srss"], sp.srss(b, masks, far=3), equal_nan=True)
    with pytest.raises(IrepaError, match="no entry for token source 'b'"):
        sp.compute({"a": a, "b": b}, masks={"a": masks})


# ----------------------------------------------------------------------------------------------------------------------
# Masks helpers


def test_masks_to_patches_is_max_pooling():
    pixels = torch.zeros(2, 32, 32, dtype=torch.bool)
    pixels[0, 5, 9] = True  # one pixel in patch (2, 4) of a 16x16 grid (patches of 2x2)
    pixels[1, 16:, :] = True
    patches = sp.masks_to_patches(pixels, (16, 16))
    assert patches.shape == (2, 256) and patches.dtype == torch.bool
    assert patches[0].sum() == 1 and patches[0, 2 * 16 + 4]
    assert patches[1].sum() == 128
    as_png = sp.masks_to_patches(pixels.to(torch.uint8) * 255, (16, 16))
    assert torch.equal(as_png, patches)
    odd = sp.masks_to_patches(torch.ones(1, 30, 45), (4, 6))  # not multiples of the grid
    assert odd.shape == (1, 24) and odd.all()


def test_srss_mask_filter_is_the_paper_rule_at_256_tokens():
    masks = torch.zeros(3, 256, dtype=torch.bool)
    masks[0, :64] = True  # 64 FG, 192 BG: kept
    masks[1, :63] = True  # 63 FG: dropped
    masks[2, :193] = True  # 63 BG: dropped
    assert sp.srss_mask_filter(masks).tolist() == [True, False, False]
    assert sp.srss_mask_filter(masks, min_fg=10, min_bg=10).tolist() == [True, True, True]
    small = torch.zeros(1, 16, dtype=torch.bool)
    small[0, :4] = True  # ceil(16 / 4) = 4
    assert sp.srss_mask_filter(small).tolist() == [True]


# ----------------------------------------------------------------------------------------------------------------------
# Errors


def test_bad_inputs_raise_one_clear_error():
    x = random_tokens(2, (4, 4))
    bad = x.clone()
    bad[1, 3, 2] = float("nan")
    with pytest.raises(IrepaError, match="image 1 contain NaN or Inf"):
        sp.lds(bad, far=3)
    with pytest.raises(IrepaError, match=r"\(B, T, D\)"):
        sp.lds(x[0], far=3)
    with pytest.raises(IrepaError, match="floating point"):
        sp.rmsc(x.long())
    with pytest.raises(IrepaError, match="not a square grid"):
        sp.lds(random_tokens(2, (3, 5)), far=3)
    with pytest.raises(IrepaError, match="has 20 cells but"):
        sp.lds(x, grid=(4, 5), far=3)
    with pytest.raises(IrepaError, match=r"no token pairs at distance >= 7 on a 4x4 grid"):
        sp.lds(x, far=7)
    with pytest.raises(IrepaError, match=r"far \(3\) must be larger than near \(3\)"):
        sp.lds(x, near=3, far=3)
    with pytest.raises(IrepaError, match="dmax=9 exceeds"):
        sp.cds(x, dmax=9)
    with pytest.raises(UnknownNameError, match="did you mean 'lds'"):
        sp.compute(x, metrics=("ldss",))
    with pytest.raises(IrepaError, match="srss needs a foreground mask"):
        sp.compute(x, metrics=("srss",), far=3)
    with pytest.raises(IrepaError, match=r"masks \(2, 15\) do not match"):
        sp.srss(x, torch.zeros(2, 15, dtype=torch.bool), far=3)
    with pytest.raises(IrepaError, match="boolean or 0/1"):
        sp.srss(x, torch.full((2, 16), 0.5), far=3)
    with pytest.raises(IrepaError, match="removes all"):
        sp.lds(x, prefix_tokens=16)
    with pytest.raises(IrepaError, match="chunk_size"):
        sp.lds(x, far=3, chunk_size=0)
    with pytest.raises(IrepaError, match="too small"):
        sp.lds_paper(random_tokens(1, (2, 2)))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    grid = (8, 8)
    x = smooth_tokens(6, grid)
    masks = random_masks(6, grid)
    cpu = sp.compute(x, masks, far=4)
    gpu = sp.compute(x.cuda(), masks.cuda(), far=4)
    for name, values in cpu.values.items():
        assert gpu.values[name].device.type == "cuda"
        torch.testing.assert_close(gpu.values[name].cpu(), values, atol=1e-5, rtol=0, equal_nan=True)
