"""Checks of a recipe against what only the built teacher or the data can tell: channel options
against the teacher's latent, class labels against teacher.num_classes."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from ard_scale.config import ConfigError, ConfigWarning, RootConfig
from ard_scale.data.samples import NO_LABEL
from ard_scale.errors import UserError

if TYPE_CHECKING:
    from ard_scale.models.teachers import Teacher


def check_labels(labels: torch.Tensor, keys: list[str] | None, num_classes: int) -> None:
    """Class labels must index the teacher's embedding: 0 <= label < teacher.num_classes (index num_classes is the
    null class), else an error naming the label, its sample and num_classes (was an IndexError in the embedding)."""
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        sample = f" (sample {keys[i]!r})" if keys else ""
        if int(labels[i]) == NO_LABEL:
            raise UserError(
                f"sample {keys[i] if keys else '?'!r} has no class label, beside samples that have one; a "
                "class-conditional teacher needs a `label` for every sample: rebuild the shards with a label for each "
                "image (launchers/build_shards.py reads it from the image's .json) or leave the unlabelled ones out"
            )
        raise UserError(
            f"class label {int(labels[i])}{sample} is outside teacher.num_classes={num_classes} (labels must be in "
            f"[0, {num_classes - 1}]); set teacher.num_classes to the data's number of classes or fix the shards"
        )


def check_channel_options(cfg: RootConfig, teacher: Teacher) -> None:
    """Channel options the recipe can only judge against the built teacher's latent."""
    k, c = cfg.diffusion.guide_first_channels, teacher.in_channels
    if k is not None and k > c:
        raise ConfigError(
            "(the teacher)",
            [f"diffusion.guide_first_channels: {k} > the teacher's {c} latent channels; give 1..{c} or null (all)"],
            every_rank=True,
        )


def check_guidance(cfg: RootConfig, teacher: Teacher) -> None:
    """A family whose guidance is embedded (FLUX.1) with a teacher that embeds none (guidance_embeds=False:
    FLUX.1-schnell) samples without guidance, as its diffusers pipeline does: a diffusion.guidance_scale other than 1
    then does nothing, which is said (the run still records and exports the value)."""
    g = cfg.diffusion.guidance_scale
    if teacher.spec.guidance == "embedded" and not teacher.distilled_guidance and g != 1:
        warnings.warn(
            f"diffusion.guidance_scale={g} is ignored: this {teacher.spec.name} teacher embeds no guidance "
            "(guidance_embeds=False, e.g. FLUX.1-schnell) and has no classifier-free guidance either, so its "
            "trajectories are unguided, as its diffusers pipeline samples it; set diffusion.guidance_scale: 1.0",
            ConfigWarning,
            stacklevel=2,
        )


def check_attention(cfg: RootConfig, device) -> None:
    """`student.attention: flex` trains only where FlexAttention has a backward (CUDA; torch 2.14 has none on CPU)."""
    device = torch.device(device)
    if cfg.student.attention == "flex" and device.type != "cuda" and cfg.student.num_causal_layers:
        raise ConfigError(
            "(the device)",
            [
                f"student.attention: 'flex' cannot train on {device.type} (FlexAttention has no backward there); "
                "set student.attention: sdpa, or auto (flex on CUDA, sdpa elsewhere)"
            ],
            every_rank=True,
        )
