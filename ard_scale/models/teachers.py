"""Teacher adapters: the diffusers model classes of each supported family behind one call signature.

A `Teacher` is the frozen network the student is distilled from. It wraps a diffusers model so real checkpoints load
from a local diffusers folder, and it is a plain denoiser: `teacher(x_t, t, cond) -> native output` (all output
channels, including DiT's learned-sigma half; `Teacher.split_output` drops it for the ODE).

Families:
- `dit`: class-conditional `DiTTransformer2DModel` (adaLN-Zero, learned sigma; DiT-XL/2 layout).
- `pixart`: text-to-image `PixArtTransformer2DModel` (adaLN-single, cross-attention to T5 tokens; PixArt-Σ layout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel
from torch import nn

from ard_scale.models.condition import Condition

Family = Literal["dit", "pixart"]
MODEL_CLASSES: dict[str, type] = {"dit": DiTTransformer2DModel, "pixart": PixArtTransformer2DModel}
FAMILY_OF_CLASS = {cls.__name__: fam for fam, cls in MODEL_CLASSES.items()}

# Named sizes: keyword arguments of the diffusers class. `debug` runs a training step on CPU in well under a second.
SIZES: dict[str, dict[str, dict]] = {
    "dit": {
        "debug": dict(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=4,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=10,
        ),
        "dit_xl_2_256": dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        ),
    },
    "pixart": {
        "debug": dict(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=4,
            sample_size=8,
            patch_size=2,
            cross_attention_dim=32,
            caption_channels=24,
            use_additional_conditions=False,
        ),
        # PixArt-Σ 1024px (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer config).
        "pixart_sigma_1024": dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=128,
            patch_size=2,
            cross_attention_dim=1152,
            caption_channels=4096,
            interpolation_scale=2,
            use_additional_conditions=False,
        ),
    },
}


class Teacher(nn.Module):
    """A frozen diffusion transformer of a supported family, called as a denoiser."""

    def __init__(self, model: nn.Module):
        super().__init__()
        family = FAMILY_OF_CLASS.get(type(model).__name__)
        if family is None:
            raise ValueError(_unsupported(type(model).__name__, "the given module"))
        if family == "pixart" and model.config.use_additional_conditions:
            raise ValueError(
                "this PixArt teacher uses resolution/aspect-ratio conditioning (use_additional_conditions=True, "
                "PixArt-α 1024); ard_scale supports PixArt-Σ-style teachers without it"
            )
        self.model = model
        self.family: Family = family

    # -- shape facts the rest of the package needs ------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def in_channels(self) -> int:
        return self.model.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.model.out_channels

    @property
    def learned_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def patch_size(self) -> int:
        return self.model.config.patch_size

    @property
    def sample_size(self) -> int:
        return self.model.config.sample_size

    @property
    def depth(self) -> int:
        return len(self.model.transformer_blocks)

    @property
    def num_classes(self) -> int | None:
        return self.model.config.num_embeds_ada_norm if self.family == "dit" else None

    def null_condition(self, batch_size: int, device=None) -> Condition:
        """The class-conditional null condition (class index `num_classes`). Text teachers need the empty-caption
        T5 embedding, which only the text encoder can make: raises for them."""
        if self.family != "dit":
            raise ValueError("a text teacher's null condition is the empty caption's T5 embedding; encode '' instead")
        return Condition(labels=torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device))

    def split_output(self, out: torch.Tensor) -> torch.Tensor:
        """The ODE's part of the output: drops the learned-sigma channels."""
        return out[:, : self.in_channels] if self.learned_sigma else out

    def check_input(self, x: torch.Tensor, what: str = "latents") -> None:
        c, p = self.in_channels, self.patch_size
        if x.ndim != 4 or x.shape[1] != c or x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(
                f"{what} of shape {tuple(x.shape)} do not match the teacher: expected (B, {c}, H, W) with H and W "
                f"multiples of the patch size {p} (trained at {self.sample_size}x{self.sample_size})"
            )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Native network output for x_t (B, C, H, W) at model times t (B,) or scalar."""
        t = torch.as_tensor(t, device=x_t.device).float().expand(x_t.shape[0])  # a scalar or (B,) -> (B,)
        x = x_t.to(self.model.pos_embed.proj.weight.dtype)  # the weights' dtype in, the caller's dtype out
        if self.family == "dit":
            if cond.labels is None:
                raise ValueError("a class-conditional (DiT) teacher needs class labels, got a text condition")
            return self.model(x, timestep=t, class_labels=cond.labels, return_dict=False)[0].to(x_t.dtype)
        if cond.text is None:
            raise ValueError("a text-to-image (PixArt) teacher needs T5 embeddings, got class labels")
        return self.model(
            x,
            encoder_hidden_states=cond.text.to(x.dtype),
            timestep=t,
            encoder_attention_mask=cond.text_mask,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0].to(x_t.dtype)

    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, layers: list[int]) -> list[torch.Tensor]:
        """Hidden states (B, L, D) after each block in `layers`, computed exactly as `forward` computes them, up to
        the highest requested block (the GAN discriminator's backbone). It calls the model's submodules directly,
        never the model's or this wrapper's own forward: a parameter-partitioning wrapper (ZeRO-3) then sees only
        module calls whose outputs lie on the path to the features, so a backward from the features to `x_t`
        passes through matched hooks."""
        m = self.model
        t = torch.as_tensor(t, device=x_t.device).float().expand(x_t.shape[0])
        h = m.pos_embed(x_t.to(m.pos_embed.proj.weight.dtype))
        kwargs: dict = {}
        if self.family == "dit":
            if cond.labels is None:
                raise ValueError("a class-conditional (DiT) teacher needs class labels, got a text condition")
            kwargs = {"timestep": t, "class_labels": cond.labels}
        else:
            if cond.text is None:
                raise ValueError("a text-to-image (PixArt) teacher needs T5 embeddings, got class labels")
            t6, _ = m.adaln_single(
                t, {"resolution": None, "aspect_ratio": None}, batch_size=x_t.shape[0], hidden_dtype=h.dtype
            )
            text = m.caption_projection(cond.text.to(h.dtype)).view(x_t.shape[0], -1, h.shape[-1])
            bias = None
            if cond.text_mask is not None:  # as PixArtTransformer2DModel.forward: 0 keep, -10000 drop
                bias = ((1 - cond.text_mask.to(h.dtype)) * -10000.0).unsqueeze(1)
            kwargs = {"timestep": t6, "encoder_hidden_states": text, "encoder_attention_mask": bias}
        out = {}
        for i in range(max(layers) + 1):
            h = m.transformer_blocks[i](h, **kwargs)
            out[i] = h
        return [out[i] for i in layers]


def _unsupported(class_name: str, where: str) -> str:
    return (
        f"{where} holds a {class_name}, which is not a supported teacher; supported classes: "
        f"{', '.join(FAMILY_OF_CLASS)} (families: {', '.join(MODEL_CLASSES)})"
    )


def teacher_kwargs(family: str, size: str, **overrides) -> dict:
    if family not in SIZES:
        raise ValueError(f"unknown teacher family {family!r}; choose one of {', '.join(SIZES)}")
    if size not in SIZES[family]:
        raise ValueError(f"unknown {family} size {size!r}; choose one of {', '.join(SIZES[family])}")
    return {**SIZES[family][size], **overrides}


def build_teacher(
    family: str, size: str, *, device: str | torch.device = "cpu", seed: int | None = 0, **overrides
) -> Teacher:
    """A randomly initialised teacher of a named size. `device='meta'` builds it without allocating weights."""
    kwargs = teacher_kwargs(family, size, **overrides)
    if seed is not None and str(device) != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        model = MODEL_CLASSES[family](**kwargs)
    return Teacher(model).eval().requires_grad_(False)


def load_teacher(path: str | Path, *, dtype: torch.dtype = torch.float32) -> Teacher:
    """Load a teacher from a local diffusers folder (the model folder, or a pipeline folder with `transformer/`)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"teacher path {path} is not a folder; give a local diffusers model or pipeline folder")
    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        path = path / "transformer"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} is not a diffusers model folder: it has no config.json (nor transformer/config.json)")
    class_name = json.loads(config_file.read_text()).get("_class_name", "<no _class_name>")
    family = FAMILY_OF_CLASS.get(class_name)
    if family is None:
        raise ValueError(_unsupported(class_name, str(path)))
    model = MODEL_CLASSES[family].from_pretrained(path, torch_dtype=dtype)
    return Teacher(model).eval().requires_grad_(False)
