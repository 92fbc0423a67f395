"""Teacher families as plug-ins (see `base.Family`): one module per family and this registry."""

from __future__ import annotations

from ard_scale.errors import UserError
from ard_scale.models.families.base import Family

FAMILIES: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    if set(family.encoder_folders) != set(family.text_encoders):
        raise TypeError(f"family {family.name!r}: encoder_folders must name the pipeline folder of every text encoder")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise UserError(f"unknown teacher family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of_class(class_name: str) -> type[Family] | None:
    """The family whose diffusers class is called `class_name`, or None."""
    return next((f for f in FAMILIES.values() if f.model_class_name == class_name), None)


from ard_scale.models.families import dit, flux, pixart, qwen_image, sd3  # noqa: E402,F401  (registers them)

__all__ = ["FAMILIES", "Family", "family_of_class", "get_family", "register"]
