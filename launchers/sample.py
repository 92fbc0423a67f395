"""Sample images from an exported ARD student: one PNG per sample and a labelled grid.

    python launchers/sample.py PIPELINE_DIR --prompt "a red circle on white" [--prompt ...] [--out DIR] [--seed 0]
    python launchers/sample.py PIPELINE_DIR --prompts-file prompts.txt        # one prompt per line
    python launchers/sample.py PIPELINE_DIR --class-labels 1 2 3              # class-conditional students
    python launchers/sample.py PIPELINE_DIR --prompt "a tall tower" --height 1344 --width 768   # another size

PIPELINE_DIR is a folder written by launchers/export.py (ard_scale.pipeline.ARDPipeline: the KV-cached S-step
sampler, the recipe's text encoders, decoding through the VAE). Sample i starts from noise seeded `seed + i`, so a
prompt's image does not depend on the others in the batch. Writes OUT/sample_000.png … (as many digits as the count
needs: sample_0000.png … from 1,001 samples on, so that the names sort in sample order) and OUT/grid.png (the prompt or
class under each image), whole or not at all; an OUT that exists and is not an empty folder is refused before any
sampling (choose a new one).

A bare student folder (export.py --student-only) has no text encoder or VAE: give --prompts-embeddings FILE (a
torch file with T5 embeddings (B, L, C), or a dict {"text", "text_mask", "pooled"}) or --class-labels; its latents
are shown as channels 0..2, min-max normalised.

Every file of the folder is checked against its `ard_checksums.json` first (a damaged file is an error naming it and
the export command that writes the folder again); --no-verify skips that read.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.utils.cli import local_path  # noqa: E402


def latents_to_uint8(x_BCHW: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) states of a bare student -> (B, H, W, 3) uint8: pixels as they are, latents min-max'd."""
    if x_BCHW.shape[1] in (1, 3):  # pixel space
        img = (x_BCHW.clamp(-1, 1) + 1) / 2
    else:  # latents: channels 0..2, per-image min-max
        img = x_BCHW[:, :3]
        lo = img.amin(dim=(1, 2, 3), keepdim=True)
        hi = img.amax(dim=(1, 2, 3), keepdim=True)
        img = (img - lo) / (hi - lo).clamp(min=1e-8)
    img = img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
    return (img.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def read_prompts(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --prompts-file {path}: {e}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompt (one per line)")
    return prompts


EMBEDDING_KEYS = ("text", "text_mask", "pooled")


def read_embeddings(path: Path, student) -> dict[str, torch.Tensor]:
    """--prompts-embeddings: a (B, L, D) tensor of text embeddings, or a dict of them ("text") with a (B, L) mask
    ("text_mask") and a (B, D_pool) pooled embedding ("pooled"), checked against the shapes `student` reads (its
    family's `example_condition`); the text and pooled embeddings in fp32 (the shards store float16)."""
    what = f"--prompts-embeddings {path}"
    if student.family.condition_kind != "text":
        raise ValueError(f"{what}: this {student.family.name} student is class-conditional; give --class-labels")
    try:
        emb = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise ValueError(f"cannot read {what}: {e}") from None
    emb = emb if isinstance(emb, dict) else {"text": emb}
    if "text" not in emb or set(emb) - set(EMBEDDING_KEYS):
        raise ValueError(f"{what}: a dict must hold 'text' and may hold 'text_mask' and 'pooled'; got {sorted(emb)}")
    example = student.family.example_condition(student.backbone, 1, "cpu", 1)
    width = example.text.shape[-1]
    text = emb["text"]
    if not isinstance(text, torch.Tensor) or text.ndim != 3 or not text.is_floating_point() or text.shape[-1] != width:
        got = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
        raise ValueError(
            f"{what}: the text embeddings must be a float tensor (prompts, tokens, {width}), got {got} (one prompt's "
            "(tokens, width) embedding: add a batch dimension, text[None])"
        )
    B, L = text.shape[:2]
    wanted = {"text_mask": (B, L), "pooled": None if example.pooled is None else (B, example.pooled.shape[-1])}
    for key, shape in wanted.items():
        value = emb.get(key)
        if value is None and key == "pooled" and shape is not None:
            raise ValueError(
                f"{what}: this {student.family.name} student also reads a pooled text embedding: give a dict with "
                f"'text' and 'pooled' {shape}"
            )
        if value is None:
            continue
        if shape is None:
            raise ValueError(f"{what}: this {student.family.name} student reads no {key!r}; leave it out")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{what}: {key!r} must be {shape} beside text of shape {(B, L, width)}; got {got}")
    return {k: (v.float() if k != "text_mask" else v) for k, v in emb.items() if v is not None}


def check_condition_flags(args, student, pipeline: bool) -> None:
    """Refuse the conditioning flag a student cannot take (prompts for a class-conditional one, class labels for a
    text-to-image one) with the flags it takes, before sampling. `pipeline`: a pipeline folder (it encodes prompts),
    else a bare student folder (text embeddings only)."""
    family = student.family
    if family.condition_kind == "labels" and args.class_labels is None:
        given = "--prompts-embeddings" if args.prompts_embeddings is not None else "--prompt/--prompts-file"
        num_classes = family.num_classes(student.backbone)
        labels = "" if num_classes is None else f" (0..{num_classes - 1})"
        raise ValueError(
            f"{args.export_dir} holds a class-conditional {family.name} student: give --class-labels{labels}, not "
            f"{given}"
        )
    if family.condition_kind == "text" and args.class_labels is not None:
        takes = (
            "--prompt or --prompts-file"
            if pipeline
            else "--prompts-embeddings (a bare student folder has no text encoder; a pipeline folder takes --prompt)"
        )
        raise ValueError(
            f"{args.export_dir} holds a text-to-image {family.name} student: give {takes}, not --class-labels"
        )


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("export_dir", type=local_path, help="a folder written by launchers/export.py")
    cond_arg = parser.add_mutually_exclusive_group(required=True)
    cond_arg.add_argument("--prompt", action="append", help="a text prompt (repeat for more)")
    cond_arg.add_argument("--prompts-file", type=local_path, help="a text file, one prompt per line")
    cond_arg.add_argument("--class-labels", "--labels", type=int, nargs="+", help="class labels, one sample each")
    cond_arg.add_argument(
        "--prompts-embeddings", type=local_path, help="bare student folders: T5 embeddings (see above)"
    )
    parser.add_argument("--out", type=local_path, default=Path("samples"), help="output folder (default ./samples)")
    parser.add_argument("--teacher", type=local_path, default=None, help="a LoRA adapter export's base teacher folder")
    parser.add_argument("--seed", type=int, default=0, help="sample i starts from the noise of seed + i")
    parser.add_argument("--ncol", type=int, default=8, help="images per grid row")
    parser.add_argument("--height", type=int, help="image height in px (default: the distilled size)")
    parser.add_argument("--width", type=int, help="image width in px (a student distilled on data.buckets takes those)")
    parser.add_argument("--save-tensor", type=local_path, default=None, help="also torch.save the final states here")
    parser.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip the checksum check of the folder"
    )
    args = parser.parse_args(argv)

    from ard_scale.utils.folders import check_new_folder, writing_folder

    try:
        check_new_folder(args.out, "samples")  # before the slow part; a grid beside older samples would mislead
        if args.save_tensor is not None and not args.save_tensor.resolve().parent.is_dir():
            raise ValueError(f"--save-tensor {args.save_tensor}: its folder {args.save_tensor.parent} does not exist")
        prompts = read_prompts(args.prompts_file) if args.prompts_file else args.prompt
        states, images, labels = _sample(args, prompts)
        with writing_folder(args.out, what="samples") as folder:  # whole or not at all, as the other tools write
            _write_samples(folder, images, labels, args.ncol)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.save_tensor is not None:
        torch.save(states, args.save_tensor)
    print(f"{len(images)} samples and grid.png in {args.out}")
    return [args.out / name for name in sample_names(len(images))]


def sample_names(n: int) -> list[str]:
    """The file names of `n` samples: sample_000.png …, numbered as wide as the count needs (sample_0000.png … from
    1,001 samples on), so that they sort in sample order."""
    width = max(3, len(str(n - 1)))
    return [f"sample_{i:0{width}d}.png" for i in range(n)]


def _write_samples(folder: Path, images: np.ndarray, labels: list[str], ncol: int) -> None:
    from PIL import Image

    from ard_scale.evaluation.grids import labelled_grid, save_png

    for name, img in zip(sample_names(len(images)), images, strict=True):
        Image.fromarray(img).save(folder / name)
    ncol = max(1, min(ncol, len(images)))
    rows = [images[i : i + ncol] for i in range(0, len(images), ncol)]
    rows[-1] = np.concatenate([rows[-1], np.full((ncol - len(rows[-1]), *images.shape[1:]), 255, np.uint8)])
    cols = [labels[i : i + ncol] + [""] * (ncol - len(labels[i : i + ncol])) for i in range(0, len(labels), ncol)]
    parts = [labelled_grid([row], col) for row, col in zip(rows, cols, strict=True)]
    save_png(folder / "grid.png", np.concatenate(parts, axis=0))


def _noise(shape: tuple[int, ...], n: int, seed: int) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def _sample(args, prompts: list[str] | None) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    from ard_scale.pipeline import MODEL_INDEX, ARDPipeline

    if (args.export_dir / MODEL_INDEX).is_file():
        if args.prompts_embeddings is not None:
            raise ValueError("--prompts-embeddings is for bare student folders; give --prompt to a pipeline")
        if args.teacher is not None:
            warnings.warn(
                f"--teacher {args.teacher} is ignored: {args.export_dir} is a pipeline folder, whose student is whole "
                "(a LoRA student is merged into it; --teacher is for --lora-adapter exports)",
                UserWarning,
                stacklevel=1,
            )
        pipe = ARDPipeline.from_pretrained(args.export_dir, verify=args.verify)
        check_condition_flags(args, pipe.student, pipeline=True)
        n = len(prompts) if prompts else len(args.class_labels)
        seeds = [torch.Generator().manual_seed(args.seed + i) for i in range(n)]  # sample i: the noise of seed + i
        out = pipe(prompts, class_labels=args.class_labels, generator=seeds, height=args.height, width=args.width,
                   output_type="pt")  # fmt: skip
        images = (out.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        labels = prompts if prompts else [f"class {c}" for c in args.class_labels]
        return out.latents, images, labels
    return _sample_bare_student(args)


def _sample_bare_student(args) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    from ard_scale.checkpoint.export import load_exported_student, sample_noise
    from ard_scale.diffusion.condition import Condition

    if args.height is not None or args.width is not None:
        raise ValueError(
            "--height/--width: a bare student folder samples at the size it was distilled at; export a pipeline "
            "(launchers/export.py without --student-only) to sample other sizes"
        )
    # --teacher: an adapter export's base
    student = load_exported_student(args.export_dir, teacher=args.teacher, verify=args.verify)
    check_condition_flags(args, student, pipeline=False)
    if args.class_labels is not None:
        from ard_scale.pipeline_args import check_label_range  # the pipeline's own check

        class_labels = torch.tensor(args.class_labels)
        check_label_range(class_labels, student.family.num_classes(student.backbone), "--class-labels")
        cond, labels = Condition(labels=class_labels), [f"class {c}" for c in args.class_labels]
    elif args.prompts_embeddings is not None:
        emb = read_embeddings(args.prompts_embeddings, student)
        n = len(emb["text"])
        guidance = None if student.guidance is None else torch.full((n,), student.guidance)
        cond = Condition(text=emb["text"], text_mask=emb.get("text_mask"), pooled=emb.get("pooled"), guidance=guidance)
        labels = [f"embedding {i}" for i in range(n)]
    else:
        raise ValueError(
            f"{args.export_dir} is a bare student folder (no {'model_index.json'}): it has no text encoder; give "
            "--prompts-embeddings, or export a pipeline (launchers/export.py without --student-only)"
        )
    shape = tuple(sample_noise(student, 1, args.seed).shape[1:])
    x = student.sample(_noise(shape, cond.batch_size, args.seed), cond)  # KV-cached, S network passes
    return x, latents_to_uint8(x), labels


if __name__ == "__main__":
    main()
