import numpy as np
import pytest
import torch
from data_helpers import image_bytes
from PIL import Image

from ard_scale.data.config import DataConfig
from ard_scale.data.transforms import ASPECT_RATIO_1024, bucket_table, load_image, nearest_bucket, resize_center_crop


def test_bucket_table_matches_pixart_sigma():
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN

    assert {float(k): (int(h), int(w)) for k, (h, w) in ASPECT_RATIO_1024_BIN.items()} == ASPECT_RATIO_1024
    assert bucket_table(1024) == ASPECT_RATIO_1024
    assert bucket_table(512) == {float(k): (int(h), int(w)) for k, (h, w) in ASPECT_RATIO_512_BIN.items()}


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
    with pytest.raises(ValueError, match="data.format='zip'"):
        DataConfig(format="zip", path="x", batch_size=2)
    with pytest.raises(ValueError, match="data.resolution=30"):
        DataConfig(format="mds", path="x", batch_size=2, resolution=30)
    with pytest.raises(TypeError):
        DataConfig("mds", "x", 2)  # keyword-only
