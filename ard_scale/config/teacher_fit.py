"""What the teacher's architecture refuses of a recipe, found before anything is built: a teacher folder of another
family, a student.num_causal_layers beyond its depth, gan.layers it does not have, a data.resolution its fixed
positional embedding does not take.

`python -m ard_scale.config`, launchers/train.py (through `check_paths`) and the planner ask it; the trainer's own
checks (`ARDConfig.validate`, `Family.check_latent_side`, the GAN backbone) would otherwise find these only after the
engines are up. The architecture is read from teacher.size or teacher.path's config.json, on the meta device: no
weights are loaded."""

from __future__ import annotations


def teacher_problems(cfg, teacher, side: int) -> list[str]:
    """`teacher`: the recipe's teacher (on meta is enough); `side`: the latent side at data.resolution."""
    out = []
    depth_problem = cfg.student.depth_problem(teacher.depth)
    if depth_problem is not None:
        out.append(f"student.{depth_problem}")
    layers = cfg.gan.layers
    if cfg.gan.enabled and layers is not None and any(i >= teacher.depth for i in layers):
        out.append(f"gan.layers: {list(layers)}, but the teacher has blocks 0..{teacher.depth - 1}")
    try:
        teacher.spec.check_latent_side(teacher.model, side)
    except ValueError as e:
        out.append(str(e))
    return out


def fit_problems(cfg) -> list[str]:
    """`teacher_problems` of the recipe's teacher, built on meta from teacher.size or teacher.path's config.json and
    the VAE's config; [] where those are not on this machine (`missing_paths` says so)."""
    from ard_scale.models.teachers import other_family
    from ard_scale.models.vae import vae_downsample
    from ard_scale.plan.meta import meta_teacher

    if cfg.teacher.size is None and cfg.teacher.path is None:
        return []
    try:
        if cfg.teacher.path is not None and (problem := other_family(cfg.teacher.path, cfg.teacher.family)):
            return [problem]
        teacher, _ = meta_teacher(cfg)
        side = cfg.data.resolution // vae_downsample(size=cfg.vae.size, path=cfg.vae.path)
    except (ValueError, OSError):  # a folder missing_paths reports, or a size the recipe check names
        return []
    return teacher_problems(cfg, teacher, side)
