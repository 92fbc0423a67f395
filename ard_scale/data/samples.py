"""One sample: raw shard fields -> decoded sample (or the reason it is skipped); samples -> batch."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

from ard_scale.data.transforms import load_image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class BadSample(Exception):
    """A sample that cannot be used; the message is the skip reason (counted, never fatal)."""


def decode_sample(
    key: str,
    image_bytes: bytes | None,
    caption: str | bytes | None,
    *,
    resolution: int,
    table: dict[float, tuple[int, int]] | None,
    label: int | None = None,
    t5_emb: np.ndarray | None = None,
    t5_mask: np.ndarray | None = None,
    pooled_emb: np.ndarray | None = None,
) -> dict:
    """Decode and transform one sample; raises BadSample naming what is wrong with it."""
    caption = caption_text(image_bytes, caption)
    try:
        image = load_image(image_bytes, resolution, table)
    except Exception as e:  # PIL raises a zoo of types for broken files
        raise BadSample(f"undecodable image ({type(e).__name__})") from e
    sample = {"key": key, "caption": caption.strip(), "image": image}
    if label is not None:
        sample["label"] = integer_label(label)
    if t5_emb is not None:
        sample["t5_emb"] = torch.from_numpy(np.asarray(t5_emb, dtype=np.float32))
        sample["t5_mask"] = torch.from_numpy(np.asarray(t5_mask, dtype=np.int64))
    if pooled_emb is not None:
        sample["pooled_emb"] = torch.from_numpy(np.asarray(pooled_emb, dtype=np.float32))
    return sample


def caption_text(image_bytes: bytes | None, caption: str | bytes | None) -> str:
    """The caption as text; raises BadSample for a sample without image (or with a zero-size one) or caption, or
    with a caption that is not UTF-8 (what a sample must have before its image is decoded)."""
    if image_bytes is None:
        raise BadSample("missing image")
    if len(image_bytes) == 0:
        raise BadSample("zero-size image")
    if caption is None:
        raise BadSample("missing caption")
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8-sig")  # a leading byte-order mark (Notepad) is no text
        except UnicodeDecodeError as e:
            raise BadSample("caption is not UTF-8") from e
    return caption


def integer_label(label) -> int:
    """A class label as an int; raises BadSample for one like "cat"."""
    try:
        return int(label)
    except (TypeError, ValueError) as e:
        raise BadSample("label is not an integer") from e


def wds_fields(fields: dict[str, bytes]) -> tuple[bytes | None, bytes | None, Any]:
    """The image bytes, caption bytes and .json label (None where absent) of an img2dataset-style sample ({ext:
    bytes}); raises BadSample for an undecodable .json."""
    image_bytes = next((fields[e] for e in IMAGE_EXTENSIONS if e in fields), None)
    label = None
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise BadSample("undecodable .json") from e
        label = meta.get("label") if isinstance(meta, dict) else None
    return image_bytes, fields.get("txt"), label


def decode_wds_sample(key: str, fields: dict[str, bytes], **kwargs) -> dict:
    """Decode an img2dataset-style sample: {ext: bytes} with an image, a .txt caption and an optional .json."""
    image_bytes, caption, label = wds_fields(fields)
    return decode_sample(key, image_bytes, caption, label=label, **kwargs)


NO_LABEL = -1  # a batch's label for a sample that has none (batches mixing labelled and unlabelled samples)


def collate(samples: list[dict]) -> dict:
    """Stack same-shape samples into the common batch format."""
    batch = {
        "images": torch.stack([s["image"] for s in samples]),  # (B, 3, H, W) in [-1, 1]
        "captions": [s["caption"] for s in samples],
        "keys": [s["key"] for s in samples],
    }
    if any("label" in s for s in samples):  # NO_LABEL where a sample has none: a class-conditional run names it
        batch["labels"] = torch.tensor([s.get("label", NO_LABEL) for s in samples], dtype=torch.long)
    if all("t5_emb" in s for s in samples):
        batch["t5_emb"] = torch.stack([s["t5_emb"] for s in samples])  # (B, L, D)
        batch["t5_mask"] = torch.stack([s["t5_mask"] for s in samples])  # (B, L)
    if all("pooled_emb" in s for s in samples):
        batch["pooled_emb"] = torch.stack([s["pooled_emb"] for s in samples])  # (B, D)
    return batch


class SkipCounter:
    """Skipped (corrupt or incomplete) samples by reason; `total` is what the trainer logs."""

    def __init__(self, counts: dict[str, int] | None = None):
        self.counts = Counter(counts or {})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    def state_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.counts = Counter(state)


class SkipWarnings:
    """A warning for each skipped sample naming its shard, its place there and its key (the counter says how many,
    this says which, so they can be found and rebuilt), at most `limit` per shard (a truncated shard loses its whole
    tail), the last one saying that the shard's later skips are only counted."""

    def __init__(self, limit: int = 10):
        self.limit = limit
        self.per_shard: Counter = Counter()

    def warn(self, shard: str, offset: int, key: str | None, reason: str) -> None:
        """Sample `offset` (0-based, in storage order) of `shard`, key `key` (None where unknown), was skipped."""
        self.per_shard[shard] += 1
        n = self.per_shard[shard]
        if n <= self.limit:
            name = f"sample {offset}" + ("" if key is None else f" (key {key!r})")
            more = "; further skipped samples of this shard are only counted" if n == self.limit else ""
            warnings.warn(f"skipped {name} of shard {shard}: {reason}{more}", stacklevel=2)


class BatchStream(Protocol):
    """What every reader gives the trainer (webdataset, MDS, offline trajectories): batches, an exact resumable
    position per rank and the corrupt samples skipped so far."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    skips: SkipCounter
    """The samples skipped so far, by reason."""

    @property
    def num_skipped(self) -> int: ...

    def max_batches(self) -> int | None:
        """An upper bound on the batches this rank yields; None when it streams forever."""
