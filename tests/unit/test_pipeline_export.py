"""export_pipeline's encoder and VAE overrides say where those weights are (`path`, `size`), never what the student
was trained with: the token count it read and the VAE's latent scaling are the checkpoint recipe's."""

import diffusers
import pytest

from ard_scale.config import dump_yaml, load_config, to_dict
from ard_scale.diffusion.trajectory import diffusers_grid
from ard_scale.pipeline import _scheduler_config, export_pipeline, launcher_command
from ard_scale.trainer.build import build_schedule


@pytest.fixture
def run_dir(tmp_path):
    """A run folder whose latest checkpoint holds its recipe (all an export reads before the overrides' check)."""
    run = tmp_path / "run"
    tag = run / "checkpoints" / "step_00000003"
    tag.mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_00000003")
    dump_yaml(to_dict(load_config("recipes/tiny_t2i_cpu.yaml")), tag / "config.yaml")
    return run


@pytest.mark.parametrize("override", ["text_encoder.max_length=20", "vae.scaling_factor=0.5", "vae.shift_factor=0.1"])
def test_an_override_of_what_the_student_was_trained_with_is_refused_before_anything_is_written(
    run_dir, tmp_path, override
):
    """text_encoder.max_length=20 on a run trained at 8 tokens was taken: the pipeline padded prompts to 20 tokens and
    sampled other images than the checkpoint's student (a latent difference of 3 % of its range on the tiny PixArt)."""
    with pytest.raises(ValueError, match=r"may set only where the encoders and VAE are \(SECTION.path or SECTION.size"):
        export_pipeline(run_dir, tmp_path / "pipe", overrides=["text_encoder.size=debug", override])
    assert not (tmp_path / "pipe").exists()


def test_where_the_encoders_and_vae_are_is_still_taken(run_dir, tmp_path):
    overrides = ["text_encoder.size=debug", "vae.size=null", f"vae.path={tmp_path / 'vae'}"]
    with pytest.raises(ValueError, match="is not a complete checkpoint"):  # past the overrides: to the weights
        export_pipeline(run_dir, tmp_path / "pipe", overrides=overrides)


@pytest.mark.parametrize("recipe", ["recipes/tiny_t2i_cpu.yaml", "recipes/tiny_sd3_cpu.yaml"])
def test_the_exported_scheduler_is_the_students_schedule(recipe):
    """scheduler/ describes the schedule the student was distilled on: diffusers' scheduler built from it is read back
    (`diffusers_grid`) as that schedule, a VP one ending at the clean endpoint ᾱ = 1 as the student's last step does
    (set_alpha_to_one=False ended DDIM at ᾱ_0 = 1 − β_0, and diffusers_grid refused it)."""
    cfg = load_config(recipe)
    name, kwargs = _scheduler_config(cfg)
    scheduler = getattr(diffusers, name)(**kwargs)
    scheduler.set_timesteps(10)
    schedule, grid, _ = diffusers_grid(scheduler)
    assert schedule == build_schedule(cfg)
    if name == "DDIMScheduler":
        assert float(scheduler.final_alpha_cumprod) == 1.0 and float(grid[-1]) == -1.0


def test_an_encoder_other_than_the_one_the_shards_were_encoded_with_is_refused(precomputed_run, tmp_path):
    """A run on precomputed text exported with another T5 of the same width (text_encoder.path=OTHER) was taken: the
    pipeline encoded prompts with weights the student never saw, though the recipe check refuses that encoder for
    training on those shards."""
    run, t5, other = precomputed_run
    with pytest.raises(ValueError, match=r"not those .* was trained with: its shards .*holds other weights than the"):
        export_pipeline(run, tmp_path / "pipe", overrides=[f"text_encoder.path={other}"])
    with pytest.raises(ValueError, match=r"text_encoder.size: 'debug' here, None in the shards"):
        export_pipeline(run, tmp_path / "pipe", overrides=["text_encoder.size=debug"])
    assert not (tmp_path / "pipe").exists()
    with pytest.raises(ValueError, match="is not a complete checkpoint"):  # the right one: on to the weights
        export_pipeline(run, tmp_path / "pipe", overrides=[f"text_encoder.path={t5}"])


def test_the_launcher_command_a_run_on_precomputed_text_ends_with_names_its_encoder(precomputed_run, tmp_path):
    """The run's closing summary (and the export's error) give the command that exports it: for a recipe naming no
    T5 it says `text_encoder.path=DIR`; that command, DIR the shards' T5, gets past the encoder checks to the
    weights."""
    run, t5, _ = precomputed_run
    cfg = load_config(run / "checkpoints" / "step_00000003" / "config.yaml")
    command = launcher_command(cfg, run)
    assert command == f"python launchers/export.py {run} text_encoder.path=DIR"
    overrides = [a.replace("DIR", str(t5)) for a in command.split()[3:]]
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        export_pipeline(run, tmp_path / "pipe", overrides=overrides)
    assert launcher_command(load_config("recipes/tiny_t2i_cpu.yaml"), run) == f"python launchers/export.py {run}"
