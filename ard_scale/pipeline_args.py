"""What an `ARDPipeline` call may be given: each check refuses a value it cannot honour with a ValueError or
TypeError naming the argument and the fix, before a library meets it (and says something about its internals)."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ard_scale.errors import UserError


def check_fixed(steps: int, guidance: float, num_inference_steps, guidance_scale, negative_prompt) -> None:
    """Refuse the diffusers sampling settings an ARD student fixed at distillation (its `steps` and the `guidance` it
    was distilled at), unless they are its own."""
    fixed = (
        f"this student's step count and guidance are fixed at distillation (model_index.json's \"ard\" section: "
        f"num_inference_steps={steps}, guidance_scale={guidance}, distilled into the student)"
    )
    if num_inference_steps is not None and num_inference_steps != steps:
        raise UserError(f"num_inference_steps={num_inference_steps}: {fixed}; leave it out")
    if guidance_scale is not None and guidance_scale != guidance:
        raise UserError(f"guidance_scale={guidance_scale}: {fixed}; leave it out")
    if negative_prompt is not None:
        raise UserError(
            f"negative_prompt: {fixed}, and the student makes no unconditional pass a negative prompt would "
            "replace; leave it out"
        )


OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_output_type(output_type) -> None:
    """Refuse an `output_type` other than diffusers' 'pil', 'np', 'pt' and 'latent', before any sampling."""
    if output_type not in OUTPUT_TYPES:
        raise UserError(
            f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}; nothing was sampled"
        )


def draw_noise(n: int, shape: tuple[int, int, int], generator) -> torch.Tensor:
    """(n, *shape) noise on the CPU: from one generator, or from generator[i] for image i."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise UserError(
                f"generator: a list of {len(generator)} generators for {n} images; give one per image "
                "(prompts × num_images_per_prompt) or a single torch.Generator"
            )
        for g in generator:
            check_generator(g)
        return torch.stack([torch.randn(shape, generator=g) for g in generator])
    check_generator(generator, none_ok=True)
    return torch.randn(n, *shape, generator=generator)


def sides_text(family, backbone, down: int) -> str:
    """The image sides a student of `family` samples, for a message: the latent sides its `check_latent_side` takes
    (probed up to a limit), × the VAE's `down`sampling."""
    limit = 1024
    sides = []
    for side in range(1, limit + 1):
        try:
            family.check_latent_side(backbone, side)
        except ValueError:
            continue
        sides.append(side)
    multiple = family.other_aspects(backbone)
    if len(sides) == 1 and multiple is not None:
        return (
            f"{sides[0] * down}×{sides[0] * down} px, or other aspect ratios with sides that are multiples of "
            f"{multiple * down} px"
        )
    if len(sides) == 1:
        return f"{sides[0] * down}×{sides[0] * down} px only"
    step = sides[0]
    if sides != list(range(step, sides[-1] + 1, step)):
        return "sides of " + ", ".join(str(s * down) for s in sides[:8]) + (" … px" if len(sides) > 8 else " px")
    upto = "" if sides[-1] == limit - limit % step else f" up to {sides[-1] * down}"
    return f"heights and widths that are multiples of {step * down} px{upto}"


def check_generator(generator, none_ok: bool = False) -> None:
    """Refuse a `generator` that is not a CPU torch.Generator (an int seed: say how to make one)."""
    if generator is None and none_ok:
        return
    if not isinstance(generator, torch.Generator):
        seed = (
            f" (for seed {generator}: torch.Generator().manual_seed({generator}))" if isinstance(generator, int) else ""
        )
        raise TypeError(
            f"generator must be a torch.Generator or a list of them (one per image), got {type(generator).__name__}"
            f"{seed}"
        )
    if generator.device.type != "cpu":
        raise UserError(
            f"generator is on {generator.device}: the noise is drawn on the CPU (the same images on any device), so "
            "give a CPU torch.Generator"
        )


def integer_labels(class_labels) -> torch.Tensor:
    """`class_labels` (an int, a list of ints, an integer array or tensor) as a 1-D long tensor; refuses others."""
    if isinstance(class_labels, np.ndarray):
        class_labels = class_labels.tolist()  # numpy ints -> int, floats -> float: checked below as a list
    if isinstance(class_labels, torch.Tensor):
        ok = not (class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool)
        items = class_labels.reshape(-1).tolist() if ok else None
    else:
        items = [class_labels] if isinstance(class_labels, numbers.Integral) else class_labels
        ok = isinstance(items, (list, tuple)) and all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in items
        )
    if not ok:
        raise TypeError(
            f"class_labels must be integers (an int, a list of ints or an integer tensor), got {class_labels!r}; "
            "round or convert them yourself"
        )
    if not items:
        raise UserError("class_labels is empty: give at least one label")
    return torch.tensor([int(c) for c in items], dtype=torch.long)


def check_label_range(labels: torch.Tensor, num_classes: int | None, name: str = "class_labels") -> None:
    """Refuse labels outside a class-conditional family's 0..num_classes-1 (None: any); `name`: the argument."""
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{name} must lie in 0..{num_classes - 1}, got {labels.tolist()}")


def prompt_list(prompt) -> list[str]:
    """`prompt` (a string or a list of strings) as a non-empty list; refuses others."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt must be a string or a list of strings, got {prompt!r}")
    if not prompts:
        raise UserError("prompt is an empty list: give at least one prompt")
    return list(prompts)
