"""Where a recipe's local model folders keep their files, as the loaders read them, with no model library imported:
the loaders (`teachers`, `vae`, `text_encoder`) resolve their folders here, and the recipe check
(`ard_scale.config.paths`) calls the same functions, so a folder that is not what its key needs is reported before any
rank starts."""

from __future__ import annotations

import os
from pathlib import Path


def model_folder(path: str | Path) -> Path:
    """The diffusers model folder of teacher path `path` (the folder itself, or a pipeline folder's `transformer/`)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"teacher path {path} is not a folder; give a local diffusers model or pipeline folder")
    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        path = path / "transformer"
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a diffusers model folder: it has no config.json (nor transformer/config.json)")
    return path


def vae_folder(path: str | Path) -> Path:
    """The VAE folder of vae.path `path` (the folder itself, or a pipeline folder's `vae/`)."""
    path = Path(path)
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"vae.path {path} is not a diffusers AutoencoderKL folder (no config.json, nor vae/config.json); "
            "give the VAE's local folder"
        )
    return folder


def check_t5_folder(path: str) -> None:
    """Raise unless `path` holds a T5 encoder's config and its tokenizer, as `save_pretrained` writes them."""
    if not os.path.isdir(path):
        raise ValueError(f"T5 path {path!r} is not a local folder; save the model and tokenizer there first")
    missing = [n for n in ("config.json", "tokenizer_config.json") if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise ValueError(f"T5 folder {path!r} lacks model or tokenizer files {missing}; save both with save_pretrained")
