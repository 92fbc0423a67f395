"""The bundled demo dataset: scikit-learn's 8x8 handwritten digits (1,797 real images, UCI optdigits test set).

Each digit is scaled from 0..16 to 0..255 (white ink on black), upsampled 8x8 -> 32x32 with bilinear
filtering, saved as a grayscale PNG `digits-NNNN.png` with caption "a handwritten digit seven" and its
class in `digits-NNNN.json` ({"label": 7}), then converted by the shard builder (the code behind
launchers/build_shards.py) to gzip'd webdataset tars and MDS, committed under ard_scale/data/bundled/digits.

Regenerate (needs scikit-learn, the `dev` extra): python -m ard_scale.data.bundled [OUT_DIR]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter

import torch

from ard_scale.errors import UserError

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled", "digits")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SIZE = 32
NUM_SAMPLES = 1797
SHARD_BYTES = 1 << 20


BUNDLED_PREFIX = "bundled:"
BUNDLED_ROOT = os.path.dirname(BUNDLED_DIR)


def resolve_data_path(path: str | None) -> str | None:
    """A recipe's data path with the `bundled:` prefix resolved inside the installed package (`bundled:digits/mds`
    -> .../ard_scale/data/bundled/digits/mds), so recipes on the bundled data work from any working directory; other
    paths unchanged."""
    if path is None or not path.startswith(BUNDLED_PREFIX):
        return path
    name = path[len(BUNDLED_PREFIX) :].strip("/")
    resolved = os.path.join(BUNDLED_ROOT, name)
    if not name or not os.path.exists(resolved):
        available = ", ".join(f"bundled:digits/{f}" for f in ("webdataset", "mds"))
        raise UserError(f"{path!r} names no bundled data set; available: {available}")
    return resolved


def bundled_digits_path(format: str) -> str:
    """Path to pass as `DataConfig.path` for the bundled digits in `format` ('webdataset' or 'mds')."""
    if format not in ("webdataset", "mds"):
        raise UserError(f"format={format!r}: the bundled digits exist as 'webdataset' and 'mds'")
    return os.path.join(BUNDLED_DIR, format)


def load_digits(resolution: int, format: str = "webdataset") -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 bundled digits as the data loader delivers them at `resolution`: (N, 1, R, R) in [-1, 1] (the
    grayscale PNG's one channel) and (N,) class labels, in storage order. The same decode and resize a run on
    `bundled:digits/*` reads, so a teacher fitted on these, the GAN stage's reals and an evaluation's reference set are
    one distribution (the digits resampled 8 -> 32 -> R differ from sklearn's 8x8 arrays)."""
    from ard_scale.data import DataConfig, build_loader  # the loader resolves `bundled:` paths through this module

    config = DataConfig(
        format=format,
        path=bundled_digits_path(format),
        batch_size=256,
        resolution=resolution,
        num_workers=0,
        shuffle=False,
        num_epochs=1,
    )
    keys, images, labels = [], [], []
    for batch in build_loader(config, rank=0, world_size=1):
        keys += batch["keys"]
        images.append(batch["images"][:, :1])
        labels.append(batch["labels"])
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return torch.cat(images)[order], torch.cat(labels)[order].long()


def caption_for(label: int) -> str:
    """'a handwritten digit seven' for 7."""
    return f"a handwritten digit {NUMBER_WORDS[label]}"


def write_digit_folder(folder: str, num: int | None = None) -> int:
    """Write the first `num` (default all) digits as PNG + .txt caption + .json label into `folder` (build_shards'
    folder layout); returns how many."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    os.makedirs(folder, exist_ok=True)
    pairs = list(zip(digits.images, digits.target, strict=True))[:num]
    for index, (image_8x8, label) in enumerate(pairs):
        pixels = np.clip(np.round(image_8x8 * (255 / 16)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        stem = os.path.join(folder, f"digits-{index:04d}")
        image.save(stem + ".png", optimize=True)
        with open(stem + ".txt", "w") as f:
            f.write(caption_for(int(label)))
        with open(stem + ".json", "w") as f:
            json.dump({"label": int(label)}, f)
    return len(pairs)


def build_digits(out_dir: str = BUNDLED_DIR) -> dict[str, int]:
    """Regenerate the bundled shards in out_dir/{webdataset,mds} through the shard builder."""
    from ard_scale.data.sources import iter_source
    from ard_scale.data.writers import write_shards

    with tempfile.TemporaryDirectory() as folder:
        write_digit_folder(folder)
        skipped: Counter = Counter()
        counts = write_shards(
            iter_source(folder, skipped), out_dir, formats=("webdataset", "mds"), shard_bytes=SHARD_BYTES, gzip=True
        )
    assert not skipped and counts == {"webdataset": NUM_SAMPLES, "mds": NUM_SAMPLES}, (skipped, counts)
    return counts


if __name__ == "__main__":
    print(build_digits(sys.argv[1] if len(sys.argv) > 1 else BUNDLED_DIR))
