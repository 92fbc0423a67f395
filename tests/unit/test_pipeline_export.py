"""export_pipeline's encoder and VAE overrides say where those weights are (`path`, `size`), never what the student
was trained with: the token count it read and the VAE's latent scaling are the checkpoint recipe's."""

import pytest

from ard_scale.config import dump_yaml, load_config, to_dict
from ard_scale.pipeline import export_pipeline


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
