"""A replay cache saved mid-cycle is read back from the rank file onto the CPU (safe_load's map_location): the resumed
source must hand its states and condition to the student on the run's device, as the cycle's first step did. On a
CUDA run the CPU copies met a CUDA student (device mismatch at the first resumed step). The "meta" device stands in
for CUDA here: what matters is that the cached tensors land on `device`, whatever it is."""

import torch

from ard_scale.checkpoint.safe_load import safe_load
from ard_scale.diffusion.condition import Condition
from ard_scale.trainer.trajectories import NoiseSeeds, ReplayTrajectories


def replay_source(device) -> ReplayTrajectories:
    return ReplayTrajectories(
        None,
        None,
        None,
        seeds=NoiseSeeds(0, 0, 1, 1, 2),
        latent_shape=(4, 8, 8),
        num_student_steps=4,
        diffusion=None,
        replay_times=2,
        device=device,
    )


def test_a_resumed_replay_cache_is_on_the_runs_device(tmp_path):
    saved = replay_source("cpu")
    states = torch.randn(2, 5, 4, 8, 8)
    cond = Condition(text=torch.randn(2, 3, 6), text_mask=torch.ones(2, 3, dtype=torch.long))
    saved.cache, saved.cycle_start = {0: (states, cond)}, 2
    torch.save({"trajectories": saved.state_dict()}, tmp_path / "rank_00000.pt")

    resumed = replay_source(torch.device("meta"))
    resumed.load_state_dict(safe_load(tmp_path / "rank_00000.pt")["trajectories"])
    got_states, got_cond = resumed({"captions": ["unused on a reuse step"] * 2}, step=3)  # mid-cycle: the cache
    assert got_states.device.type == "meta" and got_states.shape == states.shape
    assert got_cond.text.device.type == "meta" and got_cond.text_mask.device.type == "meta"
