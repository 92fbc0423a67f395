"""`train.trajectory_source` online and replay in one process, on the tiny recipe's real teacher and conditioner:
the noise each micro-batch is solved from, replay's cycles (the teacher at each cycle's first step, its trajectories
reused at the others) and a resume in mid-cycle, which must go on as the uninterrupted run does.
(The 2-rank runs of tests/e2e/test_train_sources.py check the same end to end, at minutes a run.)"""

import pytest
import torch

from ard_scale.checkpoint.safe_load import safe_load
from ard_scale.config import load_config
from ard_scale.diffusion.trajectory import draw_noise
from ard_scale.trainer.build import build_conditioner, build_schedule, build_teacher_model, latent_shape
from ard_scale.trainer.trajectories import NoiseSeeds, build_trajectory_source

REPLAY_TIMES, GRAD_ACCUM, BATCH = 2, 2, 2


@pytest.fixture(scope="module")
def parts():
    cfg = load_config("recipes/tiny_cpu.yaml", ["train.trajectory_source=replay", f"train.replay_times={REPLAY_TIMES}"])
    teacher = build_teacher_model(cfg)
    return cfg, teacher, build_schedule(cfg), build_conditioner(cfg, teacher), latent_shape(cfg, teacher)


def seeds() -> NoiseSeeds:
    return NoiseSeeds(seed=0, rank=0, world_size=1, grad_accum=GRAD_ACCUM, batch_size=BATCH)


def source(parts, kind: str):
    cfg, teacher, schedule, conditioner, shape = parts
    return build_trajectory_source(
        kind, teacher, schedule, conditioner, replay_times=REPLAY_TIMES, seeds=seeds(), latent_shape=shape,
        num_student_steps=cfg.student.num_steps, diffusion=cfg.diffusion, guide=teacher.spec.guide,
    )  # fmt: skip


def batch(step: int, micro: int) -> dict:
    """Labels of their own for every (step, micro-batch), so a trajectory shows which batch it was solved for."""
    return {"labels": torch.tensor([(GRAD_ACCUM * step + micro) % 10, 9])}


def test_each_micro_batch_is_solved_from_the_noise_of_its_own_position(parts):
    """The trajectory starts from the noise of NoiseSeeds(step, n, micro): micro-batch 1 of a step drew micro-batch
    0's noise when the micro-batch was not passed on, so grad_accum=2 trained twice on one noise per step."""
    shape, online = parts[-1], source(parts, "online")
    same = {"labels": torch.tensor([4, 9])}  # the same condition for both: only the noise tells them apart
    for step in (0, 3):
        for micro in range(GRAD_ACCUM):
            states, _ = online(same, step, micro)
            assert torch.equal(states[:, 0], draw_noise(seeds()(step, BATCH, micro), shape)), (step, micro)


def test_replay_solves_at_each_cycles_first_step_and_a_mid_cycle_resume_goes_on_as_the_run_did(parts, tmp_path):
    online, replay = source(parts, "online"), source(parts, "replay")
    got, solved = {}, []
    for step in range(5):
        for micro in range(GRAD_ACCUM):
            got[step, micro] = replay(batch(step, micro), step, micro)
            assert replay.replayed == (step % REPLAY_TIMES != 0), (step, micro)
        solved.append(replay.num_solved)
        if step == 2:  # a checkpoint in mid-cycle (steps 2-3), through the rank file as the trainer writes it
            torch.save({"trajectories": replay.state_dict()}, tmp_path / "rank_00000.pt")
    assert solved == [2, 2, 4, 4, 6]  # the teacher runs at steps 0, 2 and 4 only, once per micro-batch
    for (step, micro), (states, cond) in got.items():
        first = step - step % REPLAY_TIMES
        if step == first:  # what `online` trains on at that step: the batch's own condition and noise
            reference, reference_cond = online(batch(step, micro), step, micro)
            assert torch.equal(states, reference) and torch.equal(cond.labels, reference_cond.labels), (step, micro)
        else:  # the cycle's first step's pair of the same micro-batch, again
            assert states is got[first, micro][0] and cond is got[first, micro][1], (step, micro)

    resumed = source(parts, "replay")
    resumed.load_state_dict(safe_load(tmp_path / "rank_00000.pt")["trajectories"])
    for step in (3, 4):
        for micro in range(GRAD_ACCUM):
            states, cond = resumed(batch(step, micro), step, micro)
            assert torch.equal(states, got[step, micro][0]), (step, micro)
            assert torch.equal(cond.labels, got[step, micro][1].labels), (step, micro)
    assert resumed.num_solved == 2  # step 3 reused the saved cycle; step 4 began a new one
