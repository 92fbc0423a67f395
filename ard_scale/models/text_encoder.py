"""Frozen text encoders loaded from local folders (weights are never downloaded here), or named random-weight sizes:
T5 (token embeddings: PixArt, FLUX.1, SD3), CLIP's text tower (the pooled embedding FLUX.1 modulates with; SD3's
CLIP-L and CLIP-G, with projection, give pooled and penultimate token embeddings) and Qwen2.5-VL (its language model's
last hidden states under QwenImagePipeline's prompt template: Qwen-Image)."""

from __future__ import annotations

import json
import os
import tempfile

import torch
from transformers import (
    AutoTokenizer,
    ByT5Tokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from ard_scale.diffusion.condition import EncodedText
from ard_scale.errors import UserError
from ard_scale.models.encoder_sizes import CLIP_SIZES, QWEN_SIZES, T5_SIZES
from ard_scale.models.folders import check_t5_folder, encoder_parts


def build_t5(size: str, *, seed: int = 0):
    """(encoder, tokenizer) of a named size with random weights."""
    if size not in T5_SIZES:
        raise UserError(f"unknown text_encoder.size {size!r}; choose one of {', '.join(T5_SIZES)} or give a path")
    torch.manual_seed(seed)
    encoder = T5EncoderModel(T5Config(**T5_SIZES[size]))
    return encoder.eval().requires_grad_(False), ByT5Tokenizer()


def load_t5(
    path: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", folder: str = "text_encoder"
):
    """(encoder, tokenizer) from a local folder holding a T5EncoderModel (or full T5) and its tokenizer, or a
    pipeline's text_encoder_N/ whose tokenizer is in the sibling tokenizer_N/ (FLUX.1's _2, SD3's _3), or the pipeline
    folder itself, whose T5 is in `folder` (the family's `encoder_folders["t5"]`)."""
    model_dir, tokenizer_dir = check_t5_folder(path, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        encoder = T5EncoderModel.from_pretrained(model_dir, local_files_only=True, torch_dtype=dtype)
    except OSError as e:
        raise UserError(
            f"T5 folder {path!r} lacks model or tokenizer files ({e}); save both with save_pretrained"
        ) from e
    return encoder.to(device).eval().requires_grad_(False), tokenizer


def _clip_class(projection: bool) -> type:
    return CLIPTextModelWithProjection if projection else CLIPTextModel


def build_clip(size: str, *, seed: int = 0, projection: bool = False, key: str = "pooled_encoder"):
    """(CLIP text model, tokenizer) of a named size with random weights; `projection`: CLIPTextModelWithProjection
    (SD3's towers), else CLIPTextModel (FLUX.1's)."""
    if size not in CLIP_SIZES:
        raise UserError(f"unknown {key}.size {size!r}; choose one of {', '.join(CLIP_SIZES)} or give a path")
    torch.manual_seed(seed)
    encoder = _clip_class(projection)(CLIPTextConfig(**CLIP_SIZES[size]))
    return encoder.eval().requires_grad_(False), ByT5Tokenizer(
        model_max_length=CLIP_SIZES[size]["max_position_embeddings"]
    )


def load_clip(
    path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    projection: bool = False,
    subfolders: tuple[str, str] = ("text_encoder", "tokenizer"),
    key: str = "pooled_encoder",
):
    """(CLIP text model, tokenizer) from a local folder (a pipeline's text encoder folder and its tokenizer: give
    the folder holding both, or the pipeline folder with `subfolders`, e.g. SD3's `text_encoder_2/`, `tokenizer_2/`).
    `projection`: the folder must hold a CLIPTextModelWithProjection (SD3), whose projected embedding is the pooled
    one; a folder of the other class is refused rather than loaded with missing or unused weights."""
    model_dir, tok_dir = encoder_parts(path, *subfolders, key=f"{key}.path")
    cls = _clip_class(projection)
    with open(os.path.join(model_dir, "config.json")) as f:
        architectures = json.load(f).get("architectures") or [cls.__name__]
    if cls.__name__ not in architectures:
        raise UserError(
            f"{key}.path {path!r} holds a {', '.join(architectures)}, but this family reads a {cls.__name__} "
            f"({'its projected text_embeds' if projection else 'its pooler_output'}); give the teacher pipeline's own "
            "text encoder"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        encoder = cls.from_pretrained(model_dir, local_files_only=True, torch_dtype=dtype)
    except OSError as e:
        raise UserError(
            f"{key}.path {path!r}: cannot load a CLIP text model and its tokenizer ({e}); save both with "
            "save_pretrained"
        ) from e
    return encoder.to(device).eval().requires_grad_(False), tokenizer


@torch.no_grad()
def encode_captions(
    encoder, tokenizer, captions: list[str], *, max_length: int, use_mask: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Captions -> (embeddings (B, max_length, D), attention mask (B, max_length)), padded to max_length.

    `use_mask=False` runs the encoder over the padding too and returns no mask, as FluxPipeline does (its
    transformer attends to all `max_length` tokens)."""
    tokens = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(encoder.parameters()).device
    mask_BL = tokens.attention_mask.to(device) if use_mask else None
    emb_BLD = encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask_BL).last_hidden_state
    return emb_BLD, mask_BL


@torch.no_grad()
def encode_pooled(encoder, tokenizer, captions: list[str], *, max_length: int = 77) -> torch.Tensor:
    """Captions -> CLIP's pooled text embedding (B, D), exactly as FluxPipeline._get_clip_prompt_embeds: padded to
    `max_length`, no attention mask, the `pooler_output` (the hidden state at the end-of-text token)."""
    tokens = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(encoder.parameters()).device
    return encoder(tokens.input_ids.to(device), output_hidden_states=False).pooler_output


@torch.no_grad()
def encode_clip(encoder, tokenizer, captions: list[str], *, max_length: int = 77) -> EncodedText:
    """Captions -> CLIP's penultimate hidden states (B, max_length, D) as tokens and its pooled embedding, exactly as
    StableDiffusion3Pipeline._get_clip_prompt_embeds (padded to `max_length`, no attention mask, `hidden_states[-2]`):
    the projected `text_embeds` of a CLIPTextModelWithProjection, else the `pooler_output` (as `encode_pooled`)."""
    tokens = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(encoder.parameters()).device
    out = encoder(tokens.input_ids.to(device), output_hidden_states=True)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return EncodedText(tokens=out.hidden_states[-2], pooled=pooled)


# -- Qwen2.5-VL (Qwen-Image) ---------------------------------------------------------------------------------------
# QwenImagePipeline's prompt template and the number of its leading tokens it drops from the hidden states (the
# system prompt and the user turn's header: 34 tokens of the Qwen2 tokenizer), and the tokenizer's length limit.
QWEN_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
QWEN_TEMPLATE_TOKENS = 34
QWEN_TOKENIZER_MAX_LENGTH = 1024


def debug_qwen_tokenizer():
    """A Qwen2 byte-level BPE tokenizer with a tiny vocabulary, built offline: the 256 byte symbols, one merged token
    for each word of QwenImagePipeline's prompt template (so the template's prefix is 34 tokens, as with the real
    vocabulary, and dropping them leaves the caption) and Qwen's chat special tokens. Captions tokenize to bytes."""
    from transformers import AutoTokenizer, Qwen2Tokenizer
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(byte_chars.values())}
    merges = []
    system = "Describe the image by detailing the color shape size texture quantity text spatial relationships of the "
    words = ["system", "user", "assistant"] + [(" " if i else "") + w for i, w in enumerate(system.split())]
    words += [" objects", " and", " background"]  # the pre-tokenizer keeps a word's leading space
    for word in dict.fromkeys(words):
        symbols = ["".join(byte_chars[b] for b in ch.encode()) for ch in word]
        merged = symbols[0]
        for nxt in symbols[1:]:
            pair = (merged, nxt)
            merged += nxt
            if merged not in vocab:
                merges.append(pair)
                vocab[merged] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        slow = Qwen2Tokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"))
        slow.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        slow.save_pretrained(os.path.join(tmp, "saved"))
        return AutoTokenizer.from_pretrained(os.path.join(tmp, "saved"), local_files_only=True)


def build_qwen(size: str, *, seed: int = 0):
    """(Qwen2_5_VLForConditionalGeneration, tokenizer) of a named size with random weights (`debug_qwen_tokenizer`)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if size not in QWEN_SIZES:
        raise UserError(f"unknown qwen_encoder.size {size!r}; choose one of {', '.join(QWEN_SIZES)} or give a path")
    tokenizer = debug_qwen_tokenizer()
    if len(tokenizer) > QWEN_SIZES[size]["text_config"]["vocab_size"]:
        raise AssertionError("the debug Qwen tokenizer outgrew the debug vocabulary")
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(**QWEN_SIZES[size])
    config._attn_implementation = "sdpa"
    encoder = Qwen2_5_VLForConditionalGeneration(config)
    return encoder.eval().requires_grad_(False), tokenizer


def load_qwen(
    path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    subfolders: tuple[str, str] = ("text_encoder", "tokenizer"),
):
    """(Qwen2_5_VLForConditionalGeneration, tokenizer) from a local folder holding both, or a QwenImagePipeline
    folder (its `subfolders`: `text_encoder/` and `tokenizer/`)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model_dir, tok_dir = encoder_parts(path, *subfolders, key="qwen_encoder.path")
    with open(os.path.join(model_dir, "config.json")) as f:
        architectures = json.load(f).get("architectures") or ["Qwen2_5_VLForConditionalGeneration"]
    if "Qwen2_5_VLForConditionalGeneration" not in architectures:
        raise UserError(
            f"qwen_encoder.path {path!r} holds a {', '.join(architectures)}, but Qwen-Image reads a "
            "Qwen2_5_VLForConditionalGeneration (Qwen2.5-VL-7B-Instruct); give the pipeline's own text encoder"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_dir, local_files_only=True, torch_dtype=dtype
        )
    except OSError as e:
        raise UserError(
            f"qwen_encoder.path {path!r}: cannot load Qwen2.5-VL and its tokenizer ({e}); save both with "
            "save_pretrained"
        ) from e
    return encoder.to(device).eval().requires_grad_(False), tokenizer


@torch.no_grad()
def encode_qwen(encoder, tokenizer, captions: list[str], *, max_length: int = 512) -> EncodedText:
    """Captions -> Qwen2.5-VL's last hidden states (B, max_length, D) and their mask (B, max_length), exactly as
    QwenImagePipeline.encode_prompt(max_sequence_length=max_length): the prompt template around each caption,
    tokenized with padding to the batch's longest (at most 1024 + 34 tokens), the language model's last hidden state
    under the attention mask, each sample's valid tokens without the template's first 34, cut to `max_length`; then
    zero-padded (mask 0) to `max_length`, so that every batch has one shape (the pipeline pads to the batch's longest;
    the teacher's attention ignores masked tokens)."""
    tokens = tokenizer(
        [QWEN_TEMPLATE.format(c) for c in captions],
        max_length=QWEN_TOKENIZER_MAX_LENGTH + QWEN_TEMPLATE_TOKENS,
        padding=True,
        truncation=True,
        return_tensors="pt",
    )
    device = next(encoder.parameters()).device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    # the language model (Qwen2_5_VLModel) without the LM head: the same hidden states, no (B, L, vocab) logits
    hidden_BLD = encoder.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    emb = hidden_BLD.new_zeros(len(captions), max_length, hidden_BLD.shape[-1])
    out_mask = torch.zeros(len(captions), max_length, dtype=torch.long, device=device)
    for i, (h_LD, m_L) in enumerate(zip(hidden_BLD, mask, strict=True)):
        valid = h_LD[m_L.bool()][QWEN_TEMPLATE_TOKENS:][:max_length]
        emb[i, : len(valid)] = valid
        out_mask[i, : len(valid)] = 1
    return EncodedText(tokens=emb, mask=out_mask)
