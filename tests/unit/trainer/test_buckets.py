"""data.buckets distils on PixArt-Σ's aspect-ratio buckets: each batch's teacher trajectory takes the size of its
images' bucket (not data.resolution's square), and the recipe check refuses buckets a teacher or setting cannot
follow: a fixed positional embedding (DiT), offline dumps (one size), a dynamic shift (a grid per token count), and
replay in the GAN stage (the replayed states and the new batch's reals would be different buckets)."""

import pytest
import torch

from ard_scale.config import ConfigError, load_config
from ard_scale.config.paths import check_paths
from ard_scale.data.transforms import bucket_latent_sizes, bucket_table
from ard_scale.diffusion.trajectory import teacher_trajectory
from ard_scale.trainer.build import bucket_sizes, build_conditioner, build_schedule, build_teacher_model, latent_shape
from ard_scale.trainer.trajectories import NoiseSeeds, OnlineTrajectories
from ard_scale.utils.launch import ROOT

T2I = ROOT / "recipes" / "tiny_t2i_cpu.yaml"  # PixArt, 32 px images, 8×8 latents (the debug VAE downsamples by 4)


def problems(recipe, *overrides):
    try:
        check_paths(load_config(recipe, list(overrides)))
    except ConfigError as e:
        return e.problems
    return []


def test_the_recipe_check_refuses_buckets_the_run_cannot_follow():
    assert problems(T2I, "data.buckets=true") == []  # PixArt takes every bucket around its square
    [dit] = problems(ROOT / "recipes" / "tiny_cpu.yaml", "data.buckets=true")
    non_square = sum(h != w for h, w in bucket_table(32).values())
    assert dit.startswith(f"data.buckets: this dit teacher does not take {non_square} of the aspect-ratio buckets")
    assert "set data.buckets=false" in dit
    [flux] = problems(ROOT / "recipes" / "tiny_flux_cpu.yaml", "data.buckets=true")
    assert flux.startswith("data.buckets: diffusion.dynamic_shift sets the shift from the image token count")
    assert problems(ROOT / "recipes" / "tiny_flux_cpu.yaml", "data.buckets=true", "diffusion.dynamic_shift=false") == []
    offline = ("train.trajectory_source=offline", "data.trajectory_path=/nonexistent")
    assert any(p.startswith("data.buckets: offline trajectories keep the one size") for p in
               problems(T2I, "data.buckets=true", *offline))  # fmt: skip
    gan = ("gan.enabled=true", "gan.warmup_steps=1", "train.trajectory_source=replay", "train.replay_times=2")
    [replay] = problems(T2I, "data.buckets=true", *gan)
    assert replay.startswith("data.buckets: with gan.enabled and train.trajectory_source 'replay'")
    assert problems(T2I, "data.buckets=true", *gan[:2]) == []  # online GAN: each step's reals are its own bucket


def test_a_bucketed_batch_gets_a_teacher_trajectory_of_its_own_size():
    cfg = load_config(T2I, ["data.buckets=true"])
    teacher = build_teacher_model(cfg)
    shape, sizes = latent_shape(cfg, teacher), bucket_sizes(cfg, teacher)
    assert shape == (4, 8, 8) and sizes == bucket_latent_sizes(32, 4) and (4, 12) in sizes
    schedule, conditioner = build_schedule(cfg, teacher.patch_size), build_conditioner(cfg, teacher)
    d = cfg.diffusion
    seeds = NoiseSeeds(cfg.train.seed, rank=1, world_size=2, grad_accum=1, batch_size=cfg.data.batch_size)

    def source(bucket_downsample):
        return OnlineTrajectories(teacher, schedule, conditioner, seeds=seeds, latent_shape=shape,
                                  num_student_steps=cfg.student.num_steps, diffusion=d,
                                  bucket_downsample=bucket_downsample)  # fmt: skip

    batch = {"images": torch.zeros(2, 3, 16, 48), "captions": ["a wide one", "another"], "keys": ["a", "b"]}
    states, cond = source(4)(batch, step=3)
    assert states.shape == (2, cfg.student.num_steps + 1, 4, 4, 12)  # the batch's bucket, in latents
    expected = teacher_trajectory(
        teacher, schedule, cond, latent_shape=(4, 4, 12), seeds=seeds(3, 2), null_cond=conditioner(batch)[1],
        guidance_scale=d.guidance_scale, num_student_steps=cfg.student.num_steps, substeps=d.substeps,
        solver=d.solver, record=d.record,
    ).states  # fmt: skip
    assert torch.equal(states, expected)
    square, _ = source(None)(batch, step=3)  # without buckets: data.resolution's square, whatever the images
    assert square.shape == (2, cfg.student.num_steps + 1, 4, 8, 8)


def test_buckets_a_teacher_cannot_take_are_refused_when_the_run_is_built():
    cfg = load_config(ROOT / "recipes" / "tiny_cpu.yaml", ["data.buckets=true"])
    with pytest.raises(ValueError, match="data.buckets: this dit teacher does not take"):
        bucket_sizes(cfg, build_teacher_model(cfg))
