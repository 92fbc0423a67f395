"""Precompute caption embeddings into MDS shards, so the text encoders stay off the training GPUs.

    python launchers/precompute_text.py SHARDS OUT_DIR --recipe recipes/qwen_image_1024.yaml   # every family
    python launchers/precompute_text.py SHARDS OUT_DIR --t5 /models/t5-v1_1-xxl [--format mds] [--max-length 120]
    python launchers/precompute_text.py SHARDS OUT_DIR --family flux --t5 /models/flux.1-dev/text_encoder_2 \\
        --pooled-encoder /models/flux.1-dev --max-length 512

--recipe supplies the family and every encoder section it reads (text_encoder, pooled_encoder, pooled_encoder_2,
qwen_encoder: path or debug size, max_length) and Qwen2.5-VL's dtype (train.precision); --t5, --pooled-encoder,
--max-length and --pooled-max-length on the command line win. Without a recipe the options name a T5 (and a CLIP
for FLUX.1); SD3 and Qwen-Image need the recipe.

Reads a built shard set (webdataset or MDS) in storage order and writes MDS shards with its columns plus the text
the family's teacher reads, encoded and combined exactly as the trainer's Conditioner does
(`ard_scale.trainer.conditioning.encode_text`): t5_emb (L, D) float16 — T5's tokens for PixArt and FLUX.1, CLIP-L ‖
CLIP-G ‖ T5 for SD3, Qwen2.5-VL's hidden states for Qwen-Image —, t5_mask (L,) uint8 (all ones where the teacher
attends to padding, as FLUX.1 and SD3 do) and, for families with a CLIP slot, pooled_emb (D_pool,) float16. The
loaders yield them as batch["t5_emb"], batch["t5_mask"] and batch["pooled_emb"]; a recipe with
text_encoder.use_precomputed=true trains on them. Beside the shards: `null_condition.safetensors`, the family's null
caption encoded the same way (a CFG teacher's trainer then loads no text encoder at all), and `text_encoding.json`,
the family and each encoder's source, max_length and weights' fingerprint, which the recipe check compares with the
recipe (ard_scale/data/text_encoding.py). OUT_DIR must be new or empty; it appears when the last file is written
(a failed run leaves none).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import replace
from itertools import islice

import torch
from tqdm import tqdm

from ard_scale.data.sources import iter_shard_set
from ard_scale.data.writers import MDSWriterAdapter
from ard_scale.models.families import FAMILIES, get_family
from ard_scale.utils.cli import count, local_path


def _batches(iterable, size):
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


def _half(x: torch.Tensor, name: str):
    """`x` as the float16 array the shards store; a value float16 cannot hold is an error, not an inf in the data."""
    half = x.half()
    if not bool(torch.isfinite(half).all()):
        worst = float(x.float().abs().max())
        raise ValueError(
            f"{name}: the encoders gave values up to {worst:.4g}, beyond float16 (max 65504) or non-finite; these "
            "captions' embeddings cannot be stored as float16: check the encoder weights and dtype"
        )
    return half.cpu().numpy()


def _source(section, folder: str) -> dict:
    """What text_encoding.json records of an encoder's section; `folder`: where the family's pipeline keeps it."""
    from ard_scale.models.folders import encoder_fingerprint

    fingerprint = None if section.path is None else encoder_fingerprint(section.path, folder)
    return {"path": section.path, "size": section.size, "max_length": section.max_length, "fingerprint": fingerprint}


def _encoder_sections(args) -> tuple[type, dict, torch.dtype, torch.dtype]:
    """(family, slot -> encoder section, Qwen2.5-VL's dtype, T5's dtype) from --recipe and the options, which win:
    the run's, as the trainer encodes (T5 in fp32 unless the recipe's text_encoder.precision is 'run')."""
    from ard_scale.config.models import PooledEncoderConfig, QwenEncoderConfig, TextEncoderConfig
    from ard_scale.trainer.build import PRECISIONS

    if args.recipe is not None:
        from ard_scale.config import load_config

        cfg = load_config(args.recipe)  # a ConfigError is a ValueError: main's caller prints it
        family_name, dtype = args.family or cfg.teacher.family, PRECISIONS[cfg.train.precision]
        t5_dtype = PRECISIONS[cfg.text_encoder.dtype_name(cfg.train.precision)]
        t5, clip = cfg.text_encoder, cfg.pooled_encoder
        clip_2, qwen = cfg.pooled_encoder_2, cfg.qwen_encoder
    else:
        family_name, dtype, t5_dtype = args.family or "pixart", torch.float32, torch.float32
        t5, clip = TextEncoderConfig(max_length=120), PooledEncoderConfig()
        clip_2, qwen = PooledEncoderConfig(), QwenEncoderConfig()
    if args.t5 is not None:
        t5 = replace(t5, path=args.t5, size=None)
    if args.max_length is not None:
        t5 = replace(t5, max_length=args.max_length)
    if args.pooled_encoder is not None:
        clip = replace(clip, path=args.pooled_encoder, size=None)
    if args.pooled_max_length is not None:
        clip = replace(clip, max_length=args.pooled_max_length)
    family = get_family(family_name)
    if family.condition_kind != "text":
        raise ValueError(f"family {family_name!r} is class-conditional: its shards carry labels, no text to encode")
    sections = {"t5": t5, "clip": clip, "clip_2": clip_2, "qwen": qwen}
    missing = [slot for slot in family.text_encoders if sections[slot].path is None and sections[slot].size is None]
    if missing:
        options = {"t5": "--t5 FOLDER", "clip": "--pooled-encoder FOLDER"}
        raise ValueError(
            f"--family {family_name} reads the {' and '.join(missing)} encoder(s): give "
            + " and ".join(options.get(slot, "--recipe RECIPE") for slot in missing)
            + " (or a --recipe that names them)"
        )
    return family, sections, dtype, t5_dtype


def _write(args, family, encoders: dict, sections: dict, out_dir: str) -> tuple[int, Counter]:
    """Every caption of the shard set encoded into MDS shards in `out_dir`, then the null condition and the record of
    the encoding beside them; returns the number of samples, and those skipped by reason (what training would skip:
    `iter_shard_set`)."""
    from ard_scale.data.text_encoding import write_text_encoding
    from ard_scale.trainer.conditioning import SLOTS, encode_text

    writer, num_written, skipped = None, 0, Counter()
    progress = tqdm(desc="captions", unit="caption", file=sys.stderr)
    for batch in _batches(iter_shard_set(args.shards, args.format, skipped), args.batch_size):
        text = encode_text(family, encoders, [s["caption"] for s in batch])
        mask_BL = text.mask if text.mask is not None else torch.ones(text.tokens.shape[:2])  # reads every token
        columns = {"t5_emb": _half(text.tokens, "t5_emb"), "t5_mask": mask_BL.to(torch.uint8).cpu().numpy()}
        if text.pooled is not None:
            columns["pooled_emb"] = _half(text.pooled, "pooled_emb")
        if writer is None:  # a label column whatever the first sample holds (-1: none), as build_shards writes
            writer = MDSWriterAdapter(
                out_dir, shard_bytes=args.shard_size, with_label=True, with_t5=True, with_pooled=text.pooled is not None
            )
        for i, sample in enumerate(batch):
            writer.write({**sample, **{name: values[i] for name, values in columns.items()}})
        num_written += len(batch)
        progress.update(len(batch))
    if writer is None:
        raise SystemExit(f"no sample in {args.shards!r}; nothing written")
    writer.finish()
    null = encode_text(family, encoders, [family.null_caption])  # the null condition, so the trainer needs no encoder
    write_text_encoding(
        out_dir,
        family=family.name,
        captions=family.captions,
        sections={slot: (SLOTS[slot][0], _source(sections[slot], family.encoder_folders[slot])) for slot in encoders},
        null={"text": null.tokens[0], "text_mask": None if null.mask is None else null.mask[0],
              "pooled": None if null.pooled is None else null.pooled[0]},
    )  # fmt: skip
    return num_written, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("shards", help="a built shard set (folder)")
    parser.add_argument("out_dir")
    parser.add_argument("--recipe", type=local_path, help="a recipe supplying the defaults below")
    parser.add_argument("--t5", help="local folder with the T5 encoder and tokenizer")
    text_families = [n for n, f in FAMILIES.items() if f.condition_kind == "text"]
    parser.add_argument("--family", choices=text_families, help="the teacher family (default pixart)")
    parser.add_argument(
        "--pooled-encoder", default=None, help="CLIP text encoder folder (or pipeline folder) for pooled_emb"
    )
    parser.add_argument("--pooled-max-length", type=count(), help="CLIP tokens per caption (default 77)")
    parser.add_argument("--format", choices=["webdataset", "mds"], default="mds", help="format of SHARDS")
    parser.add_argument("--max-length", type=count(), help="T5 tokens per caption (default 120; PixArt-Σ uses 300)")
    parser.add_argument("--batch-size", type=count(), default=64)
    parser.add_argument("--shard-size", type=count(), default=256 << 20, help="bytes per output shard")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from ard_scale.data.bundled import resolve_data_path
    from ard_scale.data.shard_paths import check_shard_path
    from ard_scale.trainer.conditioning import load_text_encoders
    from ard_scale.utils.folders import check_new_folder, writing_folder

    try:  # a bad recipe (ConfigError), a used output folder, unreadable shards, a missing encoder: its cause, one line
        check_new_folder(args.out_dir, "precomputed shards")
        family, sections, dtype, t5_dtype = _encoder_sections(args)
        check_shard_path(resolve_data_path(args.shards), args.format, path_name="SHARDS", format_option="--format ")
        encoders = load_text_encoders(family, sections, dtype=dtype, t5_dtype=t5_dtype, device=args.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    with writing_folder(args.out_dir, what="precomputed shards") as out:  # whole or not at all
        num_written, skipped = _write(args, family, encoders, sections, str(out))
    what = " + ".join(encoders) + " embeddings" + (" with the pooled one" if "clip" in encoders else "")
    print(f"wrote {num_written} samples with {family.name}'s {what} to {args.out_dir}")
    if skipped:  # as build_shards reports them
        print(f"skipped {sum(skipped.values())}" + "".join(f"\n  {n:6d}  {why}" for why, n in skipped.most_common()))
    return num_written


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # a bad recipe (ConfigError), encoder folder or shard set: its cause, without a traceback
        sys.exit(f"error: {e}")
