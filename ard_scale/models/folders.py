"""Where a recipe's local model folders keep their files, as the loaders read them, with no model library imported:
the loaders (`teachers`, `vae`, `text_encoder`) resolve their folders here, and the recipe check
(`ard_scale.config.paths`) calls the same functions, so a folder that is not what its key needs is reported before any
rank starts.

`weights_problem` is for the recipe check only: the loaders let diffusers and transformers find the weights (their
own errors are clear, but come once per rank after the engines are up). `encoder_fingerprint` names a text encoder's
weights wherever its folder lies (precomputed text records it; the recipe check compares)."""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path

from ard_scale.errors import UserError

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model",)  # diffusers' model weight file stem (teachers, VAEs)
TRANSFORMERS_WEIGHTS = ("model", "pytorch_model")  # transformers' (T5): safetensors, then the older .bin name
_NUMBERED = re.compile(r"text_encoder(_\d+)?")  # a diffusers pipeline's text encoder folders


def pipeline_subfolders(folder: str) -> tuple[str, str]:
    """(model, tokenizer) subfolders of a text encoder a diffusers pipeline keeps in `folder` (a family's
    `encoder_folders` entry): its tokenizer is the sibling numbered alike, text_encoder_2 -> tokenizer_2."""
    numbered = _NUMBERED.fullmatch(folder)
    return folder, "tokenizer" + ((numbered.group(1) or "") if numbered else "")


def held_model(folder: str | Path) -> tuple[str | None, str | None]:
    """(transformers `model_type` or None, how to name the model) that `folder`'s config.json describes: "a
    clip_text_model model (CLIPTextModel)", "a diffusers PixArtTransformer2DModel"; (None, None) where it names
    neither (a hand-written config) or cannot be read (the loader then says why)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, None
    if not isinstance(config, dict):
        return None, None
    if isinstance(config.get("_class_name"), str):
        return None, f"a diffusers {config['_class_name']}"
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return None, None
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    return model_type, f"a {model_type} model" + (f" ({', '.join(architectures)})" if architectures else "")


def _not_diffusers(folder: Path, expected: str, fix: str) -> None:
    """Raise where `folder`'s config.json is a transformers model's (a T5 or CLIP folder given as teacher or VAE):
    it is not `expected`, whatever weight files it holds; `fix`: what to give instead."""
    model_type, held = held_model(folder)
    if model_type is not None:
        raise UserError(f"{folder} holds {held}, not {expected}; {fix}")


def model_folder(path: str | Path) -> Path:
    """The diffusers model folder of teacher path `path` (the folder itself, or a pipeline folder's `transformer/`)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"teacher path {path} is not a folder; give a local diffusers model or pipeline folder")
    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        path = path / "transformer"
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a diffusers model folder: it has no config.json (nor transformer/config.json)")
    _not_diffusers(path, "a diffusers transformer", "give the teacher's diffusers model or pipeline folder")
    return path


def vae_folder(path: str | Path) -> Path:
    """The VAE folder of vae.path `path` (the folder itself, or a pipeline folder's `vae/`)."""
    path = Path(path)
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise UserError(
            f"vae.path {path} is not a diffusers AutoencoderKL folder (no config.json, nor vae/config.json); "
            "give the VAE's local folder"
        )
    _not_diffusers(folder, "a diffusers AutoencoderKL", "give the VAE's local folder (or a pipeline folder with vae/)")
    return folder


def tokenizer_folder(model_dir: str) -> str:
    """Where the tokenizer of text encoder folder `model_dir` is: the folder itself when it holds one, else, in a
    diffusers pipeline as downloaded, its sibling numbered alike (text_encoder_2/ -> tokenizer_2/), where that holds
    one; else the folder itself (and the check names what it lacks)."""
    if os.path.isfile(os.path.join(model_dir, "tokenizer_config.json")):
        return model_dir
    parent, name = os.path.split(os.path.normpath(model_dir))
    if _NUMBERED.fullmatch(name):
        sibling = os.path.join(parent, pipeline_subfolders(name)[1])
        if os.path.isfile(os.path.join(sibling, "tokenizer_config.json")):
            return sibling
    return model_dir


def check_t5_folder(path: str, folder: str = "text_encoder") -> tuple[str, str]:
    """Raise unless `path` holds a T5 encoder's config and has its tokenizer (in it, as `save_pretrained` writes
    both, or in a pipeline's sibling tokenizer folder: `tokenizer_folder`); `path` may be the family's pipeline
    folder, whose `folder` (FLUX.1: text_encoder_2, SD3: text_encoder_3) is then read. Returns the (model, tokenizer)
    folders."""
    if not os.path.isdir(path):
        raise UserError(f"T5 path {path!r} is not a local folder; save the model and tokenizer there first")
    inside = os.path.join(path, folder)
    if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(inside, "config.json")):
        path = inside  # the family's pipeline folder
    _check_kind(path, ("t5",), "a T5 encoder", key="T5 folder", inside=folder)
    tokenizer = tokenizer_folder(path)
    missing = [n for n in ("config.json",) if not os.path.isfile(os.path.join(path, n))]
    missing += [n for n in ("tokenizer_config.json",) if not os.path.isfile(os.path.join(tokenizer, n))]
    if missing:
        no_model = "config.json" in missing
        where = f" (nor {folder}/config.json, where this family's pipeline keeps T5)" if no_model else ""
        raise UserError(
            f"T5 folder {path!r} lacks model or tokenizer files {missing}{where}; save both with save_pretrained (a "
            "pipeline's text_encoder_N/ may keep its tokenizer in the sibling tokenizer_N/)"
        )
    return path, tokenizer


def _check_kind(model_dir: str, model_types: tuple[str, ...], what: str, *, key: str, inside: str) -> None:
    """Raise where `model_dir`'s config.json says it holds another kind of model than `model_types` (a CLIP folder
    given as T5 loads as a randomly initialised T5); `inside`: the pipeline subfolder the family reads it from."""
    model_type, held = held_model(model_dir)
    if held is not None and model_type not in model_types:
        raise UserError(
            f"{key} {model_dir!r} holds {held}, not {what} (model_type {' or '.join(map(repr, model_types))}); give "
            f"{what}'s folder (or a pipeline folder that keeps it in {inside}/)"
        )


def encoder_parts(path: str, model: str, tokenizer: str, *, key: str) -> tuple[str, str]:
    """(model folder, tokenizer folder): `path` itself when it holds both, else its diffusers-pipeline subfolders."""
    if not os.path.isdir(path):
        raise UserError(f"{key} {path!r} is not a local folder; save the model and its tokenizer there first")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path, tokenizer_folder(path)
    model_dir, tok_dir = os.path.join(path, model), os.path.join(path, tokenizer)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UserError(
            f"{key} {path!r} holds no config.json, nor {model}/config.json of a pipeline folder; give the text "
            "encoder's folder"
        )
    return model_dir, tok_dir if os.path.isdir(tok_dir) else model_dir


def check_encoder_folder(
    path: str, model: str, tokenizer: str, *, key: str, model_types: tuple[str, ...], what: str
) -> str:
    """Raise unless `path` (a text encoder's folder, or a pipeline folder with `model`/ and `tokenizer`/ subfolders,
    as `encoder_parts` resolves it) holds the encoder's config, of one of `model_types` (`what`: such a model, named
    for the error), and its tokenizer; returns the model folder."""
    model_dir, tok_dir = encoder_parts(path, model, tokenizer, key=key)
    _check_kind(model_dir, model_types, what, key=key, inside=model)
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer_config.json")):
        raise UserError(
            f"{key} {path!r}: {tok_dir} has no tokenizer_config.json; save the tokenizer there with save_pretrained"
        )
    return model_dir


FINGERPRINT_SPAN = 1 << 20  # bytes read at each end of every weight file


def encoder_fingerprint(path: str, folder: str) -> str | None:
    """What tells one text encoder's weights from another's without reading them all: a CRC-32 of its config.json
    and, per weight file, its name, size and first and last MiB (two fine-tunes of one architecture differ there
    too), in the folder `path` or, where that is a pipeline folder, in its `folder` (the family's `encoder_folders`
    entry). The same for a copy at another path; None where there is no config.json or a file cannot be read."""
    model_dir = Path(path)
    if not (model_dir / "config.json").is_file():
        model_dir = model_dir / folder
    try:
        crc = zlib.crc32((model_dir / "config.json").read_bytes())
        for p in sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()):
            size = p.stat().st_size
            crc = zlib.crc32(f"{p.name}:{size};".encode(), crc)
            with open(p, "rb") as f:
                crc = zlib.crc32(f.read(FINGERPRINT_SPAN), crc)
                f.seek(max(0, size - FINGERPRINT_SPAN))
                crc = zlib.crc32(f.read(FINGERPRINT_SPAN), crc)
    except OSError:
        return None
    return f"{crc:08x}"


def weights_problem(folder: str | Path, stems: tuple[str, ...]) -> str | None:
    """What keeps `from_pretrained` from finding the weights in model folder `folder`, or None: it reads
    STEM.safetensors or STEM.bin, or the shards a STEM.safetensors.index.json (or .bin.index.json) lists, all of
    them present; a variant file (STEM.fp16.safetensors) is not read without `variant=`."""
    folder = Path(folder)
    for stem in stems:
        for ext in ("safetensors", "bin"):
            if (folder / f"{stem}.{ext}").is_file():
                return None
            index = folder / f"{stem}.{ext}.index.json"
            if index.is_file():
                try:
                    shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                    return f"{index} is not a readable shard index ({type(e).__name__}: {e}); copy it again"
                missing = sorted(str(s) for s in shards if not (folder / str(s)).is_file())
                if not missing:
                    return None
                listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                return (
                    f"{folder} lacks {len(missing)} of the {len(shards)} weight shards {index.name} lists ({listed}): "
                    "an unfinished copy? Copy the missing files"
                )
    variants = sorted(p.name for stem in stems for p in folder.glob(f"{stem}.*.safetensors"))
    hint = (
        f"; it has {', '.join(variants)}, a variant the loader does not read: rename it to {stems[0]}.safetensors"
        if variants
        else f"; copy the weights ({stems[0]}.safetensors, or its shards and their .index.json) beside config.json"
    )
    return f"{folder} holds no model weights" + hint
