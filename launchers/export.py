"""Export a run's newest complete checkpoint as an ARD pipeline folder (or the bare student).

    python launchers/export.py RUN_DIR [--out DIR] [--tag step_00001000] [--raw] [--link] [--student-only]
                                       [--lora-adapter [--teacher DIR]] [SECTION.KEY=VALUE ...]

Default: a pipeline folder (model_index.json, transformer/, scheduler/, text encoders, VAE, recipe.yaml; see
ard_scale/pipeline.py) that `ARDPipeline.from_pretrained(DIR)` and launchers/sample.py load. --link symlinks the
encoders and VAE to the folders the recipe named instead of copying them (a pipeline's only: refused with
--student-only or --lora-adapter). --student-only writes the student folder alone: the backbone as the teacher's
diffusers class (head 0 as its final layer), `ard_heads.safetensors` and `ard_config.json`
(ard_scale/checkpoint/export.py). Weights: the EMA when the checkpoint has one, else (and with
--raw) the raw student rebuilt from the ZeRO shards.

A LoRA student (student.lora.rank > 0) exports merged by default (a plain full student, as above). --lora-adapter
writes its trainable state alone: `pytorch_lora_weights.safetensors` in diffusers' LoRA layout (load it into the
teacher with `load_lora_adapter(folder, weight_name="pytorch_lora_weights.safetensors", prefix="transformer")`), the
heads and `ard_config.json` naming the base teacher; `load_exported_student(folder)` and launchers/sample.py apply it
to that teacher. A LoRA checkpoint has no base weights: --teacher DIR names the teacher folder if the recipe's
teacher.path has moved.

SECTION.path=DIR or SECTION.size=NAME settings of the encoder and VAE sections (text_encoder, pooled_encoder,
pooled_encoder_2, qwen_encoder, vae) change where the pipeline takes them from: a run trained on precomputed text may
name no text encoder, and a pipeline encodes prompts (e.g. qwen_encoder.path=/models/qwen-image); an encoder other than
the one the run's shards were encoded with (their text_encoding.json, where data.path is at hand) is refused. Their
other keys (max_length, scaling_factor, ...) are the checkpoint recipe's, what the student was trained with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.utils.cli import local_path  # noqa: E402


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("run_dir", type=local_path, help="the run's checkpoint.run_dir")
    parser.add_argument(
        "overrides", nargs="*", help="pipeline only: encoder/VAE settings, e.g. qwen_encoder.path=/models/qwen-image"
    )
    parser.add_argument("--out", type=local_path, default=None, help="export folder (default: RUN_DIR/export/<tag>)")
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: the one `latest` names)")
    parser.add_argument("--raw", action="store_true", help="export the raw weights even if an EMA exists")
    parser.add_argument("--link", action="store_true", help="symlink encoders and VAE instead of copying them")
    parser.add_argument("--student-only", action="store_true", help="the student folder alone, no pipeline")
    parser.add_argument("--lora-adapter", action="store_true", help="a LoRA student's adapters + heads only")
    parser.add_argument("--teacher", type=local_path, default=None, help="a LoRA student's base teacher folder")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options

    from ard_scale.checkpoint.export import export_student, resolve_tag
    from ard_scale.pipeline import export_pipeline

    try:
        if args.student_only or args.lora_adapter:  # before the checkpoint is read
            student_flag = "--student-only" if args.student_only else "--lora-adapter"
            if args.overrides:
                raise ValueError("encoder/VAE overrides are for a pipeline export; a student folder holds neither")
            if args.link:
                raise ValueError(
                    f"--link links a pipeline's encoders and VAE, and a {student_flag} folder holds neither: leave out "
                    f"--link (or leave out {student_flag} to export a pipeline that links them)"
                )
        tag = resolve_tag(args.run_dir / "checkpoints", args.tag)
        out = args.out or args.run_dir / "export" / tag
        if args.student_only or args.lora_adapter:
            out = export_student(
                args.run_dir, out, tag=tag, use_ema=not args.raw, adapter_only=args.lora_adapter, teacher=args.teacher
            )
        else:
            out = export_pipeline(
                args.run_dir, out, tag=tag, use_ema=not args.raw, link=args.link, teacher=args.teacher,
                overrides=args.overrides,
            )  # fmt: skip
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(out)
    return out


if __name__ == "__main__":
    main()
