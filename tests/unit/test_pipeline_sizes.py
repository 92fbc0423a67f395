"""ARDPipeline's height/width: a size its VAE cannot produce is refused with the reason, never rounded down; one its
family cannot take is refused naming height/width and the sizes it can (not the recipe's data.resolution); one it
takes but the student was not distilled at warns; so does a non-square one, unless the student was distilled on it
(an aspect-ratio bucket, data.buckets)."""

import warnings

import pytest
import torch


@pytest.fixture(scope="module")
def flux_pipe(tiny_pipeline):
    return tiny_pipeline("recipes/tiny_flux_cpu.yaml")


def test_a_size_the_vae_cannot_produce_is_refused_not_rounded(flux_pipe):
    down = flux_pipe.codec.downsample
    C, h, w = flux_pipe._latent_shape(None, None)
    with pytest.warns(UserWarning, match="distilled at"):
        assert flux_pipe._latent_shape(10 * down, 10 * down) == (C, 10, 10)  # FLUX takes other sizes
    for bad in (10 * down + 2, 0, -down):
        with pytest.raises(ValueError, match=f"height={bad}: must be a positive multiple"):
            flux_pipe._latent_shape(bad, bad)
    with pytest.raises(ValueError, match="width="):
        flux_pipe._latent_shape(10 * down, 10 * down + 1)
    assert torch.Size((C, h, w)) == torch.Size(flux_pipe._latent_shape(h * down, None))


@pytest.fixture(scope="module")
def pixart_pipe(tiny_pipeline):
    return tiny_pipeline("recipes/tiny_t2i_cpu.yaml")  # one square (its own), other aspect ratios around it


def test_a_size_the_family_cannot_take_names_height_width_and_the_sizes_it_samples(pixart_pipe, flux_pipe):
    with pytest.raises(ValueError) as e:
        pixart_pipe("a cat", height=64, width=64)
    assert str(e.value).startswith(
        "height=64, width=64: this pixart student samples 32×32 px, or other aspect ratios with sides that are "
        "multiples of 8 px; this student was"
    )
    assert "distilled at 32×32 px" in str(e.value) and "data.resolution" not in str(e.value)
    with pytest.raises(
        ValueError, match=r"latents of shape \(1, 4, 16, 16\) \(64×64 px\): this pixart student samples"
    ):
        pixart_pipe("a cat", latents=torch.randn(1, 4, 16, 16))
    down = flux_pipe.codec.downsample  # FLUX packs 2×2 latents: an odd latent side is refused
    with pytest.raises(ValueError) as e:
        flux_pipe("a cat", height=13 * down, width=13 * down)
    assert f"samples heights and widths that are multiples of {2 * down} px" in str(e.value), e.value
    assert "data.resolution" not in str(e.value)


def test_a_size_the_student_was_not_distilled_at_warns_naming_the_distilled_size(flux_pipe):
    down = flux_pipe.codec.downsample
    with pytest.warns(UserWarning, match=f"this student was distilled at {8 * down}×{8 * down} px; at {12 * down}×"):
        out = flux_pipe("a cat", height=12 * down, width=12 * down, output_type="latent")
    assert out.latents.shape[-2:] == (12, 12)
    with pytest.warns(UserWarning, match="distilled at"):
        flux_pipe("a cat", latents=torch.randn(1, flux_pipe._latent_shape(None, None)[0], 12, 12), output_type="latent")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flux_pipe("a cat", height=8 * down, width=8 * down, output_type="latent")  # the distilled size: no warning


def test_a_non_square_size_samples_and_warns_unless_it_is_one_of_the_students_buckets(fresh_tiny_pipeline):
    from ard_scale.data.transforms import bucket_latent_sizes

    pipe = fresh_tiny_pipeline("recipes/tiny_t2i_cpu.yaml")  # PixArt: 32×32 px, 8×8 latents
    down = pipe.codec.downsample
    with pytest.warns(UserWarning, match="a size it was not trained at"):
        out = pipe("a cat", height=4 * down, width=12 * down, output_type="latent")
    assert out.latents.shape[-2:] == (4, 12)
    pipe.student.latent_sizes = bucket_latent_sizes(32, down)  # as data.buckets records it
    assert (4, 12) in pipe.student.latent_sizes and (4, 10) not in pipe.student.latent_sizes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe("a cat", height=4 * down, width=12 * down, output_type="latent")  # a bucket it was distilled on
    with pytest.warns(UserWarning, match="distilled at 32×32 px and its aspect-ratio buckets; at 16×40 px"):
        pipe("a cat", height=4 * down, width=10 * down, output_type="latent")
    with pytest.raises(ValueError, match="height=12, width=40: this pixart student samples"):
        pipe("a cat", height=3 * down, width=10 * down)  # an odd latent side: not a multiple of the patch


def test_sample_py_samples_the_height_and_width_asked_from_the_noise_of_seed_plus_i(
    fresh_tiny_pipeline, tmp_path, monkeypatch
):
    import runpy
    import sys

    from ard_scale.pipeline import MODEL_INDEX, ARDPipeline
    from ard_scale.utils.launch import ROOT

    pipe = fresh_tiny_pipeline("recipes/tiny_flux_cpu.yaml")  # FLUX takes non-square sizes
    down, C = pipe.codec.downsample, pipe._latent_shape(None, None)[0]
    (tmp_path / MODEL_INDEX).write_text("{}")  # a pipeline folder, loaded as `pipe` (the tiny one, not an export)
    monkeypatch.setattr(ARDPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))

    def sample(*extra):
        argv = ["sample", str(tmp_path), "--prompt", "a cat", "--prompt", "a dog", "--seed", "5", *extra]
        monkeypatch.setattr(sys, "argv", argv)
        runpy.run_path(str(ROOT / "launchers" / "sample.py"), run_name="__main__")

    with pytest.warns(UserWarning, match="a size it was not trained at"):
        sample("--height", str(12 * down), "--width", str(8 * down), "--out", str(tmp_path / "s"),
               "--save-tensor", str(tmp_path / "x.pt"))  # fmt: skip
    states = torch.load(tmp_path / "x.pt")
    noise = torch.stack([torch.randn(C, 12, 8, generator=torch.Generator().manual_seed(5 + i)) for i in range(2)])
    with pytest.warns(UserWarning, match="a size it was not trained at"):
        expected = pipe(["a cat", "a dog"], latents=noise, output_type="latent").latents
    assert states.shape == (2, C, 12, 8) and torch.equal(states, expected)
    sample("--out", str(tmp_path / "d"), "--save-tensor", str(tmp_path / "d.pt"))  # the distilled size by default
    assert torch.load(tmp_path / "d.pt").shape[-2:] == pipe._latent_shape(None, None)[1:]
