"""What the teacher's architecture refuses of a recipe, found before anything is built: a teacher folder of another
family, a student.num_causal_layers beyond its depth, gan.layers it does not have, a data.resolution its fixed
positional embedding does not take, data.buckets whose sizes it does not take; and a teacher.size, vae.size or text
encoder size (text_encoder, pooled_encoder, pooled_encoder_2, qwen_encoder) that names no size at all (`size_problems`).

`python -m ard_scale.config`, launchers/train.py (through `check_paths`) and the planner ask it; the trainer's own
checks (`ARDConfig.validate`, `Family.check_latent_side`, the GAN backbone) would otherwise find these only after the
engines are up. The recipe check reads the architecture from teacher.size or teacher.path's config.json as a plain
dict (`Family.config_depth`, and `check_latent_side` of a stand-in holding only that config): no network is built and
diffusers is not imported, so checking a recipe stays quick."""

from __future__ import annotations

import json
from types import SimpleNamespace


def bucket_problems(spec, model, resolution: int, down: int) -> list[str]:
    """data.buckets' problem with a teacher of family `spec` (`model`: as for `teacher_problems`): the aspect-ratio
    buckets at `resolution`, in latents of a VAE downsampling by `down`, that it does not take (one line, or none)."""
    from ard_scale.data.transforms import bucket_table

    bad = []
    for height, width in bucket_table(resolution).values():
        try:
            spec.check_latent_size(model, height // down, width // down)
        except ValueError:
            bad.append(f"{height}×{width}")
    if not bad:
        return []
    shown = ", ".join(bad[:4]) + (", …" if len(bad) > 4 else "")
    return [
        f"data.buckets: this {spec.name} teacher does not take {len(bad)} of the aspect-ratio buckets at "
        f"data.resolution={resolution} ({shown} px; a fixed positional embedding takes its own square only); set "
        "data.buckets=false, or a data.resolution whose buckets it takes"
    ]


def teacher_problems(cfg, spec, depth: int, model, side: int, down: int = 1) -> list[str]:
    """The recipe's problems with a teacher of family `spec` and `depth` blocks; `model`: the network, or anything
    with its `config` (what `check_latent_side` reads); `side`: the latent side at data.resolution, the VAE
    downsampling by `down`."""
    out = []
    depth_problem = cfg.student.depth_problem(depth)
    if depth_problem is not None:
        out.append(f"student.{depth_problem}")
    layers = cfg.gan.layers
    if cfg.gan.enabled and layers is not None and any(i >= depth for i in layers):
        out.append(f"gan.layers: {list(layers)}, but the teacher has blocks 0..{depth - 1}")
    try:
        spec.check_latent_side(model, side)
    except ValueError as e:
        out.append(str(e))
    if cfg.data.buckets:
        out += bucket_problems(spec, model, cfg.data.resolution, down)
    return out


def teacher_config(cfg) -> dict:
    """The recipe teacher's architecture as a dict: its named size's keyword arguments, or its folder's config.json."""
    from ard_scale.models.families import get_family
    from ard_scale.models.folders import model_folder
    from ard_scale.models.teachers import teacher_kwargs

    t = cfg.teacher
    if t.size is not None:
        return teacher_kwargs(t.family, t.size, **get_family(t.family).size_overrides(t.num_classes))
    return json.loads((model_folder(t.path) / "config.json").read_text(encoding="utf-8"))


def configured(config: dict) -> SimpleNamespace:
    """A stand-in for a network: only its `config`, as attributes (what the families' shape checks read)."""
    return SimpleNamespace(config=SimpleNamespace(**config))


def size_problems(cfg, spec) -> list[str]:
    """The recipe's named sizes that no builder has (teacher.size of family `spec`, vae.size, and the size of each
    text encoder the family reads): the trainer would refuse them only once its ranks are up."""
    from ard_scale.config.models import SLOT_SECTIONS
    from ard_scale.models.encoder_sizes import SLOT_SIZES
    from ard_scale.models.vae import SIZES as VAE_SIZES

    out = []
    if cfg.teacher.size is not None and cfg.teacher.size not in spec.sizes:
        out.append(
            f"teacher.size: unknown {spec.name} size {cfg.teacher.size!r}; choose one of {', '.join(spec.sizes)}, or "
            "give teacher.path (a local folder) instead"
        )
    if cfg.vae.size is not None and cfg.vae.size not in VAE_SIZES:
        out.append(
            f"vae.size: unknown size {cfg.vae.size!r}; choose one of {', '.join(VAE_SIZES)}, or give vae.path (a local "
            "folder) instead"
        )
    for slot in spec.text_encoders:
        section, sizes = SLOT_SECTIONS[slot], SLOT_SIZES[slot]
        size = getattr(cfg, section).size
        if size is not None and size not in sizes:
            out.append(
                f"{section}.size: unknown size {size!r}; choose one of {', '.join(sizes)}, or give {section}.path (a "
                "local folder) instead"
            )
    return out


def fit_problems(cfg) -> list[str]:
    """`teacher_problems` of the recipe's teacher, from teacher.size or teacher.path's config.json and the VAE's
    config; [] where those are not on this machine (`missing_paths` says so)."""
    from ard_scale.models.families import get_family
    from ard_scale.models.teachers import family_of_folder, other_family
    from ard_scale.models.vae import vae_downsample

    if cfg.teacher.size is None and cfg.teacher.path is None:
        return []
    spec = get_family(cfg.teacher.family)
    unknown = size_problems(cfg, spec)
    if unknown:  # nothing to read the architecture from
        return unknown
    try:
        path = cfg.teacher.path
        if path is not None and (problem := other_family(family_of_folder(path), path, cfg.teacher.family)):
            return [problem]
        config = teacher_config(cfg)
        down = vae_downsample(size=cfg.vae.size, path=cfg.vae.path)
    except (ValueError, OSError):  # a folder missing_paths reports
        return []
    side = cfg.data.resolution // down
    return teacher_problems(cfg, spec, spec.config_depth(config), configured(config), side, down)
