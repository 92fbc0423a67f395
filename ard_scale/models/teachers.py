"""Teacher adapters: the diffusers model classes of each registered family behind one call signature.

A `Teacher` is the frozen network the student is distilled from. It wraps a diffusers model so real checkpoints load
from a local diffusers folder, and it is a plain denoiser: `teacher(x_t, t, cond) -> native output` (all output
channels, including DiT's learned-sigma half; `Teacher.split_output` drops it for the ODE). What differs between
families lives in `ard_scale.models.families`; `teacher.spec` is the family, `teacher.family` its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ard_scale.diffusion.condition import Condition
from ard_scale.errors import UserError
from ard_scale.models.families import FAMILIES, Family, family_of_class, get_family
from ard_scale.models.folders import encoder_fingerprint, model_folder

SIZES: dict[str, dict[str, dict]] = {name: fam.sizes for name, fam in FAMILIES.items()}


class Teacher(nn.Module):
    """A frozen diffusion transformer of a supported family, called as a denoiser."""

    def __init__(self, model: nn.Module):
        super().__init__()
        spec = family_of_class(type(model).__name__)
        if spec is None:
            raise UserError(_unsupported(type(model).__name__, "the given module"))
        spec.check_model(model)
        self.model = model
        self.spec: type[Family] = spec
        self.family: str = spec.name

    # -- shape facts the rest of the package needs ------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels(self.model)

    @property
    def out_channels(self) -> int:
        return self.spec.out_channels(self.model)

    @property
    def learned_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def patch_size(self) -> int:
        return self.spec.patch_size(self.model)

    @property
    def sample_size(self) -> int:
        return self.spec.sample_size(self.model)

    @property
    def depth(self) -> int:
        return self.spec.depth(self.model)

    @property
    def width(self) -> int:
        return self.spec.width(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes(self.model)

    @property
    def text_dim(self) -> int | None:
        return self.spec.text_dim(self.model)

    @property
    def distilled_guidance(self) -> bool:
        """Whether the teacher embeds the guidance scale (FLUX.1-dev) instead of running a CFG pass."""
        return self.spec.distilled_guidance(self.model)

    @property
    def condition_kind(self) -> str:
        return self.spec.condition_kind

    def null_condition(self, batch_size: int, device=None) -> Condition:
        """The class-conditional null condition (class index `num_classes`). Text teachers need the empty-caption
        embedding, which only the text encoder can make: raises for them."""
        return self.spec.null_condition(self.model, batch_size, device)

    def example_condition(self, batch: int, device, text_tokens: int = 300, dtype=None) -> Condition:
        return self.spec.example_condition(self.model, batch, device, text_tokens, dtype)

    def split_output(self, out: torch.Tensor) -> torch.Tensor:
        """The ODE's part of the output: drops the learned-sigma channels."""
        return out[:, : self.in_channels] if self.learned_sigma else out

    def check_input(self, x: torch.Tensor, what: str = "latents") -> None:
        c, p = self.in_channels, self.patch_size
        if x.ndim != 4 or x.shape[1] != c or x.shape[-1] % p or x.shape[-2] % p:
            raise UserError(
                f"{what} of shape {tuple(x.shape)} do not match the teacher: expected (B, {c}, H, W) with H and W "
                f"multiples of the patch size {p} (trained at {self.sample_size}x{self.sample_size})"
            )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Native network output for x_t (B, C, H, W) at model times t (B,) or scalar."""
        t = torch.as_tensor(t, device=x_t.device).float().expand(x_t.shape[0])  # a scalar or (B,) -> (B,)
        cond.check_batch(x_t.shape[0], "teacher")
        return self.spec.denoise(self.model, x_t, t, cond)

    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, layers: list[int]) -> list[torch.Tensor]:
        """Hidden states (B, L, D) after each block in `layers`, computed exactly as `forward` computes them, up to
        the highest requested block (the GAN discriminator's backbone). It calls the model's submodules directly,
        never the model's or this wrapper's own forward: a parameter-partitioning wrapper (ZeRO-3) then sees only
        module calls whose outputs lie on the path to the features, so a backward from the features to `x_t`
        passes through matched hooks."""
        t = torch.as_tensor(t, device=x_t.device).float().expand(x_t.shape[0])
        cond.check_batch(x_t.shape[0], "teacher")
        return self.spec.features(self.model, x_t, t, cond, layers)


def _unsupported(class_name: str, where: str) -> str:
    classes = ", ".join(f.model_class.__name__ for f in FAMILIES.values())
    return (
        f"{where} holds a {class_name}, which is not a supported teacher; supported classes: "
        f"{classes} (families: {', '.join(FAMILIES)})"
    )


def teacher_kwargs(family: str, size: str, **overrides) -> dict:
    spec = get_family(family)
    if size not in spec.sizes:
        raise UserError(f"unknown {family} size {size!r}; choose one of {', '.join(spec.sizes)}", every_rank=True)
    return {**spec.sizes[size], **overrides}


def build_teacher(
    family: str, size: str, *, device: str | torch.device = "cpu", seed: int | None = 0, **overrides
) -> Teacher:
    """A randomly initialised teacher of a named size. `device='meta'` builds it without allocating weights."""
    kwargs = teacher_kwargs(family, size, **overrides)
    if seed is not None and str(device) != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        model = get_family(family).model_class(**kwargs)
    return Teacher(model).eval().requires_grad_(False)


def family_of_folder(path: str | Path) -> type[Family]:
    """The family of the teacher stored at `path`, from its config's `_class_name`."""
    folder = model_folder(path)
    class_name = json.loads((folder / "config.json").read_text()).get("_class_name", "<no _class_name>")
    spec = family_of_class(class_name)
    if spec is None:
        raise UserError(_unsupported(class_name, str(folder)), every_rank=True)
    return spec


def other_family(spec: type[Family], path: str | Path, family: str) -> str | None:
    """What is wrong with teacher folder `path`, which holds a model of family `spec` (`family_of_folder`), for the
    recipe's `teacher.family`: None when it is that family."""
    if spec.name == family:
        return None
    return (
        f"teacher.path {path} holds a {spec.model_class_name} (family {spec.name!r}), but the recipe says "
        f"teacher.family={family!r}; set teacher.family={spec.name} or point teacher.path at a {family} model"
    )


def load_teacher(path: str | Path, *, dtype: torch.dtype = torch.float32, family: str | None = None) -> Teacher:
    """Load a teacher from a local diffusers folder (the model folder, or a pipeline folder with `transformer/`).
    With `family` given (the recipe's `teacher.family`), a folder holding another family's model is an error."""
    spec = family_of_folder(path)
    if family is not None and (problem := other_family(spec, path, family)) is not None:
        raise UserError(problem, every_rank=True)
    model = spec.model_class.from_pretrained(model_folder(path), torch_dtype=dtype)
    return Teacher(model).eval().requires_grad_(False)


def teacher_identity(path: str | Path | None, family: str, size: str | None, seed: int | None) -> dict:
    """What tells one teacher's weights from another's, for a record of what was made with them (an offline dump):
    a folder's `fingerprint` (`encoder_fingerprint`: the same for a copy elsewhere; None where it cannot be read), or
    a named size's random weights by family, size and the seed they are drawn from. Two identities of different
    kinds cannot be compared (a folder may hold a named size's weights)."""
    if path is not None:
        return {"fingerprint": encoder_fingerprint(str(path), "transformer")}
    return {"family": family, "size": size, "seed": seed}


def teacher_from_config(section, seed: int | None = 0) -> Teacher:
    """The teacher a recipe's `teacher` section names: its local folder, or its named size with random weights
    drawn from `seed` (the recipe's train.seed, so every rank and every rebuild gets the same ones)."""
    if section.path is not None:
        return load_teacher(section.path, family=section.family)
    spec = get_family(section.family)
    return build_teacher(section.family, section.size, seed=seed, **spec.size_overrides(section.num_classes))
