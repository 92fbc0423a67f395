import pytest
import torch

from ard_scale.models.vae import LatentCodec, PixelCodec, build_codec


def test_debug_vae_maps_32px_images_to_the_debug_teachers_latents_deterministically():
    codec = build_codec(size="debug", path=None, scaling_factor=None, channels=4)
    assert isinstance(codec, LatentCodec) and codec.downsample == 4
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    z1, z2 = codec.encode(images), codec.encode(images)
    assert z1.shape == (2, 4, 8, 8)
    assert torch.equal(z1, z2)  # posterior mean, no sampling: same latent on every rank and after a resume
    raw = codec.vae.encode(images).latent_dist.mean
    torch.testing.assert_close(z1, raw * codec.scaling_factor)
    assert codec.decode(z1).shape == (2, 3, 32, 32)


def test_a_vae_folder_round_trips_and_a_wrong_one_is_named(tmp_path):
    codec = build_codec(size="debug", path=None, scaling_factor=0.5, channels=4)
    codec.vae.save_pretrained(tmp_path / "pipe" / "vae")
    loaded = build_codec(size=None, path=tmp_path / "pipe", scaling_factor=0.5, channels=4)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded.encode(images), codec.encode(images))
    with pytest.raises(ValueError, match="not a diffusers AutoencoderKL folder"):
        build_codec(size=None, path=tmp_path / "nothing", scaling_factor=None, channels=4)
    with pytest.raises(ValueError, match="4-channel latents but the teacher takes 8"):
        build_codec(size="debug", path=None, scaling_factor=None, channels=8)


def test_pixel_space_takes_grey_as_the_mean_of_rgb():
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(PixelCodec(3).encode(images), images)
    torch.testing.assert_close(PixelCodec(1).encode(images), images.mean(1, keepdim=True))
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        PixelCodec(4)


def test_the_shift_factor_is_subtracted_before_scaling_and_restored_on_decoding(tmp_path):
    codec = build_codec(size="debug", path=None, scaling_factor=None, channels=4)
    codec.vae.register_to_config(shift_factor=0.25)  # as FLUX.1's VAE config carries one (0.1159)
    codec.vae.save_pretrained(tmp_path / "vae")
    shifted = build_codec(size=None, path=tmp_path / "vae", scaling_factor=None, channels=4)
    assert shifted.shift_factor == 0.25 and codec.shift_factor == 0.0  # read from the config; none: 0
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = shifted.vae.encode(images).latent_dist.mean
    z = shifted.encode(images)
    torch.testing.assert_close(z, (mean - 0.25) * shifted.scaling_factor)  # as FLUX's training scripts encode
    torch.testing.assert_close(shifted.decode(z), shifted.vae.decode(mean).sample.clamp(-1, 1), rtol=1e-4, atol=1e-5)
    override = build_codec(size=None, path=tmp_path / "vae", scaling_factor=None, shift_factor=0.0, channels=4)
    torch.testing.assert_close(override.encode(images), mean * shifted.scaling_factor)  # the recipe's value wins
