"""Every local path a recipe names, checked at once before anything is built (launchers/train.py, `python -m
ard_scale.config`): one `ConfigError` listing all missing ones, instead of one traceback per rank per path after
the engines are up. `load_config` itself does not check paths, so a recipe stays loadable elsewhere (the planner,
an exported pipeline's `recipe.yaml`)."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

from ard_scale.config.loader import ConfigError
from ard_scale.config.schema import ConfigWarning
from ard_scale.errors import UserError


def _shard_problem(path: str | None, format: str) -> str | None:
    """What the `format` reader would refuse about data.path `path` (a folder, and for webdataset also a shard index
    .json or a brace pattern), found as the reader finds it but without reading a shard; None if nothing."""
    from ard_scale.data.bundled import resolve_data_path
    from ard_scale.data.shard_paths import check_shard_path

    if path is None:
        return None
    try:
        check_shard_path(resolve_data_path(path), format)
    except ValueError as e:
        return str(e)
    return None


def _encoding_problems(cfg, spec) -> list[str]:
    """Precomputed shards that cannot serve the recipe: no null condition stored for a CFG teacher whose encoders
    the recipe does not name, or an encoding (text_encoding.json, written by launchers/precompute_text.py) for
    another family or other encoder sizes and token counts than the recipe names."""
    from ard_scale.config.models import unnamed_encoders
    from ard_scale.data.text_encoding import NULL_FILE, read_text_encoding

    if spec is None or spec.condition_kind != "text" or cfg.data.path is None or not os.path.isdir(cfg.data.path):
        return []
    out = []
    unnamed = unnamed_encoders(cfg, spec)
    guided = spec.guidance == "cfg" and cfg.diffusion.guidance_scale != 1
    if guided and unnamed and not os.path.isfile(os.path.join(cfg.data.path, NULL_FILE)):
        out.append(
            f"{unnamed[0]}.path: guidance needs the null caption's condition, which the shards in data.path do not "
            f"hold (no {NULL_FILE}: precomputed by an older launchers/precompute_text.py); give "
            f"{', '.join(n + '.path' for n in unnamed)} (the encoders run once, for the null caption), run "
            "precompute_text.py again, or set diffusion.guidance_scale=1"
        )
    try:
        record = read_text_encoding(cfg.data.path)
    except ValueError as e:
        return [*out, f"data.path: {e}"]
    if record is None:  # shards precomputed before the record existed
        return out
    stored = record.get("captions", "as given")  # recorded since PixArt's captions are lower-cased and stripped
    if record["family"] == spec.name and stored != spec.captions:
        warnings.warn(
            f"data.path: its captions were encoded {stored}, and {spec.name}'s pipeline encodes a prompt "
            f"{spec.captions}, as the trainer does for evaluation prompts and an exported pipeline for yours: the "
            "student learns from slightly other embeddings than it will be given. Run launchers/precompute_text.py "
            "again to match (nothing to do where every caption already reads the same both ways)",
            ConfigWarning,
            stacklevel=1,
        )

    differing = recipe_encoding_mismatches(cfg, spec, record)
    if differing:
        out.append(
            f"data.path: its text was precomputed otherwise than this recipe encodes it ({'; '.join(differing)}): "
            "run launchers/precompute_text.py SHARDS OUT --recipe RECIPE with this recipe, or match the recipe to "
            "the shards"
        )
    return out


def recipe_encoding_mismatches(cfg, spec, record: dict) -> list[str]:
    """How the text encoders recipe `cfg` names (family `spec`'s slots it gives a path or size) differ from the
    encoding of precomputed shards, `record` (their text_encoding.json): `encoding_mismatches` lines, [] if none."""
    from ard_scale.config.models import SLOT_SECTIONS
    from ard_scale.data.text_encoding import encoding_mismatches
    from ard_scale.models.folders import encoder_fingerprint

    def fingerprint(slot, s):
        return None if s.path is None else encoder_fingerprint(s.path, spec.encoder_folders[slot])

    sections = {slot: (SLOT_SECTIONS[slot], getattr(cfg, SLOT_SECTIONS[slot])) for slot in spec.text_encoders}
    fields = {  # the encoders the recipe names: those it would run (for the null caption, in evaluation)
        slot: (name, {"path": s.path, "size": s.size, "max_length": s.max_length, "fingerprint": fingerprint(slot, s)})
        for slot, (name, s) in sections.items()
        if s.path is not None or s.size is not None
    }
    return encoding_mismatches(record, spec.name, fields)


def missing_paths(cfg) -> list[str]:
    """'key: path — what it should be' for every path of `cfg` that does not exist here (remote URLs skipped), or
    that is a model folder without the files its loader reads (the teacher, T5, CLIP, Qwen2.5-VL and VAE folders:
    config, tokenizer, weights, every shard a sharded checkpoint's index lists), or shards the data reader would
    refuse."""
    from ard_scale.config.models import family_spec
    from ard_scale.data.bundled import resolve_data_path
    from ard_scale.data.shard_paths import is_remote, wildcard_hint
    from ard_scale.models.folders import (
        DIFFUSERS_WEIGHTS,
        TRANSFORMERS_WEIGHTS,
        check_encoder_folder,
        check_t5_folder,
        model_folder,
        pipeline_subfolders,
        vae_folder,
        weights_problem,
    )

    out = []
    spec = family_spec(cfg.teacher.family)

    def with_weights(folder_of, stems):
        """A folder rule that also wants the weights its loader reads in the folder it resolves to."""

        def holds(path):
            problem = weights_problem(folder_of(path), stems)
            if problem is not None:
                raise UserError(problem)

        return holds

    def folder_of(slot: str) -> str:  # where the family's pipeline folder keeps the slot's encoder
        return spec.encoder_folders[slot] if spec is not None else "text_encoder"

    def t5_folder(path):
        return check_t5_folder(path, folder_of("t5"))[0]

    def need(key: str, path: str | None, what: str, *, folder: bool = True, holds=None) -> None:
        if path is None or is_remote(path):
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
            out.append(f"{key}: {path!r} is not an existing {kind} ({what}){wildcard_hint(path, f'the {kind} itself')}")
        elif holds is not None:
            try:
                holds(path)
            except ValueError as e:
                out.append(f"{key}: {str(e).removeprefix(f'{key} ')}")

    teacher_holds = with_weights(model_folder, DIFFUSERS_WEIGHTS)
    need("teacher.path", cfg.teacher.path, "a local diffusers model or pipeline folder", holds=teacher_holds)

    def reads(slot: str) -> bool:  # an encoder the family ignores is a warning of ConfigError's, not a missing file
        return spec is None or slot in spec.text_encoders

    if reads("t5"):
        t5_holds = with_weights(t5_folder, TRANSFORMERS_WEIGHTS)
        need("text_encoder.path", cfg.text_encoder.path, "the T5 encoder and its tokenizer", holds=t5_holds)
    clip = ("clip_text_model",), "a CLIP text encoder"  # the model_type the loader reads, and its name
    encoders = [  # (section, the family's slot for it, what it holds, (model_types, the model's name))
        ("pooled_encoder", "clip", "the CLIP text encoder and its tokenizer", clip),
        ("pooled_encoder_2", "clip_2", "the second CLIP text encoder and its tokenizer", clip),
        (
            "qwen_encoder",
            "qwen",
            "Qwen2.5-VL and its tokenizer, or the pipeline folder",
            (("qwen2_5_vl",), "Qwen2.5-VL"),
        ),
    ]
    for section, slot, what, (model_types, model_name) in filter(lambda e: reads(e[1]), encoders):
        key, (model, tokenizer) = f"{section}.path", pipeline_subfolders(folder_of(slot))
        model_dir = functools.partial(
            check_encoder_folder, model=model, tokenizer=tokenizer, key=key, model_types=model_types, what=model_name
        )
        need(key, getattr(cfg, section).path, what, holds=with_weights(model_dir, TRANSFORMERS_WEIGHTS))
    vae_holds = with_weights(vae_folder, DIFFUSERS_WEIGHTS)
    need("vae.path", cfg.vae.path, "a diffusers AutoencoderKL folder", holds=vae_holds)
    if cfg.train.trajectory_source != "offline" or cfg.gan.enabled:
        problem = _shard_problem(cfg.data.path, cfg.data.format)
        if problem is not None and cfg.text_encoder.use_precomputed and not os.path.exists(cfg.data.path):
            problem += (
                "; with text_encoder.use_precomputed=true it is the folder launchers/precompute_text.py writes: "
                f"python launchers/precompute_text.py SHARDS {cfg.data.path} --recipe RECIPE"
            )
        out += [] if problem is None else [f"data.path: {problem}"]
        if problem is None and cfg.text_encoder.use_precomputed:
            out += _encoding_problems(cfg, spec)
    if cfg.train.trajectory_source == "offline":
        need("data.trajectory_path", cfg.data.trajectory_path, "a dump of launchers/dump_trajectories.py")
    if cfg.gan.enabled:
        # read by a fresh run only: a resume continues from its own checkpoints, so a regression run moved or deleted
        # since the GAN stage started must not stop its requeued job
        if not (Path(cfg.checkpoint.run_dir) / "checkpoints" / "latest").is_file():
            need("gan.init_from", cfg.gan.init_from, "the run directory of a trained regression run")
        init, run = cfg.gan.init_from, cfg.checkpoint.run_dir
        if init is not None and not is_remote(init) and os.path.realpath(init) == os.path.realpath(run):
            # resuming the regression run's own checkpoints as the GAN stage: retention would delete them
            out.append(
                f"gan.init_from: {init!r} is this run's own checkpoint.run_dir; the GAN stage starts from that run "
                "into a folder of its own (its checkpoints would replace the regression run's): give it another "
                "checkpoint.run_dir, e.g. checkpoint.run_dir=RUN_gan"
            )
    if cfg.eval.every is not None:
        ev = cfg.eval
        need("eval.fid_inception_path", ev.fid_inception_path, "pt_inception-2015-12-05 weights", folder=False)
        need("eval.fid_reference_path", ev.fid_reference_path, "an .npz of reference statistics", folder=False)
        need("eval.prompts_path", ev.prompts_path, "a text file, one prompt per line", folder=False)
        if ev.clip_path is not None and not os.path.exists(ev.clip_path):
            out.append(f"eval.clip_path: {ev.clip_path!r} does not exist (local open_clip weights)")
    return out


def check_paths(cfg, *, source: str = "recipe") -> None:
    """Raise one ConfigError naming every missing path of `cfg`, or else every setting its teacher's architecture
    refuses (`teacher_fit`)."""
    from ard_scale.config.teacher_fit import fit_problems

    problems = missing_paths(cfg) or fit_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
