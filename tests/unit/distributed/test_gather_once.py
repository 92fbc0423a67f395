"""`gather_once` (zero.gather_teacher_once) on a real frozen ZeRO-3 teacher engine, one process: the teacher's
parameters stay gathered through every solver step of a trajectory, and are partitioned again after it.

DeepSpeed's ZeRO-3 hooks release each submodule's parameters after its forward, and a `GatheredParameters` block does
not stop them: the first solver step gave the gathered teacher back and every later step gathered it again, so the
option paid a full all-gather on top of the per-step ones it promised to replace. Here every parameter is one the
hooks release (persistence threshold 0), as a real teacher's large weights are."""

import pytest
from one_process import run_child

CHILD = """
import json
import torch
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.diffusion.trajectory import teacher_trajectory
from ard_scale.distributed.engines import build_frozen_engine, frozen_ds_config, gather_once, init_distributed
from ard_scale.models.teachers import build_teacher

torch.set_num_threads(1)
init_distributed()
teacher = build_teacher("dit", "debug", seed=0, num_embeds_ada_norm=10)
config = frozen_ds_config(micro_batch=2)
config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # every weight released after use
engine = build_frozen_engine(teacher, config)
params = list(engine.module.parameters())


def resident() -> bool:
    return all(p.ds_status == ZeroParamStatus.AVAILABLE for p in params)


out = {}
for name, gather in (("per_step", None), ("once", lambda: gather_once(engine))):
    after_calls = []

    def denoise(x, t, cond):
        y = engine(x, t, cond)
        after_calls.append(resident())
        return y

    traj = teacher_trajectory(
        denoise, VPSchedule(), Condition(labels=torch.tensor([1, 2])), latent_shape=(4, 8, 8), seeds=[3, 4],
        null_cond=Condition(labels=torch.tensor([10, 10])), guidance_scale=1.5, num_student_steps=4, substeps=2,
        **({} if gather is None else {"gather": gather}),
    )
    out[name] = {"after_calls": after_calls, "after": resident(), "states": traj.states.flatten().tolist()}
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def trajectories():
    return run_child(CHILD)


def test_the_teacher_stays_gathered_through_every_solver_step_and_is_partitioned_after(trajectories):
    per_step, once = trajectories["per_step"], trajectories["once"]
    assert len(once["after_calls"]) == 8  # 4 student steps × 2 DDIM sub-steps
    assert not any(per_step["after_calls"])  # without the option each step gives its weights back
    assert all(once["after_calls"])  # with it none is released, so no step gathers them again
    assert not once["after"]  # after the trajectory the teacher is partitioned again: its memory is given back
    assert once["states"] == per_step["states"]  # the same trajectory, bit for bit
