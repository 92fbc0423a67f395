"""CLIP score through the real open_clip code path with a tiny random model saved to a local file: equal to a hand
computation with encode_image/encode_text, within [0, 100], matched vs shuffled captions; the resize follows the
model's preprocess config; missing file names the path."""

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import get_model_preprocess_cfg

from ard_scale.evaluation.clip_score import CLIPScore, load_open_clip

CAPTIONS = ["a red square", "a blue circle", "two green dogs", "the digit seven"]


def images(n=4, size=48):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_score_is_the_definition_through_open_clip(tiny_clip):
    path, source = tiny_clip
    clip = CLIPScore.from_pretrained("ard-tiny-clip", path)
    for a, b in zip(clip.model.state_dict().values(), source.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the weights came from the local file, not a fresh init

    x = images()
    ours = clip.score(x, CAPTIONS)
    # hand computation: open_clip's tokenizer and encoders, cosine, 100 * max(cos, 0)
    pixels = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        img = source.encode_image((pixels - mean) / std)
        txt = source.encode_text(open_clip.get_tokenizer("ard-tiny-clip")(CAPTIONS))
    cos = F.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(ours, 100 * cos.clamp(min=0), rtol=1e-5, atol=1e-4)
    assert ((ours >= 0) & (ours <= 100)).all()

    clip.update(x[:2], CAPTIONS[:2])
    clip.update(x[2:], CAPTIONS[2:])
    assert clip.compute() == pytest.approx(float(ours.double().mean()), rel=1e-5)
    # gather: two ranks' scores concatenated
    assert clip.compute(lambda t: torch.cat([t, t + 0])) == pytest.approx(float(ours.double().mean()), rel=1e-5)

    shuffled = clip.score(x, CAPTIONS[1:] + CAPTIONS[:1])
    assert not torch.allclose(shuffled, ours)  # the caption pairing enters the score


def test_resize_follows_the_models_preprocess_interpolation(tiny_clip, tmp_path):
    """A model folder whose preprocess config says bilinear (open_clip's MobileCLIP, CLIPA, PE) is resized
    bilinearly, as open_clip's own transform does: the same score as bilinear by hand, not the bicubic one."""
    _, source = tiny_clip
    config = {"model_cfg": open_clip.get_model_config("ard-tiny-clip"), "preprocess_cfg": {"interpolation": "bilinear"}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(source.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    clip = CLIPScore.from_pretrained(None, tmp_path)
    assert get_model_preprocess_cfg(clip.model)["interpolation"] == "bilinear"
    x = images(size=96)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def by_hand(mode):
        pixels = F.interpolate(x, size=(32, 32), mode=mode, align_corners=False, antialias=True).clamp(0, 1)
        img = F.normalize(source.encode_image((pixels - mean) / std), dim=-1)
        txt = F.normalize(source.encode_text(open_clip.get_tokenizer("ard-tiny-clip")(CAPTIONS)), dim=-1)
        return 100 * (img * txt).sum(-1).clamp(min=0)

    ours = clip.score(x, CAPTIONS)
    torch.testing.assert_close(ours, by_hand("bilinear"), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(ours, by_hand("bicubic"), rtol=1e-3, atol=1e-3)  # the comparison can fail


def test_missing_checkpoint_names_path(tmp_path):
    path = tmp_path / "no_clip.pt"
    with pytest.raises(ValueError, match="no_clip.pt"):
        load_open_clip("ard-tiny-clip", path)


def test_a_non_square_image_is_centre_cropped_as_open_clips_transform_crops_it(tiny_clip):
    """Shorter side resized to the model's size, then the centre crop (not a corner): 48×80 -> 32×53 -> 32×32 from
    column 10."""
    path, source = tiny_clip
    clip = CLIPScore.from_pretrained("ard-tiny-clip", path)
    x = torch.rand(4, 3, 48, 80, generator=torch.Generator().manual_seed(2))
    pixels = F.interpolate(x, size=(32, 53), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    pixels = pixels[..., :, 10:42]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip.preprocess(x), (pixels - mean) / std)
