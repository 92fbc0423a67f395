"""Every local path a recipe names, checked at once before anything is built (launchers/train.py, `python -m
ard_scale.config`): one `ConfigError` listing all missing ones, instead of one traceback per rank per path after
the engines are up. `load_config` itself does not check paths, so a recipe stays loadable elsewhere (the planner,
an exported pipeline's `recipe.yaml`)."""

from __future__ import annotations

import os

from ard_scale.config.loader import ConfigError


def _remote(path: str) -> bool:
    return "://" in path


def missing_paths(cfg) -> list[str]:
    """'key: path — what it should be' for every path of `cfg` that does not exist here (remote URLs skipped), or
    that is a model folder without the files its loader reads (the teacher, T5 and VAE folders)."""
    from ard_scale.data.bundled import resolve_data_path
    from ard_scale.models.folders import check_t5_folder, model_folder, vae_folder

    out = []

    def need(key: str, path: str | None, what: str, *, folder: bool = True, holds=None) -> None:
        if path is None or _remote(path):
            return
        if path.startswith("bundled:"):
            try:
                path = resolve_data_path(path)
            except ValueError as e:
                out.append(f"{key}: {e}")
                return
        ok = os.path.isdir(path) if folder else os.path.isfile(path)
        if not ok:
            kind = "folder" if folder else "file"
            out.append(f"{key}: {path!r} is not an existing {kind} ({what})")
        elif holds is not None:
            try:
                holds(path)
            except ValueError as e:
                out.append(f"{key}: {str(e).removeprefix(f'{key} ')}")

    need("teacher.path", cfg.teacher.path, "a local diffusers model or pipeline folder", holds=model_folder)
    need("text_encoder.path", cfg.text_encoder.path, "the T5 encoder and its tokenizer", holds=check_t5_folder)
    need("pooled_encoder.path", cfg.pooled_encoder.path, "the CLIP text encoder and its tokenizer")
    need("pooled_encoder_2.path", cfg.pooled_encoder_2.path, "the second CLIP text encoder and its tokenizer")
    need("vae.path", cfg.vae.path, "a diffusers AutoencoderKL folder", holds=vae_folder)
    if cfg.train.trajectory_source != "offline" or cfg.gan.enabled:
        need("data.path", cfg.data.path, "built image shards: launchers/build_shards.py")
    if cfg.train.trajectory_source == "offline":
        need("data.trajectory_path", cfg.data.trajectory_path, "a dump of launchers/dump_trajectories.py")
    if cfg.gan.enabled:
        need("gan.init_from", cfg.gan.init_from, "the run directory of a trained regression run")
    if cfg.eval.every is not None:
        ev = cfg.eval
        need("eval.fid_inception_path", ev.fid_inception_path, "pt_inception-2015-12-05 weights", folder=False)
        need("eval.fid_reference_path", ev.fid_reference_path, "an .npz of reference statistics", folder=False)
        need("eval.prompts_path", ev.prompts_path, "a text file, one prompt per line", folder=False)
        if ev.clip_path is not None and not os.path.exists(ev.clip_path):
            out.append(f"eval.clip_path: {ev.clip_path!r} does not exist (local open_clip weights)")
    return out


def check_paths(cfg, *, source: str = "recipe") -> None:
    """Raise one ConfigError naming every missing path of `cfg`."""
    missing = missing_paths(cfg)
    if missing:
        raise ConfigError(source, missing)
