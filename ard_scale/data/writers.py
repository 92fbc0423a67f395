"""Shard writers: samples -> webdataset tars (+ shards.json index) and/or MDS. Used by launchers/build_shards.py;
`write_shards` writes each shard set whole or not at all (`ard_scale.utils.folders.writing_folder`)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tarfile
from collections.abc import Iterable
from typing import Any

from ard_scale.data.samples import NO_LABEL
from ard_scale.data.shard_paths import INDEX_NAME
from ard_scale.errors import UserError
from ard_scale.utils.folders import check_new_folder, writing_folder


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: identical bytes on every rebuild
    tar.addfile(info, io.BytesIO(data))


class WebdatasetWriter:
    """Writes img2dataset-layout tars ({key}.{ext} image, {key}.txt, {key}.json) of about `shard_bytes` each.
    `gzip=True` writes .tar.gz (worth it for tiny images, where 512-byte tar headers dominate)."""

    def __init__(self, out_dir: str, *, shard_bytes: int, prefix: str = "shard", gzip: bool = False):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.shard_bytes, self.prefix, self.gzip = out_dir, shard_bytes, prefix, gzip
        self.shardlist: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._file = None
        self._size = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shardlist):06d}.tar" + (".gz" if self.gzip else "")
        self._file = open(os.path.join(self.out_dir, name), "wb")
        stream = gzip.GzipFile(fileobj=self._file, mode="wb", mtime=0) if self.gzip else self._file
        self._tar = tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT)
        self._stream = stream
        self.shardlist.append({"url": name, "nsamples": 0})
        self._size = 0

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            if self.gzip:
                self._stream.close()
            self._file.close()
            self._tar = None

    def write(self, sample: dict) -> None:
        """sample: key, image (encoded bytes), ext, caption, optional label."""
        if self._tar is None or self._size >= self.shard_bytes:
            self._close()
            self._open()
        key = sample["key"]
        meta = {"key": key, "caption": sample["caption"]}
        if sample.get("label") is not None:
            meta["label"] = int(sample["label"])
        members = [(f"{key}.{sample['ext']}", sample["image"]), (f"{key}.txt", sample["caption"].encode("utf-8")),
                   (f"{key}.json", json.dumps(meta).encode("utf-8"))]  # fmt: skip
        for name, data in members:
            _add_member(self._tar, name, data)
            self._size += 512 + (len(data) + 511) // 512 * 512
        self.shardlist[-1]["nsamples"] += 1

    def finish(self) -> None:
        """Close the last shard and write the shards.json index (urls relative to it, sample counts)."""
        self._close()
        index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": self.shardlist}
        with open(os.path.join(self.out_dir, INDEX_NAME), "w") as f:
            json.dump(index, f, indent=1)


class MDSWriterAdapter:
    """Writes MDS shards with columns key/image/caption (+ label, t5_emb, t5_mask, pooled_emb when `with_*`)."""

    def __init__(
        self,
        out_dir: str,
        *,
        shard_bytes: int,
        with_label: bool = False,
        with_t5: bool = False,
        with_pooled: bool = False,
    ):
        from streaming import MDSWriter

        columns = {"key": "str", "image": "bytes", "caption": "str"}
        if with_label:
            columns["label"] = "int"
        if with_t5:
            columns["t5_emb"] = "ndarray"
            columns["t5_mask"] = "ndarray"
        if with_pooled:
            columns["pooled_emb"] = "ndarray"
        self.columns = columns
        self._writer = MDSWriter(out=out_dir, columns=columns, size_limit=shard_bytes, compression=None)

    def write(self, sample: dict) -> None:
        row = {name: sample.get(name) for name in self.columns}
        if "label" in row and row["label"] is None:
            row["label"] = NO_LABEL  # a fixed column; NO_LABEL (-1) marks a sample without a class label
        self._writer.write(row)

    def finish(self) -> None:
        self._writer.finish()


def write_shards(
    samples: Iterable[dict], out_dir: str, *, formats: tuple[str, ...], shard_bytes: int, gzip: bool = False
) -> dict[str, int]:
    """Write `samples` to out_dir/webdataset and/or out_dir/mds; returns samples written per format. Each is new or
    empty before and appears whole when the last sample is written (a failure leaves none; an empty source none).
    MDS always has a label column (-1 for a sample without one), so each sample keeps its label in both formats
    whichever sample comes first."""
    unknown = set(formats) - {"webdataset", "mds"}
    if unknown or not formats:
        raise UserError(f"shard formats {sorted(formats)} invalid; choose from 'webdataset', 'mds'")
    for name in formats:
        check_new_folder(os.path.join(out_dir, name), f"{name} shards")
    writers: dict[str, Any] = {}
    counts = dict.fromkeys(formats, 0)
    with contextlib.ExitStack() as folders:
        for sample in samples:
            if not writers:  # created at the first sample, so an empty source leaves no dataset behind
                for name in formats:
                    folder = folders.enter_context(writing_folder(os.path.join(out_dir, name), what=f"{name} shards"))
                    if name == "webdataset":
                        writers[name] = WebdatasetWriter(str(folder), shard_bytes=shard_bytes, gzip=gzip)
                    else:
                        writers[name] = MDSWriterAdapter(str(folder), shard_bytes=shard_bytes, with_label=True)
            for name, writer in writers.items():
                writer.write(sample)
                counts[name] += 1
        for writer in writers.values():
            writer.finish()
    return counts
