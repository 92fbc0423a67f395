"""ARDPipeline.__call__ refuses what it cannot honour with a ValueError/TypeError naming the argument and the fix,
never a library's own error or a silent change of meaning; diffusers' num_images_per_prompt and lists of generators
work as there, and its sampling settings the student fixed at distillation are refused unless they are its own."""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def labels_pipe(tiny_pipeline):
    return tiny_pipeline("recipes/tiny_cpu.yaml")  # DiT, 10 classes


@pytest.fixture(scope="module")
def text_pipe(tiny_pipeline):
    return tiny_pipeline("recipes/tiny_t2i_cpu.yaml")  # PixArt, 4.5 guidance, 4 steps


def latents(pipe, n):
    return torch.randn(n, *pipe._latent_shape(None, None), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"class_labels": []}, ValueError, "class_labels is empty"),
        ({"class_labels": [1.7]}, TypeError, r"class_labels must be integers .* got \[1.7\]"),
        ({"class_labels": torch.tensor([1.0])}, TypeError, "class_labels must be integers"),
        ({"class_labels": [1], "generator": 3}, TypeError, r"generator must be a torch.Generator .*manual_seed\(3\)"),
    ],
)
def test_bad_class_labels_and_generators_are_refused_naming_them(labels_pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        labels_pipe(**kwargs, output_type="latent")


@pytest.mark.parametrize(
    ("prompt", "kwargs", "error", "message"),
    [
        ([], {}, ValueError, "prompt is an empty list"),
        (5, {}, TypeError, "prompt must be a string or a list of strings, got 5"),
        (["a", 5], {}, TypeError, "prompt must be a string or a list of strings"),
        (["a", "b"], {"generator": [torch.Generator()]}, ValueError, "a list of 1 generators for 2 images"),
        (["a"], {"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt must be ≥ 1"),
        (["a", "b", "c"], {"latents": 2}, ValueError, r"latents hold 2 noise tensors, but the call asks for 3 images"),
        ("a", {"latents": 2}, ValueError, r"asks for 1 image \(1 prompt or label\).* num_images_per_prompt=K"),
        ("a", {"latents": 1, "height": 64}, ValueError, "height=64 conflicts with latents of shape"),
        ("a", {"num_inference_steps": 8}, ValueError, r"num_inference_steps=8: .*fixed at distillation .*steps=4"),
        ("a", {"guidance_scale": 7.0}, ValueError, r"guidance_scale=7.0: .*guidance_scale=4.5"),
        ("a", {"negative_prompt": "blurry"}, ValueError, "negative_prompt: this student's step count and guidance"),
    ],
)
def test_bad_prompts_latents_and_sampling_settings_are_refused_naming_them(text_pipe, prompt, kwargs, error, message):
    if "latents" in kwargs:
        kwargs = {**kwargs, "latents": latents(text_pipe, kwargs["latents"])}
    with pytest.raises(error, match=message):
        text_pipe(prompt, **kwargs, output_type="latent")


def test_the_students_own_steps_and_guidance_are_accepted(text_pipe):
    out = text_pipe("a", num_inference_steps=4, guidance_scale=4.5, latents=latents(text_pipe, 1), output_type="latent")
    torch.testing.assert_close(out.latents, text_pipe("a", latents=latents(text_pipe, 1), output_type="latent").latents)


def test_num_images_per_prompt_repeats_each_prompt_in_place_with_its_own_noise(text_pipe, labels_pipe):
    noise = latents(text_pipe, 4)
    one_by_one = text_pipe(["a", "a", "b", "b"], latents=noise, output_type="latent").latents
    repeated = text_pipe(["a", "b"], num_images_per_prompt=2, latents=noise, output_type="latent").latents
    torch.testing.assert_close(repeated, one_by_one)
    assert not torch.allclose(repeated[0], repeated[1])  # its own noise per image
    drawn = text_pipe(["a", "b"], num_images_per_prompt=3, generator=torch.Generator(), output_type="latent")
    assert drawn.latents.shape[0] == 6
    noise = latents(labels_pipe, 4)
    labels = labels_pipe(class_labels=[1, 2], num_images_per_prompt=2, latents=noise, output_type="latent").latents
    one_by_one = labels_pipe(class_labels=[1, 1, 2, 2], latents=noise, output_type="latent").latents
    torch.testing.assert_close(labels, one_by_one)
    assert len(labels_pipe(class_labels=[1, 2], num_images_per_prompt=2, latents=noise).images) == 4


def test_a_list_of_generators_draws_image_i_from_generator_i(text_pipe):
    seeds = [3, 4]
    out = text_pipe(["a", "b"], generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent")
    noise = torch.stack(
        [torch.randn(text_pipe._latent_shape(None, None), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    torch.testing.assert_close(out.latents, text_pipe(["a", "b"], latents=noise, output_type="latent").latents)


def test_a_generator_beside_latents_is_said_to_be_ignored_and_changes_nothing(text_pipe):
    noise = latents(text_pipe, 1)
    with pytest.warns(UserWarning, match="generator is ignored: the latents given are the noise"):
        out = text_pipe("a", latents=noise, generator=torch.Generator().manual_seed(9), output_type="latent")
    torch.testing.assert_close(out.latents, text_pipe("a", latents=noise, output_type="latent").latents)


def test_output_type_np_gives_diffusers_float_arrays_and_an_unknown_one_is_refused_before_sampling(labels_pipe):
    """output_type="np" (diffusers' (B, H, W, 3) floats in [0, 1]) was refused, and only after the S network passes
    and the VAE decode had run."""
    noise = latents(labels_pipe, 2)
    passes = []  # the student's patch embedder runs once per network pass
    hook = labels_pipe.student.backbone.pos_embed.register_forward_pre_hook(lambda *a: passes.append(1))
    try:
        pt = labels_pipe(class_labels=[1, 2], latents=noise, output_type="pt").images
        assert len(passes) == 4  # S = 4
        arrays = labels_pipe(class_labels=[1, 2], latents=noise, output_type="np").images
        passes.clear()
        with pytest.raises(ValueError, match=r"output_type must be one of 'pil', 'np', 'pt', 'latent', got 'numpy'"):
            labels_pipe(class_labels=[1], latents=latents(labels_pipe, 1), output_type="numpy")
    finally:
        hook.remove()
    assert passes == []  # refused before any network pass
    assert isinstance(arrays, np.ndarray) and arrays.dtype == np.float32 and arrays.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(arrays, pt.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_latents_are_sampled_in_fp32_states_as_in_training(text_pipe, dtype):
    """Latents given in bf16/fp16 (as diffusers' randn_tensor draws them for a half-precision pipeline) kept that dtype
    through every DDIM step between the network passes: other images than the in-training sampler's fp32 states."""
    noise = latents(text_pipe, 1).to(dtype)
    out = text_pipe("a", latents=noise, output_type="latent").latents
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, text_pipe("a", latents=noise.float(), output_type="latent").latents, rtol=0, atol=0)


def test_a_label_past_the_last_class_is_refused_not_sampled_as_the_null_class(labels_pipe):
    """Class `num_classes` is DiT's null (unconditional) class: a label of 10 for 10 classes would sample it."""
    with pytest.raises(ValueError, match=r"class_labels must lie in 0..9, got \[10\]"):
        labels_pipe(class_labels=[10], latents=latents(labels_pipe, 1))
    with pytest.raises(ValueError, match=r"class_labels must lie in 0..9, got \[-1\]"):
        labels_pipe(class_labels=[-1], latents=latents(labels_pipe, 1))


def test_pil_images_are_the_pt_images_rounded_to_uint8_as_a_png_stores_them(labels_pipe):
    """PIL images hold round(255 · image) of the 'pt' output, not its truncation (which darkens every pixel by half a
    level on average and would shift FID computed from saved PNGs)."""
    noise = latents(labels_pipe, 2)
    pt = labels_pipe(class_labels=[1, 2], latents=noise, output_type="pt").images
    pil = labels_pipe(class_labels=[1, 2], latents=noise).images
    scaled = pt.permute(0, 2, 3, 1).numpy() * 255
    assert (scaled.round() != np.floor(scaled)).any()  # rounding and truncation differ on these images
    np.testing.assert_array_equal(np.stack([np.asarray(p) for p in pil]), scaled.round().astype(np.uint8))
