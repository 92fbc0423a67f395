"""ZeroEMA on a plain module in one process (no DeepSpeed, no process group): the ZeRO 0-2 code path and errors."""

import pytest
import torch
from torch import nn

from ard_scale.distributed.ema import ZeroEMA


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    net.register_buffer("count", torch.tensor(7))
    return net


def test_update_follows_the_formula_and_full_state_dict_loads_strictly():
    net = model()
    ema = ZeroEMA(net, 0.9)
    reference = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 3)).square().mean().backward()
        opt.step()
        ema.update()
        for n, p in net.named_parameters():
            reference[n] = 0.9 * reference[n] + 0.1 * p.detach()
    full = ema.full_state_dict()
    assert sorted(full) == sorted(net.state_dict())
    assert all(full[n].dtype == torch.float32 for n in reference)
    assert max((full[n] - reference[n]).abs().max().item() for n in reference) <= 1e-6
    assert full["count"].item() == 7  # buffers are copied, not averaged
    copy = model()
    copy.load_state_dict(full, strict=True)


def test_a_resume_from_a_checkpoint_without_an_ema_starts_it_from_the_resumed_weights():
    """train.ema_decay switched on at a resume (allow_recipe_change): the EMA was built before the checkpoint's
    weights were loaded, and the resume refused the checkpoint for lacking it; now it restarts from what was loaded."""
    from ard_scale.trainer.loop import restart_ema

    net = model()
    ema = ZeroEMA(net, 0.5)
    ema.update()
    with torch.no_grad():  # what loading the checkpoint does to the student
        for p in net.parameters():
            p.add_(1.0)
    with pytest.warns(UserWarning, match="holds no EMA .*starts from the resumed weights"):
        restart_ema(ema, "step_00000003")
    full = ema.full_state_dict()
    assert all(torch.equal(full[n], p.detach()) for n, p in net.named_parameters()) and ema.num_updates == 0


def test_swapped_in_uses_the_ema_and_restores_raw_weights_even_on_error():
    net = model()
    ema = ZeroEMA(net, 0.5)
    raw = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update()  # ema = raw + 0.5
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="boom"), ema.swapped_in(net) as inner:
        assert inner is net
        for n, p in net.named_parameters():
            assert torch.allclose(p, raw[n] + 0.5)
        raise RuntimeError("boom")
    for n, p in net.named_parameters():
        assert torch.equal(p, raw[n] + 1.0)
    with ema.swapped_in():
        out = net(x)
    reference = model()
    reference.load_state_dict(ema.full_state_dict())
    assert torch.allclose(out, reference(x))


def test_state_dict_round_trip_and_errors_name_the_problem():
    net = model()
    ema = ZeroEMA(net, 0.9)
    ema.update()
    state = ema.state_dict()
    other = ZeroEMA(net, 0.9)
    other.load_state_dict(state)
    assert other.num_updates == 1
    assert all(torch.equal(other.shadow[n], ema.shadow[n]) for n in ema.shadow)
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict({**state, "zero3": True, "world_size": 2})
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({**state, "shadow": {}})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ZeroEMA(net, 1.0)
    with pytest.raises(ValueError, match="the module this EMA tracks"), ema.swapped_in(model()):
        pass
    with pytest.raises(ValueError, match="shape"):
        ema.load_full_state_dict({n: torch.zeros(1) for n in ema.shadow})
