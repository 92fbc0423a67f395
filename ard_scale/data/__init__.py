"""Streamed image–caption data: webdataset and MDS readers with exact resume, shard writers, buckets, bundled digits.

The trainer builds one loader per rank and iterates it:

    loader = build_loader(config, rank=rank, world_size=world_size)   # DataConfig; no torch.distributed here
    for batch in loader: ...   # images (B,3,H,W) in [-1,1], captions, keys [, labels] [, t5_emb, t5_mask]
    state = loader.state_dict()   # per rank, as of the last batch yielded
    loader.load_state_dict(state) # before iterating, in the resumed process
    loader.num_skipped            # corrupt samples skipped so far (loader.skips.counts by reason)
"""

from ard_scale.config.data import DataConfig
from ard_scale.data.loader import WebdatasetLoader, build_loader
from ard_scale.data.samples import SkipCounter
from ard_scale.data.transforms import ASPECT_RATIO_1024, bucket_table


def bundled_digits_path(format: str) -> str:
    """Path of the bundled digits in `format` ('webdataset' or 'mds'); see ard_scale/data/bundled.py."""
    # imported here so `python -m ard_scale.data.bundled` does not find its own module pre-imported
    from ard_scale.data.bundled import bundled_digits_path as path_of

    return path_of(format)


__all__ = [
    "ASPECT_RATIO_1024",
    "DataConfig",
    "SkipCounter",
    "WebdatasetLoader",
    "build_loader",
    "bucket_table",
    "bundled_digits_path",
]
