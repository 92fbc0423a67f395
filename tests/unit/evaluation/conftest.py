"""Tiny random stand-ins for the real evaluation networks: a feature network for FID, an open_clip model for CLIP."""

import json

import open_clip
import pytest
import torch

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class TinyFeatures(torch.nn.Module):
    """A tiny random feature network standing in for Inception: uint8 (B, 3, H, W) -> (B, 8)."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.zero_()

    def forward(self, x):
        return torch.tanh(self.conv(x.float() / 127.5 - 1)).mean(dim=(2, 3))


@pytest.fixture
def tiny_features():
    return TinyFeatures()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(checkpoint path, model) of a random open_clip model registered as 'ard-tiny-clip'."""
    d = tmp_path_factory.mktemp("clip")
    (d / "ard-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "ard-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("ard-tiny-clip", pretrained=None).eval()
    path = d / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path, model
