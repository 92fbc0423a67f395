"""Between pixels and the teacher's space: a diffusers `AutoencoderKL`, or nothing for a pixel-space teacher.

Only real images (the GAN stage's reals) and decoding for evaluation need it; trajectories never leave latent space.
Images are (B, 3, H, W) in [-1, 1] as the data loaders yield them; latents are (posterior mean − shift) · scale with
the VAE's shift and scaling factors (shift 0 for SD's VAE; FLUX.1's: 0.1159 and 0.3611), as the diffusers pipelines
encode and decode. Qwen-Image's `AutoencoderKLQwenImage` is a video VAE: an image is one frame (B, C, 1, H, W) and
its latents are normalised per channel with the config's `latents_mean` / `latents_std` (`FrameLatentCodec`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ard_scale.errors import UserError
from ard_scale.models.folders import vae_folder

# Named sizes: keyword arguments of AutoencoderKL. `debug` downsamples 4x (3 blocks) into 4 channels, so 32 px
# images meet the debug teachers' 8x8x4 latents.
SIZES: dict[str, dict] = {
    "debug": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    ),
    # AutoencoderKLQwenImage: 4× (2 down stages, the second also temporal, as Qwen-Image's), 4 latent channels with
    # per-channel mean and std, so 32 px images meet the debug Qwen-Image teacher's 8×8×4 latents.
    "debug_qwen_image": dict(
        _class_name="AutoencoderKLQwenImage",
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.8, 2.0, 1.1],
    ),
}
FRAME_VAE = "AutoencoderKLQwenImage"  # the video VAE class whose images are single frames


class LatentCodec(nn.Module):
    """`encode(images) -> latents` and `decode(latents) -> images` for a teacher that works in a VAE's latent space.

    Encoding takes the posterior mean (deterministic: the same image gives the same latent on every rank and
    after a resume)."""

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None, shift_factor: float | None = None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else vae.config.scaling_factor)
        if shift_factor is None:
            shift_factor = getattr(vae.config, "shift_factor", None) or 0.0
        self.shift_factor = float(shift_factor)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @torch.no_grad()
    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(images_BCHW.to(dtype)).latent_dist
        return (posterior.mean - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents_BCHW: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latents_BCHW.to(dtype) / self.scaling_factor + self.shift_factor).sample.clamp(-1, 1)


class FrameLatentCodec(nn.Module):
    """`AutoencoderKLQwenImage` (Qwen-Image's video VAE) on images as single frames (B, C, 1, H, W). Latents are the
    posterior mean normalised per channel exactly as the Qwen-Image pipelines do it: (mean − latents_mean) · (1 /
    latents_std) to encode (QwenImageEditPipeline's argmax latents), latents / (1 / latents_std) + latents_mean to
    decode (QwenImagePipeline)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        c = vae.config
        self.register_buffer("latents_mean", torch.tensor(c.latents_mean).view(1, c.z_dim, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(c.latents_std).view(1, c.z_dim, 1, 1), persistent=False)

    @property
    def downsample(self) -> int:
        return 2 ** len(self.vae.config.temperal_downsample)  # QwenImagePipeline's vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / std) in `like`'s dtype, computed as the pipelines compute them."""
        mean, std = self.latents_mean.to(like.dtype), self.latents_std.to(like.dtype)
        return mean, 1.0 / std

    @torch.no_grad()
    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(images_BCHW.to(dtype)[:, :, None]).latent_dist
        m = posterior.mean[:, :, 0]
        mean, inv_std = self._stats(m)
        return (m - mean) * inv_std

    @torch.no_grad()
    def decode(self, latents_BCHW: torch.Tensor) -> torch.Tensor:
        x = latents_BCHW.to(next(self.vae.parameters()).dtype)
        mean, inv_std = self._stats(x)
        return self.vae.decode((x / inv_std + mean)[:, :, None]).sample[:, :, 0].clamp(-1, 1)


class PixelCodec(nn.Module):
    """A pixel-space teacher: images are its states. Grey teachers (1 channel) take the mean of RGB."""

    downsample = 1

    def __init__(self, channels: int):
        super().__init__()
        if channels not in (1, 3):
            raise UserError(
                f"a pixel-space teacher must have 1 or 3 input channels, got {channels}; a latent teacher needs a "
                "VAE (vae.path or vae.size in the recipe)"
            )
        self.latent_channels = channels

    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        return images_BCHW.mean(1, keepdim=True) if self.latent_channels == 1 else images_BCHW

    def decode(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return x_BCHW.clamp(-1, 1)


def vae_downsample(*, size: str | None, path: str | Path | None, missing: int | None = None) -> int:
    """Pixels per latent side of the recipe's VAE (1 without one), read from its config, no weights loaded.
    `missing`: the value to assume when `path` is not on this machine (the planner's case), instead of an error."""
    if size is None and path is None:
        return 1
    if path is not None:
        try:
            folder = vae_folder(path)
        except ValueError:
            if missing is None:
                raise
            return missing
        config = json.loads((folder / "config.json").read_text())
    elif size in SIZES:
        config = SIZES[size]
    else:
        raise UserError(f"unknown vae.size {size!r}; choose one of {', '.join(SIZES)} or give vae.path")
    if config.get("_class_name") == FRAME_VAE:
        return 2 ** len(config["temperal_downsample"])
    return 2 ** (len(config["block_out_channels"]) - 1)


def build_codec(
    *,
    size: str | None,
    path: str | Path | None,
    scaling_factor: float | None,
    channels: int,
    seed: int = 0,
    shift_factor: float | None = None,
) -> LatentCodec | FrameLatentCodec | PixelCodec:
    """The recipe's `vae` section as a codec: a named random-weight size, a local AutoencoderKL (or
    AutoencoderKLQwenImage) folder, or (both null) pixels. `channels` is the teacher's input channel count, checked
    against the VAE's latents."""
    import diffusers

    if size is None and path is None:
        return PixelCodec(channels)
    if path is not None:
        folder = vae_folder(path)
        class_name = json.loads((folder / "config.json").read_text()).get("_class_name", "AutoencoderKL")
        if class_name not in ("AutoencoderKL", FRAME_VAE):
            raise UserError(f"vae.path {path} holds a {class_name}; ard_scale reads AutoencoderKL or {FRAME_VAE}")
        vae = getattr(diffusers, class_name).from_pretrained(folder)
    else:
        if size not in SIZES:
            raise UserError(f"unknown vae.size {size!r}; choose one of {', '.join(SIZES)} or give vae.path")
        torch.manual_seed(seed)
        kwargs = dict(SIZES[size])
        vae = getattr(diffusers, kwargs.pop("_class_name", "AutoencoderKL"))(**kwargs)
    if type(vae).__name__ == FRAME_VAE:
        if scaling_factor is not None or shift_factor is not None:
            raise UserError(
                f"vae.scaling_factor / vae.shift_factor do not apply to {FRAME_VAE}: its latents are normalised by the "
                "config's latents_mean and latents_std; set both to null"
            )
        codec = FrameLatentCodec(vae)
    else:
        codec = LatentCodec(vae, scaling_factor, shift_factor)
    if codec.latent_channels != channels:
        raise UserError(
            f"the VAE makes {codec.latent_channels}-channel latents but the teacher takes {channels} channels; "
            "give the VAE the teacher was trained with"
        )
    return codec
