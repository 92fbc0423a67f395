"""Tiny random stand-ins for the evaluation's weights files, written where a recipe can point at them (other
processes, e.g. launched ranks, read them): the FID Inception, an open_clip folder, a T5 encoder folder."""

import json
from pathlib import Path

import torch

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_random_inception(path: Path) -> Path:
    """torch-fidelity's FID Inception-v3 with random weights, saved as the standard weights file would be (~95 MB)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    empty = path.with_name("empty_inception.pth")
    torch.save({}, empty)
    load = NoTrainInceptionV3.load_state_dict
    NoTrainInceptionV3.load_state_dict = lambda self, sd, *a, **k: None  # build once without a weights file
    try:
        torch.manual_seed(0)
        net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=empty
        )
    finally:
        NoTrainInceptionV3.load_state_dict = load
    torch.save(net.state_dict(), path)
    empty.unlink()
    return path


def write_tiny_clip_folder(folder: Path) -> Path:
    """A random open_clip model in open_clip's local folder layout (open_clip_config.json + weights)."""
    from open_clip.model import CLIP

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def write_tiny_t5(folder: Path, d_model: int = 24, vocab_size: int = 384) -> Path:
    """A random 1-layer T5 encoder with the byte-level ByT5 tokenizer (no vocabulary file); d_model 24 matches the
    debug PixArt teacher's caption channels. ByT5 uses ids below 384; a larger `vocab_size` (e.g. 5000: 120k embedding
    weights, over DeepSpeed's 1e5 stage3_param_persistence_threshold) makes ZeRO-3 partition the encoder, as it does
    a real T5, so that every forward of it is a collective, even with the suite's partition-all switch off
    (ARD_SCALE_TEST_ZERO3_PARTITION_ALL=0; tests/conftest.py)."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, num_heads=2, d_ff=32, num_layers=1)
    T5EncoderModel(config).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder
