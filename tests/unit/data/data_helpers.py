"""Small synthetic image folders and hand-made shards for the data tests."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image


def image_bytes(width: int, height: int, *, seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    # smooth random image so JPEG decodes are stable and resizes are non-trivial
    base = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_image_folder(folder: str, num: int, *, sizes=((40, 32),), start: int = 0) -> list[tuple[str, str, int]]:
    """num images (PNG and JPEG alternating) + .txt caption + .json label; returns [(key, caption, label)]."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for i in range(start, start + num):
        width, height = sizes[i % len(sizes)]
        ext, fmt = ("png", "PNG") if i % 2 == 0 else ("jpg", "JPEG")
        key = f"img-{i:04d}"
        caption = f"caption number {i}"
        with open(os.path.join(folder, f"{key}.{ext}"), "wb") as f:
            f.write(image_bytes(width, height, seed=i, fmt=fmt))
        with open(os.path.join(folder, f"{key}.txt"), "w") as f:
            f.write(caption)
        with open(os.path.join(folder, f"{key}.json"), "w") as f:
            json.dump({"label": i % 10}, f)
        out.append((key, caption, i % 10))
    return out


def write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    """A tar with exactly these (name, data) members, in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def good_members(key: str, seed: int, size=(24, 24)) -> list[tuple[str, bytes]]:
    return [(f"{key}.png", image_bytes(*size, seed=seed)), (f"{key}.txt", f"caption {key}".encode())]


def write_index(folder: str, counts: dict[str, int]) -> None:
    shardlist = [{"url": name, "nsamples": n} for name, n in counts.items()]
    with open(os.path.join(folder, "shards.json"), "w") as f:
        json.dump({"__kind__": "wids-shard-index-v1", "shardlist": shardlist}, f)
