import torch

from irepa.training.ema import EMA


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    net[0].register_buffer("fixed", torch.arange(3.0))
    return net


def test_starts_as_copy_and_is_frozen():
    net = _net()
    ema = EMA(net, decay=0.9999)
    for (n1, p1), (n2, p2) in zip(net.state_dict().items(), ema.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    net[0].weight.data.add_(1.0)
    assert not torch.equal(net[0].weight, ema.module[0].weight)  # a copy, not a view


def test_update_matches_formula_over_steps():
    net = _net()
    ema = EMA(net, decay=0.9)
    reference = {k: v.clone() for k, v in net.named_parameters()}
    for step in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * (step + 1))
        net[1].running_mean.add_(1.0)
        ema.update(net)
        for name, p in net.named_parameters():
            reference[name] = 0.9 * reference[name] + 0.1 * p.detach()
    for name, p in ema.module.named_parameters():
        torch.testing.assert_close(p, reference[name], rtol=1e-6, atol=1e-6)
    # buffers are copied, not averaged
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)


def test_decay_zero_copies_and_state_round_trip():
    net = _net()
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.mul_(3)
    ema.update(net, decay=0.0)
    assert torch.equal(ema.module[0].weight, net[0].weight)
    other = EMA(_net(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.module[0].weight, net[0].weight)


def test_ema_is_float32_for_low_precision_models():
    net = _net().to(torch.bfloat16)
    ema = EMA(net, decay=0.99)
    assert ema.module[0].weight.dtype == torch.float32
    ema.update(net)
    assert ema.module[0].weight.dtype == torch.float32


def test_update_with_a_device_keep_flag_is_bit_identical_or_a_no_op():
    net = _net()
    plain, kept, dropped = (EMA(net, decay=0.9999) for _ in range(3))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net(torch.randn(8, 3))  # moves the BatchNorm running statistics (buffers)
    plain.update(net)
    kept.update(net, keep=torch.tensor(True))
    before = {k: v.clone() for k, v in dropped.state_dict().items()}
    dropped.update(net, keep=torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), kept.state_dict().values()))
    assert all(torch.equal(v, before[k]) for k, v in dropped.state_dict().items())
    assert not torch.equal(plain.state_dict()["1.running_mean"], before["1.running_mean"])
