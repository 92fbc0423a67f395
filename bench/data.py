"""Data loader throughput per worker: decode + resize + center crop of 1024px JPEGs, webdataset vs MDS.

    python bench/data.py --json out.json [--num-images 48] [--resolution 1024]

Generates JPEGs around 1024px (1365x1024, 1024x1280, 1200x1200: every one is resized and cropped), builds
both shard formats with the project's writer, then reads each with num_workers=0 (one worker's worth of
work, in this process) and reports samples/s beside a bare PIL decode+resize+crop of the same bytes. JSON
keys: webdataset_samples_per_s, mds_samples_per_s, decode_only_samples_per_s and the two ratios. A 1024px
ARD run at S=4 consumes a few samples/s per GPU; multiply by num_workers for a rank's loader ceiling.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ard_scale.config.data import DataConfig  # noqa: E402
from ard_scale.data.loader import build_loader  # noqa: E402
from ard_scale.data.transforms import load_image  # noqa: E402
from ard_scale.data.writers import write_shards  # noqa: E402

SIZES = ((1365, 1024), (1024, 1280), (1200, 1200))  # (width, height)


def make_jpegs(num: int) -> list[bytes]:
    """Smooth random content (compresses like a photo, unlike white noise) at quality 90."""
    out = []
    for i in range(num):
        width, height = SIZES[i % len(SIZES)]
        rng = np.random.default_rng(i)
        small = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        small.resize((width, height), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def time_loader(fmt: str, path: str, resolution: int, num: int) -> float:
    config = DataConfig(format=fmt, path=path, batch_size=8, resolution=resolution, num_workers=0, num_epochs=1,
                        shuffle=False)  # fmt: skip
    loader = build_loader(config, rank=0, world_size=1)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["keys"])
    assert seen == num, (fmt, seen)
    return num / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--resolution", type=int, default=1024)
    args = parser.parse_args(argv)
    for name, value in {"RANK": 0, "WORLD_SIZE": 1, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 1}.items():
        os.environ.setdefault(name, str(value))

    jpegs = make_jpegs(args.num_images)
    with tempfile.TemporaryDirectory() as tmp:
        samples = (
            {"key": f"img-{i:05d}", "image": data, "ext": "jpg", "caption": f"image {i}"}
            for i, data in enumerate(jpegs)
        )
        write_shards(samples, tmp, formats=("webdataset", "mds"), shard_bytes=16 << 20)

        start = time.perf_counter()
        for data in jpegs:
            load_image(data, args.resolution, None)
        decode_only = len(jpegs) / (time.perf_counter() - start)
        wds = time_loader("webdataset", os.path.join(tmp, "webdataset"), args.resolution, len(jpegs))
        mds = time_loader("mds", os.path.join(tmp, "mds"), args.resolution, len(jpegs))

    results = {
        "num_images": len(jpegs),
        "resolution": args.resolution,
        "mean_jpeg_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1),
        "decode_only_samples_per_s": round(decode_only, 2),
        "webdataset_samples_per_s": round(wds, 2),
        "mds_samples_per_s": round(mds, 2),
        "webdataset_over_decode_only": round(wds / decode_only, 3),
        "mds_over_decode_only": round(mds / decode_only, 3),
    }
    print(f"{args.num_images} JPEGs (~{results['mean_jpeg_kb']} KB) -> {args.resolution}px, one worker")
    print(f"{'path':<14}{'samples/s':>12}{'vs decode':>11}")
    print(f"{'decode only':<14}{decode_only:>12.1f}{1.0:>11.3f}")
    print(f"{'webdataset':<14}{wds:>12.1f}{wds / decode_only:>11.3f}")
    print(f"{'mds':<14}{mds:>12.1f}{mds / decode_only:>11.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
