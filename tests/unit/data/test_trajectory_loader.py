"""Offline trajectories (launchers/dump_trajectories.py) read back: conditions inline, exact resume, and a dump made for
another student grid or latent shape refused with both named."""

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch

from ard_scale.config.data import DataConfig
from ard_scale.data.trajectories import trajectory_loader
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.models.teachers import build_teacher
from ard_scale.trainer.trajectories import check_offline_dump

LAUNCHER = Path(__file__).resolve().parents[3] / "launchers" / "dump_trajectories.py"


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> Path:
    """10 class-conditional trajectories (S=2, latent (4, 8, 8)) in chunks of 4: three MDS chunk folders."""
    root = tmp_path_factory.mktemp("dump")
    build_teacher("dit", "debug", seed=3).model.save_pretrained(root / "teacher")
    spec = importlib.util.spec_from_file_location("dump_trajectories", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--teacher", str(root / "teacher"), "--out", str(root / "out"), "--num-samples", "10", "--chunk-size", "4",
            "--batch-size", "5", "--steps", "2", "--substeps", "2", "--guidance", "1", "--device", "cpu"]  # fmt: skip
    module.main(argv)
    return root / "out"


def _config(path: Path, **kw) -> DataConfig:
    return DataConfig(format="mds", trajectory_path=str(path), batch_size=3, resolution=8, num_workers=0, seed=5, **kw)


def test_offline_trajectories_carry_their_condition_and_resume_exactly(dump, mds_env):
    loader = trajectory_loader(_config(dump, num_epochs=2), rank=0, world_size=1)
    assert loader.sample_shape() == (3, 4, 8, 8) and loader.condition_kind() == "labels"
    batches = list(loader)
    seeds = [s for b in batches for s in b["seeds"].tolist()]
    assert sorted(seeds[:10]) == list(range(10)) and sorted(seeds[10:]) == list(range(10))  # every sample, per epoch
    first = batches[0]
    assert first["states"].shape == (3, 3, 4, 8, 8) and first["states"].dtype == torch.float32
    assert first["labels"].tolist() == [s % 1000 for s in first["seeds"].tolist()]  # sample i: class i mod 1000

    for k in (2, 5):  # inside epoch 0, and inside epoch 1
        head = trajectory_loader(_config(dump, num_epochs=2), rank=0, world_size=1)
        taken = [b["seeds"].tolist() for b in itertools.islice(head, k)]
        state = head.state_dict()
        del head
        tail = trajectory_loader(_config(dump, num_epochs=2), rank=0, world_size=1)
        tail.load_state_dict(state)
        rest = [b["seeds"].tolist() for b in tail]
        assert taken + rest == [b["seeds"].tolist() for b in batches], k


def test_a_dump_for_another_recipe_is_refused_naming_both(dump, mds_env):
    loader = trajectory_loader(_config(dump), rank=0, world_size=1)
    args = (loader.meta, loader.sample_shape(), loader.condition_kind())
    check_offline_dump(*args, path=str(dump), student_times=VPSchedule().grid(2).tolist(), latent_shape=(4, 8, 8),
                       family="dit")  # fmt: skip
    with pytest.raises(ValueError) as e:
        check_offline_dump(*args, path=str(dump), student_times=VPSchedule().grid(4).tolist(), latent_shape=(4, 16, 16),
                           family="dit")  # fmt: skip
    msg = str(e.value)
    assert "the dump has 2 steps" in msg and "student.num_steps=4" in msg  # the grid, both sides
    assert "(3, 4, 8, 8)" in msg and "(5, 4, 16, 16)" in msg  # the shape, both sides
    assert "dump_trajectories.py" in msg
    with pytest.raises(ValueError, match="teacher.family='pixart' needs text"):
        check_offline_dump(*args, path=str(dump), student_times=VPSchedule().grid(2).tolist(),
                           latent_shape=(4, 8, 8), family="pixart")  # fmt: skip


def test_a_dump_of_another_teacher_sampler_is_refused_naming_both(dump, mds_env):
    """The dump (2 substeps, ddim, guidance 1) trained silently under a recipe with another guidance, solver and
    substeps: the run's config, export and evaluation then claim a sampler its trajectories were not made with."""
    loader = trajectory_loader(_config(dump), rank=0, world_size=1)
    args = (loader.meta, loader.sample_shape(), loader.condition_kind())
    kw = dict(path=str(dump), student_times=VPSchedule().grid(2).tolist(), latent_shape=(4, 8, 8), family="dit")
    same = {"teacher_grid": VPSchedule().grid(4).tolist(), "solver": "ddim", "guidance_scale": 1.0,
            "guided_channels": None}  # fmt: skip
    check_offline_dump(*args, **kw, sampler=same)
    other = {"teacher_grid": VPSchedule().grid(6).tolist(), "solver": "euler", "guidance_scale": 4.5,
             "guided_channels": None}  # fmt: skip
    with pytest.raises(ValueError) as e:
        check_offline_dump(*args, **kw, sampler=other)
    msg = str(e.value)
    assert "diffusion.guidance_scale: the dump has 1.0, the recipe 4.5" in msg
    assert "diffusion.solver: the dump has 'ddim', the recipe 'euler'" in msg
    assert "the dump's teacher took 4 steps, the recipe's takes 6" in msg and "dump_trajectories.py" in msg


def test_a_dump_solved_by_another_teachers_weights_is_refused(dump, mds_env, tmp_path):
    """meta.json records which weights solved the trajectories: the same folder (or a copy of it) passes; another
    teacher of the same architecture, or a named size drawn from another seed, is refused."""
    import shutil

    from ard_scale.models.teachers import teacher_identity

    loader = trajectory_loader(_config(dump), rank=0, world_size=1)
    args = (loader.meta, loader.sample_shape(), loader.condition_kind())
    kw = dict(path=str(dump), student_times=VPSchedule().grid(2).tolist(), latent_shape=(4, 8, 8), family="dit")
    shutil.copytree(dump.parent / "teacher", tmp_path / "copy")
    build_teacher("dit", "debug", seed=4).model.save_pretrained(tmp_path / "other")  # same shapes, other weights
    for folder in (dump.parent / "teacher", tmp_path / "copy"):
        check_offline_dump(*args, **kw, sampler={"teacher_identity": teacher_identity(folder, "dit", None, None)})
    with pytest.raises(ValueError, match=r"the teacher \(teacher.path's weights, or teacher.size and train.seed\)"):
        other = teacher_identity(tmp_path / "other", "dit", None, None)
        check_offline_dump(*args, **kw, sampler={"teacher_identity": other})
    # a named size cannot be told from a folder (the folder may hold its weights): not compared; two seeds can
    check_offline_dump(*args, **kw, sampler={"teacher_identity": teacher_identity(None, "dit", "debug", 3)})
    drawn = {**loader.meta, "teacher_identity": teacher_identity(None, "dit", "debug", 0)}
    with pytest.raises(ValueError, match="the dump has {'family': 'dit', 'size': 'debug', 'seed': 0}, the recipe"):
        check_offline_dump(
            drawn, *args[1:], **kw, sampler={"teacher_identity": teacher_identity(None, "dit", "debug", 7)}
        )


def test_a_folder_that_is_not_a_dump_is_a_clear_error(tmp_path, mds_env):
    with pytest.raises(ValueError, match="no meta.json"):
        trajectory_loader(_config(tmp_path), rank=0, world_size=1)
