"""Image decoding, resize + center crop, and PixArt-Σ aspect-ratio buckets."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

# PixArt-Σ's 1024px bucket table: height/width ratio -> (height, width). Same values as diffusers'
# ASPECT_RATIO_1024_BIN (a test compares them); copied so data/ does not import the diffusers pipelines.
ASPECT_RATIO_1024: dict[float, tuple[int, int]] = {
    0.25: (512, 2048), 0.28: (512, 1856), 0.32: (576, 1792), 0.33: (576, 1728), 0.35: (576, 1664),
    0.4: (640, 1600), 0.42: (640, 1536), 0.48: (704, 1472), 0.5: (704, 1408), 0.52: (704, 1344),
    0.57: (768, 1344), 0.6: (768, 1280), 0.68: (832, 1216), 0.72: (832, 1152), 0.78: (896, 1152),
    0.82: (896, 1088), 0.88: (960, 1088), 0.94: (960, 1024), 1.0: (1024, 1024), 1.07: (1024, 960),
    1.13: (1088, 960), 1.21: (1088, 896), 1.29: (1152, 896), 1.38: (1152, 832), 1.46: (1216, 832),
    1.67: (1280, 768), 1.75: (1344, 768), 2.0: (1408, 704), 2.09: (1472, 704), 2.4: (1536, 640),
    2.5: (1600, 640), 3.0: (1728, 576), 4.0: (2048, 512),
}  # fmt: skip


def bucket_table(resolution: int) -> dict[float, tuple[int, int]]:
    """The 1024 table scaled to `resolution` (sides rounded to multiples of 8)."""
    scale = resolution / 1024
    return {
        r: (max(8, round(h * scale / 8) * 8), max(8, round(w * scale / 8) * 8))
        for r, (h, w) in ASPECT_RATIO_1024.items()
    }


def bucket_latent_sizes(resolution: int, downsample: int) -> list[tuple[int, int]]:
    """The (height, width) of each bucket of `bucket_table(resolution)` in latents of a VAE downsampling by
    `downsample` (1: pixel space), in the table's order, each once."""
    return list(dict.fromkeys((h // downsample, w // downsample) for h, w in bucket_table(resolution).values()))


def nearest_bucket(height: int, width: int, table: dict[float, tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) bucket whose ratio is closest to height/width, as PixArt-Σ picks it."""
    ratio = height / width
    key = min(table, key=lambda r: abs(r - ratio))
    return table[key]


def load_image(data: bytes, resolution: int, table: dict[float, tuple[int, int]] | None) -> torch.Tensor:
    """Decode JPEG/PNG/WebP bytes to a (3, H, W) tensor in [-1, 1]: a square `resolution` crop, or the
    nearest bucket of `table`. Raises OSError/ValueError on empty or undecodable data."""
    if not data:
        raise OSError("empty image file")
    image = Image.open(io.BytesIO(data))
    # A camera stores a portrait photo sideways with an EXIF orientation that every viewer applies: apply it too
    # (and pick the bucket of the upright image), else the student learns sideways photos.
    orientation = exif_orientation(image)
    quarter_turn = orientation in (5, 6, 7, 8)  # the stored width is the upright height
    upright_h, upright_w = (image.width, image.height) if quarter_turn else (image.height, image.width)
    height, width = nearest_bucket(upright_h, upright_w, table) if table else (resolution, resolution)
    # draft() lets JPEG decode at a reduced scale (>= 2x the target), much faster for 1024px sources.
    image.draft("RGB", (2 * height, 2 * width) if quarter_turn else (2 * width, 2 * height))
    image.load()
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    return resize_center_crop(to_rgb(image), height, width)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of `image` (1: stored upright, also where there is none or the EXIF is unreadable)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a damaged EXIF block does not make the pixels unusable
        return 1
    return orientation if orientation in range(1, 9) else 1


def integer_white(image: Image.Image, values: np.ndarray) -> int:
    """The value that is white in integer grayscale `image` (mode I;16* or I) holding `values`. Mode I;16 (a 16-bit
    PNG or TIFF) is 16 bits: 65535. Mode I (32-bit integers: a TIFF's 32-bit samples, a PGM of more than 8 bits as
    PIL widens it to 16) does not say which range its values use, so the data decides: the smallest of 8, 16 and 31
    bits (the int's positive range) that holds the brightest pixel — 255, 65535 or 2**31 - 1. A 32-bit image of 8-bit
    values (as PIL writes a numpy array of ints) reads as it looks; only a 16-bit one whose brightest pixel is 255 or
    less, nearly black at 16 bits, reads brighter than that."""
    if image.mode.startswith("I;16"):
        return 65535
    peak = int(values.max()) if values.size else 0
    return 255 if peak <= 255 else 65535 if peak <= 65535 else 2**31 - 1


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB. An integer grayscale image (a 16-bit grayscale PNG opens as mode I;16, a 32-bit TIFF as
    I), whose values PIL's convert("RGB") clips at 255 (a 16-bit image nearly all white), is scaled to 8 bits first,
    its white (`integer_white`) becoming 255. Transparency (an alpha channel, or a palette's or PNG's transparent
    colour) is matted onto white, as img2dataset does and as viewers show it: convert("RGB") would drop the alpha and
    show whatever colour transparent pixels happen to store."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.float64)  # float64: a 32-bit white is exact
        scaled = values * (255 / integer_white(image, values))
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """Resize the short side to cover (height, width), center crop, return float (3, H, W) in [-1, 1]."""
    scale = max(height / image.height, width / image.width)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    image = image.crop((left, top, left + width, top + height))
    array_CHW = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)  # one pass to float
    array_CHW *= np.float32(1 / 127.5)
    array_CHW -= np.float32(1.0)
    return torch.from_numpy(array_CHW)
