import numpy as np
import pytest
import torch
from data_helpers import image_bytes
from PIL import Image

from ard_scale.config import ConfigError
from ard_scale.config.data import DataConfig, check_readable
from ard_scale.data.loader import build_loader
from ard_scale.data.transforms import (
    ASPECT_RATIO_1024,
    bucket_latent_sizes,
    bucket_table,
    load_image,
    nearest_bucket,
    resize_center_crop,
)


def test_bucket_table_matches_pixart_sigma():
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN

    assert {float(k): (int(h), int(w)) for k, (h, w) in ASPECT_RATIO_1024_BIN.items()} == ASPECT_RATIO_1024
    assert bucket_table(1024) == ASPECT_RATIO_1024
    assert bucket_table(512) == {float(k): (int(h), int(w)) for k, (h, w) in ASPECT_RATIO_512_BIN.items()}


def test_bucket_latent_sizes_are_the_buckets_height_by_width():
    """The latent (height, width) of every bucket, in the table's order: the 1024 table is not symmetric (512 × 1856
    has no 1856 × 512), so a size read as (width, height) would name buckets the data never yields."""
    table = bucket_table(1024)
    sizes = bucket_latent_sizes(1024, 8)
    assert [(h * 8, w * 8) for h, w in sizes] == list(dict.fromkeys(table.values()))
    assert (64, 232) in sizes and (232, 64) not in sizes


def test_nearest_bucket_picks_closest_ratio():
    table = bucket_table(1024)
    assert nearest_bucket(1000, 1000, table) == (1024, 1024)
    assert nearest_bucket(600, 1200, table) == (704, 1408)  # h/w = 0.5
    assert nearest_bucket(3000, 1000, table) == (1728, 576)  # h/w = 3.0


def test_resize_center_crop_shape_range_and_center():
    # left half black, right half white, 80x40 (w x h): a centered 32x32 crop straddles the edge
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 40:] = 255
    out = resize_center_crop(Image.fromarray(array), 32, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() == -1.0 and out.max() == 1.0
    assert out[:, :, :12].max() < -0.9 and out[:, :, 20:].min() > 0.9


def test_load_image_buckets_and_errors():
    data = image_bytes(120, 60, seed=0, fmt="JPEG")
    assert load_image(data, 32, None).shape == (3, 32, 32)
    assert load_image(data, 256, bucket_table(256)).shape == (3, 176, 352)  # h/w=0.5 bucket at 256
    with pytest.raises(OSError):
        load_image(b"", 32, None)
    with pytest.raises(OSError):
        load_image(b"not an image", 32, None)


def test_data_config_rejects_bad_values():
    """The readers check a data section built in code as load_config checks a recipe's, naming the key."""
    base = dict(format="mds", path="x", batch_size=2, resolution=16)
    assert check_readable(DataConfig(**base)).path == "x"
    with pytest.raises(ConfigError, match="data.format: 'zip' is not a valid choice"):
        build_loader(DataConfig(**{**base, "format": "zip"}), rank=0, world_size=1)
    with pytest.raises(ConfigError, match="data.resolution: must be a multiple of 8, got 30"):
        build_loader(DataConfig(**{**base, "resolution": 30}), rank=0, world_size=1)
    with pytest.raises(ConfigError, match="data.batch_size: 0 is out of range"):
        build_loader(DataConfig(**{**base, "batch_size": 0}), rank=0, world_size=1)
    with pytest.raises(ConfigError, match="data.path: required to read shards"):
        build_loader(DataConfig(**{**base, "path": None}), rank=0, world_size=1)
    with pytest.raises(TypeError):
        DataConfig("mds", "x", 2, 16)  # keyword-only


def test_a_16_bit_grayscale_png_reads_as_its_8_bit_values():
    """A 16-bit grayscale PNG (mode I;16) gives the image its 8-bit copy gives, not PIL's clip at 255 (all white)."""
    import io

    ramp_8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, black to white left to right
    encoded = {}
    for bits, pixels in ((8, ramp_8), (16, ramp_8.astype(np.uint16) * 257)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded[bits] = buffer.getvalue()
    assert Image.open(io.BytesIO(encoded[16])).mode == "I;16"
    out = load_image(encoded[16], 32, None)
    assert torch.equal(out, load_image(encoded[8], 32, None))
    assert out.min() < -0.95 and out.mean().abs() < 0.05  # the ramp, not white


@pytest.mark.parametrize("white", [255, 65535, 2**31 - 1])
def test_a_32_bit_grayscale_image_reads_by_the_range_its_values_use(white):
    """Mode I (32-bit ints: a TIFF's 32-bit samples, a PGM of more than 8 bits) does not say which range its values
    use: it was scaled as 16 bits, so a 32-bit image of 8-bit values (as PIL writes a numpy array of ints) came out
    black. Its brightest pixel picks 8, 16 or 31 bits; each reads as the 8-bit ramp does."""
    import io

    ramp_8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, black to white left to right
    ramp_8[0, 0] = 255  # the brightest pixel is white at every depth
    buffer = io.BytesIO()
    Image.fromarray(ramp_8).save(buffer, format="PNG")
    want = load_image(buffer.getvalue(), 32, None)
    wide = np.rint(ramp_8.astype(np.float64) * (white / 255)).astype(np.int32)
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="TIFF")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "I"
    assert torch.equal(load_image(buffer.getvalue(), 32, None), want)


def test_a_pgm_of_more_than_8_bits_reads_as_16_bits():
    """PIL opens a PGM whose maxval exceeds 255 as mode I with its values widened to 0..65535: 16 bits."""
    import io

    values = np.tile(np.arange(0, 1024, 16, dtype=">u2"), (64, 1))  # 10 bits, black to nearly white
    pgm = b"P5 64 64 1023\n" + values.tobytes()
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    ramp_8 = np.rint(values.astype(np.float64) * (255 / 1023)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramp_8).save(buffer, format="PNG")
    assert (load_image(pgm, 32, None) - load_image(buffer.getvalue(), 32, None)).abs().max() <= 2 / 127.5


@pytest.mark.parametrize(
    ("orientation", "stored_as"),
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
)
def test_a_photo_stored_sideways_reads_upright_as_its_exif_orientation_says(orientation, stored_as):
    """A camera's JPEG stored turned, with the EXIF orientation viewers apply: the sample is the upright image, in
    the bucket of the upright aspect ratio."""
    import io

    upright = np.zeros((60, 120, 3), dtype=np.uint8)  # landscape, h/w = 0.5: white sky over black ground
    upright[:30] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(upright).transpose(stored_as).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    for out in (load_image(buffer.getvalue(), 32, None), load_image(buffer.getvalue(), 256, bucket_table(256))):
        assert out.shape[1:] in ((32, 32), (176, 352))  # the landscape bucket, not the portrait one (352, 176)
        rows = out.shape[1]
        assert out[:, : rows // 2 - 2].min() > 0.8 and out[:, rows // 2 + 2 :].max() < -0.8


@pytest.mark.parametrize("kind", ["RGBA", "LA", "P"])
def test_transparent_pixels_read_as_white_whatever_colour_they_store(kind):
    """A transparent PNG is matted onto white (as img2dataset does), not shown in the colour its transparent pixels
    happen to store (here red, or black), which dropping the alpha channel would train on."""
    import io

    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = (255, 0, 0)  # transparent red around an opaque blue square
    rgba[8:24, 8:24] = (0, 0, 255, 255)
    image = Image.fromarray(rgba)
    buffer = io.BytesIO()
    if kind == "RGBA":
        image.save(buffer, format="PNG")
    elif kind == "LA":
        image.convert("LA").save(buffer, format="PNG")
    else:  # a palette with a transparent entry (tRNS)
        palette = image.convert("RGB").quantize(2)
        transparent = palette.getpixel((0, 0))
        palette.save(buffer, format="PNG", transparency=transparent)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == kind
    out = load_image(buffer.getvalue(), 32, None)
    assert out[:, :6, :6].min() > 0.99  # the transparent border: white
    square = out[:, 12:20, 12:20]
    if kind == "LA":  # gray: the blue square is dark
        assert square.max() < -0.5
    else:
        assert square[2].min() > 0.99 and square[:2].max() < -0.99
