"""Raw sources for shard building: a folder of images + same-named .txt, or a CSV/JSONL of (path, caption).

Text files are read as UTF-8 with an optional byte-order mark (Excel's "CSV UTF-8" and Notepad write one), which is
not part of the text: it would prefix the first CSV column's name, every caption and make a .json undecodable."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ard_scale.data.bundled import resolve_data_path
from ard_scale.data.samples import IMAGE_EXTENSIONS, NO_LABEL, BadSample, caption_text, integer_label, wds_fields
from ard_scale.errors import UserError


def _key(relative_path: str) -> str:
    """'cats/tabby.01.jpg' -> 'cats_tabby_01' (webdataset keys end at the first dot, so none may contain one)."""
    stem = os.path.splitext(relative_path)[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem.replace(os.sep, "__"))


def _raw_wds_sample(key: str, fields: dict[str, bytes]) -> dict:
    """A tar sample's raw fields as `iter_shard_set` yields them; raises BadSample where the training readers'
    checks before the image decode would skip it (`decode_wds_sample`)."""
    image, caption, label = wds_fields(fields)
    caption = caption_text(image, caption)
    return {"key": key, "image": image, "caption": caption, "label": None if label is None else integer_label(label)}


def _entries_from_folder(folder: str, skipped: Counter) -> Iterator[tuple[str, str | None, object]]:
    """The folder's images in a fixed order, the same on every copy of it: a folder's own files by name, then its
    subfolders by name (os.walk lists them in the file system's order, which differs between copies, so two builds of
    one data set wrote their samples, and a run read them, in another order)."""
    for root, subfolders, files in os.walk(folder):
        subfolders.sort()  # in place: os.walk descends in this order
        for name in sorted(files):
            if name.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(root, name)
            txt = os.path.splitext(path)[0] + ".txt"
            try:
                caption = Path(txt).read_text(encoding="utf-8-sig") if os.path.isfile(txt) else None
            except UnicodeDecodeError:
                skipped["caption is not UTF-8"] += 1
                continue
            meta = os.path.splitext(path)[0] + ".json"
            try:
                meta_text = Path(meta).read_text(encoding="utf-8-sig") if os.path.isfile(meta) else None
                label = None if meta_text is None else json.loads(meta_text).get("label")
            except (ValueError, AttributeError):  # not JSON (or not UTF-8: a ValueError too), or not an object
                skipped["undecodable .json"] += 1
                continue
            yield path, caption, label


def _entries_from_table(table: str) -> Iterator[tuple[str, str | None, object]]:
    root = os.path.dirname(os.path.abspath(table))
    with open(table, encoding="utf-8-sig", newline="") as f:
        rows = csv.DictReader(f) if table.endswith(".csv") else (json.loads(line) for line in f if line.strip())
        for row in rows:
            if "path" not in row or "caption" not in row:
                raise UserError(f"{table!r}: every row needs 'path' and 'caption' fields, got {sorted(row)}")
            label = row.get("label")
            yield os.path.join(root, row["path"]), row["caption"], None if label in (None, "") else label


def iter_source(source: str, skipped: Counter) -> Iterator[dict]:
    """Samples (key, image bytes, ext, caption, label) from `source`; bad ones are counted in `skipped` by reason."""
    if os.path.isdir(source):
        entries, root = _entries_from_folder(source, skipped), source
    elif source.endswith((".csv", ".jsonl")) and os.path.isfile(source):
        entries, root = _entries_from_table(source), os.path.dirname(os.path.abspath(source))
    else:
        raise UserError(f"source {source!r} is neither a folder nor an existing .csv/.jsonl file")
    seen: set[str] = set()
    for path, caption, label in entries:
        key = _key(os.path.relpath(path, root))
        if caption is None or not caption.strip():
            skipped["missing caption"] += 1
            continue
        try:
            label = None if label is None else int(label)  # a .csv gives text
        except (TypeError, ValueError):
            skipped["label is not an integer"] += 1
            continue
        if key in seen:
            skipped["duplicate key"] += 1
            continue
        if not os.path.isfile(path):
            skipped["missing image file"] += 1
            continue
        data = Path(path).read_bytes()
        if not data:
            skipped["zero-size image"] += 1
            continue
        try:
            Image.open(io.BytesIO(data)).load()
        except Exception:
            skipped["undecodable image"] += 1
            continue
        seen.add(key)
        ext = path.rsplit(".", 1)[-1].lower()
        yield {"key": key, "image": data, "ext": ext, "caption": caption.strip(), "label": label}


def iter_shard_set(path: str, format: str, skipped: Counter | None = None) -> Iterator[dict]:
    """Raw samples (key, image bytes, caption, label) of a built local shard set, in storage order. A sample the
    training readers would skip (no image or caption, a caption that is not UTF-8, an undecodable .json, a label that
    is not an integer, an unreadable MDS sample; past a tar's corrupt member, the rest of that shard) is left out and
    counted in `skipped` by reason."""
    skipped = Counter() if skipped is None else skipped
    path = resolve_data_path(path)
    if format == "mds":
        from streaming.base.format import reader_from_json

        index = os.path.join(path, "index.json")
        if not os.path.isfile(index):
            raise UserError(f"MDS path {path!r} has no index.json; build it with launchers/build_shards.py")
        for shard_obj in json.loads(Path(index).read_text(encoding="utf-8"))["shards"]:
            reader = reader_from_json(path, None, shard_obj)
            for i in range(reader.samples):
                try:
                    row = reader[i]
                except Exception as e:  # a corrupt shard body shows up as arbitrary decode errors
                    skipped[f"unreadable MDS sample ({type(e).__name__})"] += 1
                    continue
                try:
                    caption = caption_text(row["image"], row["caption"])
                except BadSample as e:  # e.g. a zero-size image, which training skips
                    skipped[str(e)] += 1
                    continue
                label = row.get("label")  # NO_LABEL: none; another negative label is kept, as the loader keeps it
                yield {"key": row["key"], "image": row["image"], "caption": caption,
                       "label": None if label is None or label == NO_LABEL else int(label)}  # fmt: skip
    elif format == "webdataset":
        from ard_scale.data.wds import TarReader, list_shards

        for shard in list_shards(path):
            reader = TarReader(shard.url)
            offset = -1
            while (offset := offset + 1) < shard.num_samples or reader.has_more:  # a tar longer than its index
                try:
                    key, fields = reader.read(offset, want=True)
                except BadSample as e:  # the tar broke off here: nothing after it reads either
                    skipped[f"{e} (and the rest of its shard)"] += max(shard.num_samples - offset, 1)
                    break
                try:
                    raw = _raw_wds_sample(key, fields)
                except BadSample as e:
                    skipped[str(e)] += 1
                    continue
                yield raw
            reader.close()
    else:
        raise UserError(f"format={format!r}; choose 'webdataset' or 'mds'")
