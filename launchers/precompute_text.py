"""Precompute T5 caption embeddings into MDS shards, so the T5 encoder stays off the training GPUs.

    python launchers/precompute_text.py SHARDS OUT_DIR --t5 /models/t5-v1_1-xxl [--format mds] [--max-length 120]

Reads a built shard set (webdataset or MDS) in storage order and writes MDS shards with its columns plus
t5_emb (max_length, D) float16 and t5_mask (max_length,) uint8; the loaders yield them as batch["t5_emb"]
and batch["t5_mask"].
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice

import torch
from tqdm import tqdm

from ard_scale.data.sources import iter_shard_set
from ard_scale.data.writers import MDSWriterAdapter
from ard_scale.models.text_encoder import encode_captions, load_t5


def _batches(iterable, size):
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", help="a built shard set (folder)")
    parser.add_argument("out_dir")
    parser.add_argument("--t5", required=True, help="local folder with the T5 encoder and tokenizer")
    parser.add_argument("--format", choices=["webdataset", "mds"], default="mds", help="format of SHARDS")
    parser.add_argument("--max-length", type=int, default=120, help="tokens per caption (PixArt-Σ uses 300)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256 << 20, help="bytes per output shard")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    encoder, tokenizer = load_t5(args.t5, device=args.device)
    writer, num_written = None, 0
    progress = tqdm(desc="captions", unit="caption", file=sys.stderr)
    for batch in _batches(iter_shard_set(args.shards, args.format), args.batch_size):
        emb_BLD, mask_BL = encode_captions(
            encoder, tokenizer, [s["caption"] for s in batch], max_length=args.max_length
        )
        if writer is None:
            with_label = batch[0].get("label") is not None
            writer = MDSWriterAdapter(args.out_dir, shard_bytes=args.shard_size, with_label=with_label, with_t5=True)
        for sample, emb_LD, mask_L in zip(
            batch, emb_BLD.half().cpu().numpy(), mask_BL.to(torch.uint8).cpu().numpy(), strict=True
        ):
            writer.write({**sample, "t5_emb": emb_LD, "t5_mask": mask_L})
        num_written += len(batch)
        progress.update(len(batch))
    if writer is None:
        raise SystemExit(f"no sample in {args.shards!r}; nothing written")
    writer.finish()
    print(f"wrote {num_written} samples with T5 embeddings to {args.out_dir}")
    return num_written


if __name__ == "__main__":
    main()
