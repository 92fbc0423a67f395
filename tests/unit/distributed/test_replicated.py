"""The replicated discriminator heads' optimizer state on one process (the 2-rank behaviour: tests/distributed)."""

import torch
from torch import nn

from ard_scale.distributed.replicated import ReplicatedModule


def trained(lr: float, betas=(0.0, 0.99)) -> ReplicatedModule:
    torch.manual_seed(0)
    heads = ReplicatedModule(nn.Linear(3, 2), lr=lr, betas=betas)
    heads.module(torch.randn(4, 3)).square().sum().backward()
    heads.step()
    return heads


def test_a_resume_keeps_the_moments_and_takes_this_runs_lr_and_betas():
    saved = trained(1e-3).state_dict()
    resumed = ReplicatedModule(nn.Linear(3, 2), lr=1e-5, betas=(0.5, 0.9))  # gan.d_lr / gan.d_betas changed
    resumed.load_state_dict(saved)
    group = resumed.optimizer.param_groups[0]
    assert group["lr"] == 1e-5 and tuple(group["betas"]) == (0.5, 0.9)
    assert torch.equal(resumed.module.weight, saved["module"]["weight"])
    moments = resumed.optimizer.state[resumed.module.weight]
    assert torch.equal(moments["exp_avg_sq"], saved["optimizer"]["state"][0]["exp_avg_sq"]) and moments["step"] == 1
    same = ReplicatedModule(nn.Linear(3, 2), lr=1e-3)  # an unchanged recipe resumes exactly as saved
    same.load_state_dict(saved)
    assert same.optimizer.state_dict()["param_groups"] == saved["optimizer"]["param_groups"]
