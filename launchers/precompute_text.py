"""Precompute caption embeddings into MDS shards, so the text encoders stay off the training GPUs.

    python launchers/precompute_text.py SHARDS OUT_DIR --t5 /models/t5-v1_1-xxl [--format mds] [--max-length 120]
    python launchers/precompute_text.py SHARDS OUT_DIR --family flux --t5 /models/flux.1-dev/text_encoder_2 \\
        --pooled-encoder /models/flux.1-dev --max-length 512
    python launchers/precompute_text.py SHARDS OUT_DIR --recipe recipes/flux_1024.yaml   # family, encoders, lengths

--recipe supplies every option it names (teacher.family, text_encoder.path / max_length, pooled_encoder.path /
max_length); options given on the command line win.

Reads a built shard set (webdataset or MDS) in storage order and writes MDS shards with its columns plus
t5_emb (max_length, D) float16 and t5_mask (max_length,) uint8, and with --pooled-encoder pooled_emb (D_pool,)
float16: CLIP's pooled embedding (FLUX.1). The loaders yield them as batch["t5_emb"], batch["t5_mask"] and
batch["pooled_emb"]. --family encodes as that family's teacher reads its text: FLUX runs T5 over the padding too,
without an attention mask, as FluxPipeline does (t5_mask is then all ones).
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from pathlib import Path

import torch
from tqdm import tqdm

from ard_scale.data.sources import iter_shard_set
from ard_scale.data.writers import MDSWriterAdapter
from ard_scale.models.families import FAMILIES, get_family
from ard_scale.models.text_encoder import encode_captions, encode_pooled, load_clip, load_t5


def _batches(iterable, size):
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("shards", help="a built shard set (folder)")
    parser.add_argument("out_dir")
    parser.add_argument("--recipe", type=Path, help="a recipe supplying the defaults below")
    parser.add_argument("--t5", help="local folder with the T5 encoder and tokenizer")
    text_families = [n for n, f in FAMILIES.items() if f.condition_kind == "text"]
    parser.add_argument("--family", choices=text_families, help="the teacher family (default pixart)")
    parser.add_argument(
        "--pooled-encoder", default=None, help="CLIP text encoder folder (or pipeline folder) for pooled_emb"
    )
    parser.add_argument("--pooled-max-length", type=int, help="CLIP tokens per caption (default 77)")
    parser.add_argument("--format", choices=["webdataset", "mds"], default="mds", help="format of SHARDS")
    parser.add_argument("--max-length", type=int, help="T5 tokens per caption (default 120; PixArt-Σ uses 300)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256 << 20, help="bytes per output shard")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    defaults = {"family": "pixart", "max_length": 120, "pooled_max_length": 77}
    if args.recipe is not None:
        from ard_scale.config import ConfigError, load_config

        try:
            cfg = load_config(args.recipe)
        except ConfigError as e:
            sys.exit(f"error: {e}")
        defaults.update(
            family=cfg.teacher.family, t5=cfg.text_encoder.path, max_length=cfg.text_encoder.max_length,
            pooled_encoder=cfg.pooled_encoder.path, pooled_max_length=cfg.pooled_encoder.max_length,
        )  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.t5 is None:
        parser.error("give --t5 FOLDER (or a --recipe with text_encoder.path)")
    family = get_family(args.family)
    if not family.precomputed_text:
        parser.error(
            f"--family {args.family} conditions on more than T5 tokens and a pooled embedding (SD3: CLIP token "
            "embeddings too), which this launcher does not write; train it with text_encoder.use_precomputed=false"
        )
    if "clip" in family.text_encoders and args.pooled_encoder is None:
        parser.error(f"--family {args.family} reads CLIP's pooled embedding too: give --pooled-encoder")
    try:
        encoder, tokenizer = load_t5(args.t5, device=args.device)
        pooled = None if args.pooled_encoder is None else load_clip(args.pooled_encoder, device=args.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    writer, num_written = None, 0
    progress = tqdm(desc="captions", unit="caption", file=sys.stderr)
    for batch in _batches(iter_shard_set(args.shards, args.format), args.batch_size):
        captions = [s["caption"] for s in batch]
        emb_BLD, mask_BL = encode_captions(
            encoder, tokenizer, captions, max_length=args.max_length, use_mask=family.text_mask
        )
        if mask_BL is None:  # the teacher reads every token
            mask_BL = torch.ones(emb_BLD.shape[:2], dtype=torch.uint8)
        columns = {"t5_emb": emb_BLD.half().cpu().numpy(), "t5_mask": mask_BL.to(torch.uint8).cpu().numpy()}
        if pooled is not None:
            pooled_BD = encode_pooled(*pooled, captions, max_length=args.pooled_max_length)
            columns["pooled_emb"] = pooled_BD.half().cpu().numpy()
        if writer is None:
            with_label = batch[0].get("label") is not None
            writer = MDSWriterAdapter(
                args.out_dir, shard_bytes=args.shard_size, with_label=with_label, with_t5=True,
                with_pooled=pooled is not None,
            )  # fmt: skip
        for i, sample in enumerate(batch):
            writer.write({**sample, **{name: values[i] for name, values in columns.items()}})
        num_written += len(batch)
        progress.update(len(batch))
    if writer is None:
        raise SystemExit(f"no sample in {args.shards!r}; nothing written")
    writer.finish()
    what = "T5 and pooled CLIP embeddings" if pooled is not None else "T5 embeddings"
    print(f"wrote {num_written} samples with {what} to {args.out_dir}")
    return num_written


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # a bad recipe (ConfigError), encoder folder or shard set: its cause, without a traceback
        sys.exit(f"error: {e}")
