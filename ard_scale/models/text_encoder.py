"""T5 text encoder loaded from a local folder (weights are never downloaded here), or a named random-weight size."""

from __future__ import annotations

import os

import torch
from transformers import AutoTokenizer, ByT5Tokenizer, T5Config, T5EncoderModel

# Named sizes: T5Config keyword arguments. `debug` meets the debug PixArt teacher (caption_channels=24) and uses the
# byte-level ByT5 tokenizer, which needs no vocabulary file.
SIZES: dict[str, dict] = {
    "debug": dict(vocab_size=384, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3),
}


def build_t5(size: str, *, seed: int = 0):
    """(encoder, tokenizer) of a named size with random weights."""
    if size not in SIZES:
        raise ValueError(f"unknown text_encoder.size {size!r}; choose one of {', '.join(SIZES)} or give a path")
    torch.manual_seed(seed)
    encoder = T5EncoderModel(T5Config(**SIZES[size]))
    return encoder.eval().requires_grad_(False), ByT5Tokenizer()


def load_t5(path: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(encoder, tokenizer) from a local folder holding a T5EncoderModel (or full T5) and its tokenizer."""
    if not os.path.isdir(path):
        raise ValueError(f"T5 path {path!r} is not a local folder; save the model and tokenizer there first")
    missing = [n for n in ("config.json", "tokenizer_config.json") if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise ValueError(f"T5 folder {path!r} lacks model or tokenizer files {missing}; save both with save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        encoder = T5EncoderModel.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    except OSError as e:
        raise ValueError(
            f"T5 folder {path!r} lacks model or tokenizer files ({e}); save both with save_pretrained"
        ) from e
    return encoder.to(device).eval().requires_grad_(False), tokenizer


@torch.no_grad()
def encode_captions(encoder, tokenizer, captions: list[str], *, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (embeddings (B, max_length, D), attention mask (B, max_length)), padded to max_length."""
    tokens = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(encoder.parameters()).device
    mask_BL = tokens.attention_mask.to(device)
    emb_BLD = encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask_BL).last_hidden_state
    return emb_BLD, mask_BL
