"""A tiny MDS caption shard set with T5 embeddings (as launchers/precompute_text.py writes) from the bundled digits."""

import itertools

import numpy as np
import torch

from ard_scale.data import bundled_digits_path
from ard_scale.data.sources import iter_shard_set
from ard_scale.data.writers import MDSWriterAdapter


def write_tiny_t5(path: str) -> str:
    """A random 1-layer T5 encoder (d_model 16) with the ByT5 tokenizer (no vocabulary file to download)."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=384, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1)).save_pretrained(
        path
    )
    ByT5Tokenizer().save_pretrained(path)
    return path


def write_caption_shards(
    out: str, t5_path: str, *, num_samples: int, max_length: int = 12, with_label: bool = True
) -> list[dict]:
    """The first `num_samples` bundled digits with their captions' T5 embeddings as MDS; returns the written rows."""
    from ard_scale.models.text_encoder import encode_captions, load_t5

    samples = list(itertools.islice(iter_shard_set(bundled_digits_path("webdataset"), "webdataset"), num_samples))
    emb_BLD, mask_BL = encode_captions(*load_t5(t5_path), [s["caption"] for s in samples], max_length=max_length)
    writer = MDSWriterAdapter(out, shard_bytes=1 << 20, with_label=with_label, with_t5=True)
    rows = []
    for sample, emb_LD, mask_L in zip(samples, emb_BLD.half().numpy(), mask_BL.to(torch.uint8).numpy(), strict=True):
        rows.append({**sample, "t5_emb": emb_LD, "t5_mask": mask_L})
        writer.write(rows[-1])
    writer.finish()
    assert all(np.asarray(r["t5_mask"]).sum() > 0 for r in rows)
    return rows
