import pytest
import torch

from pipeline.method.configs import VelocityConfig
from pipeline.method.velocity import VelocityMLP, sinusoidal_embedding


def test_shapes_and_zero_initial_output():
    net = VelocityMLP(VelocityConfig(dim=5, width=32, depth=3))
    x, t = torch.randn(7, 5), torch.rand(7)
    v = net(x, t)
    assert v.shape == (7, 5)
    assert torch.equal(v, torch.zeros_like(v))  # zero-initialised output layer (DiT)
    assert len(net.blocks) == 3 and net.input.out_features == 32


def test_time_conditions_the_output_once_trained():
    torch.manual_seed(0)
    net = VelocityMLP(VelocityConfig(dim=2, width=16, depth=2))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(1, 2).expand(2, 2)
    v = net(x, torch.tensor([0.1, 0.9]))
    assert not torch.allclose(v[0], v[1])


def test_sinusoidal_embedding_is_bounded_and_distinguishes_nearby_times():
    e = sinusoidal_embedding(torch.tensor([0.0, 0.001, 1.0]), 64)
    assert e.shape == (3, 64) and e.abs().max() <= 1
    assert (e[0] - e[1]).norm() > 0.1  # 1000 t: a step of 1e-3 is visible


@pytest.mark.parametrize("bad", [dict(dim=0), dict(dim=2, width=-1), dict(dim=2, frequency_dim=7), dict(dim=2.5)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        VelocityConfig(**bad)


def test_wrong_input_shapes_are_named():
    net = VelocityMLP(VelocityConfig(dim=3, width=8, depth=1))
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        net(torch.randn(4, 2), torch.rand(4))
    with pytest.raises(ValueError, match="t of shape"):
        net(torch.randn(4, 3), torch.rand(3))  # 3 groups do not divide 4 rows
    with pytest.raises(ValueError, match="t of shape"):
        net(torch.randn(4, 3), torch.rand(4, 1))


def test_times_shared_by_groups_of_rows_equal_the_per_row_call_at_a_fraction_of_the_flops():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = VelocityMLP(VelocityConfig(dim=3, width=64, depth=2, frequency_dim=16))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(32, 3), torch.rand(4)  # 4 groups of 8 rows
    with FlopCounterMode(display=False) as grouped_flops:
        grouped = net(x, t)
    with FlopCounterMode(display=False) as per_row_flops:
        per_row = net(x, t.repeat_interleave(8))
    assert torch.allclose(grouped, per_row, atol=1e-5)
    # the time MLP and the modulations run 4 times instead of 32
    assert grouped_flops.get_total_flops() < 0.6 * per_row_flops.get_total_flops()
