"""Debug-size model folders for walking the text-to-image path without downloading weights.

    python -m ard_scale.assets DIR [--seed 0] [--images N]

Writes DIR/t5 (a tiny T5 encoder + byte-level tokenizer), DIR/clip (a tiny CLIP text tower + tokenizer), DIR/qwen
(a tiny Qwen2.5-VL + its tiny Qwen2 tokenizer), DIR/vae (the debug AutoencoderKL: 32 px images <-> 4×8×8 latents),
DIR/vae_qwen_image (the debug AutoencoderKLQwenImage, the same shapes) and DIR/<family> for every text-to-image family
(random debug teachers as diffusers folders: pixart, flux, qwen_image, …), each loadable by the recipe keys that take a
path: text_encoder.path, pooled_encoder.path, qwen_encoder.path, vae.path, teacher.path. They are the recipes' `size:
debug` (`debug_qwen_image`) architectures, saved, so every path-based step (precompute_text.py, dump_trajectories.py,
export) can be tried on a laptop. With `--images N` it also writes DIR/images: the first N bundled digits as a folder
of PNGs and .txt captions ("a handwritten digit seven"), the layout launchers/build_shards.py reads, to stand in for
your own data.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write_debug_assets(out: str | Path, *, seed: int = 0, num_images: int = 0) -> dict[str, Path]:
    """The folders named in the module docstring (DIR/images with `num_images` > 0); returns {name: folder}."""
    from ard_scale.models.families import FAMILIES
    from ard_scale.models.teachers import build_teacher
    from ard_scale.models.text_encoder import build_clip, build_qwen, build_t5
    from ard_scale.models.vae import build_codec

    out = Path(out)
    families = [name for name, family in FAMILIES.items() if family.condition_kind == "text"]
    folders = {name: out / name for name in ("t5", "clip", "qwen", "vae", "vae_qwen_image", *families)}
    for name, build in (("t5", build_t5), ("clip", build_clip), ("qwen", build_qwen)):
        model, tokenizer = build("debug", seed=seed)
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    for name, size in (("vae", "debug"), ("vae_qwen_image", "debug_qwen_image")):
        codec = build_codec(size=size, path=None, scaling_factor=None, channels=4, seed=seed)
        codec.vae.save_pretrained(folders[name])
    for family in families:
        build_teacher(family, "debug", seed=seed).model.save_pretrained(folders[family])
    if num_images:
        from ard_scale.data.bundled import write_digit_folder

        folders["images"] = out / "images"
        write_digit_folder(str(folders["images"]), num_images)
    return folders


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m ard_scale.assets", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("out", type=Path, help="folder to write the debug models into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=0, help="also write N digits as an image + caption folder")
    args = parser.parse_args(argv)
    folders = write_debug_assets(args.out, seed=args.seed, num_images=args.images)
    for name, folder in folders.items():
        print(f"{name:7s} {folder}")
    return folders


if __name__ == "__main__":
    main()
