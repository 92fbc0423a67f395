"""Batch -> (condition, null condition) for the teacher's family: class labels, or captions through the family's
text encoders (or the embeddings precomputed in the shards), with the family's guidance.

`Conditioner` takes the teacher, the encoder section of each slot it may read and its guidance settings; the
trainer's `build_conditioner` (trainer/build.py) maps a recipe onto them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ard_scale.config.models import SLOT_SECTIONS
from ard_scale.diffusion.condition import Condition, EncodedText
from ard_scale.errors import UserError
from ard_scale.models.folders import pipeline_subfolders
from ard_scale.models.teachers import Teacher
from ard_scale.trainer.checks import check_labels

# Text encoder slots a family may list (`family.text_encoders`), in the order they load and encode: the recipe
# section each reads, what the teacher reads from it and where its `path` points (for a missing section's error).
TEXT_SOURCES = ("auto", "precomputed", "captions")  # Conditioner's text_source

_SLOT_TEXT = {  # slot -> (what the family reads from it, where its files are); loaded in this order
    "t5": ("T5's token embeddings", "a folder with the T5 encoder and its tokenizer"),
    "qwen": ("Qwen2.5-VL's hidden states", "the pipeline's text_encoder/ and tokenizer/"),
    "clip": ("CLIP's pooled text embedding", "the pipeline's text_encoder/ and tokenizer/"),
    "clip_2": ("a second CLIP text encoder", "the pipeline's text_encoder_2/ and tokenizer_2/"),
}
SLOTS = {slot: (SLOT_SECTIONS[slot], *text) for slot, text in _SLOT_TEXT.items()}  # + the recipe section


def distilled_guidance(teacher: Teacher, guidance_scale: float) -> float | None:
    """The guidance value a guidance-distilled teacher (FLUX.1-dev) embeds in its condition, None for others."""
    if teacher.spec.guidance == "embedded" and teacher.distilled_guidance:
        return float(guidance_scale)
    return None


@dataclass
class LoadedEncoder:
    """One slot's frozen text encoder, its tokenizer and the token count it pads captions to."""

    model: nn.Module
    tokenizer: Any
    max_length: int


def load_encoder(
    slot: str, section, spec, *, dtype: torch.dtype, t5_dtype: torch.dtype = torch.float32
) -> LoadedEncoder:
    """The encoder of `slot` of family `spec` from its recipe section (`path`: a local folder, or the family's
    pipeline folder, read in its `encoder_folders[slot]`; else `size`: random weights, each CLIP slot seeded apart)."""
    from ard_scale.models.text_encoder import build_clip, build_qwen, build_t5, load_clip, load_qwen, load_t5

    key, reads, where = SLOTS[slot]
    if section.path is None and section.size is None:
        raise UserError(f"a {spec.name} teacher reads {reads}: set {key}.path ({where}) or {key}.size", every_rank=True)
    subfolders = pipeline_subfolders(spec.encoder_folders[slot])  # where the family's pipeline folder keeps it
    if slot == "t5":  # in fp32 unless text_encoder.precision is 'run'; loaded as the pipelines load it (torch_dtype)
        if section.path is not None:
            model, tokenizer = load_t5(section.path, dtype=t5_dtype, folder=subfolders[0])
        else:
            model, tokenizer = build_t5(section.size)
            model = model.to(dtype=t5_dtype)
    elif slot == "qwen":  # in the run's precision (QwenImagePipeline runs it in bf16): 8.3B parameters
        loaded = (
            load_qwen(section.path, dtype=dtype, subfolders=subfolders)
            if section.path is not None
            else build_qwen(section.size)
        )
        model, tokenizer = loaded[0].to(dtype=dtype), loaded[1]
    elif section.path is not None:
        projection = spec.clip_projection
        model, tokenizer = load_clip(section.path, projection=projection, subfolders=subfolders, key=key)
    else:
        seed = 0 if slot == "clip" else 1
        model, tokenizer = build_clip(section.size, seed=seed, projection=spec.clip_projection, key=key)
    return LoadedEncoder(model, tokenizer, section.max_length)


def encode_slot(slot: str, encoder: LoadedEncoder, captions: list[str], *, use_mask: bool) -> EncodedText:
    from ard_scale.models.text_encoder import encode_captions, encode_clip, encode_qwen

    if slot == "t5":
        text, mask = encode_captions(
            encoder.model, encoder.tokenizer, captions, max_length=encoder.max_length, use_mask=use_mask
        )
        return EncodedText(tokens=text, mask=mask)
    encode = encode_qwen if slot == "qwen" else encode_clip
    return encode(encoder.model, encoder.tokenizer, captions, max_length=encoder.max_length)


def load_text_encoders(
    spec, sections: dict[str, Any], *, dtype: torch.dtype, t5_dtype: torch.dtype = torch.float32, device="cpu"
) -> dict[str, LoadedEncoder]:
    """The encoders family `spec` lists by slot, from their recipe sections (`sections`: slot -> section), on
    `device`; `dtype`: Qwen2.5-VL's, `t5_dtype`: T5's (text_encoder.precision); CLIP runs in fp32."""
    encoders = {}
    for slot in (s for s in SLOTS if s in spec.text_encoders):
        encoder = load_encoder(slot, sections[slot], spec, dtype=dtype, t5_dtype=t5_dtype)
        encoder.model.to(device)
        encoders[slot] = encoder
    return encoders


@torch.no_grad()
def encode_text(spec, encoders: dict[str, LoadedEncoder], captions: list[str]) -> EncodedText:
    """Captions -> the text the family's teacher reads (tokens, mask, pooled): each encoder's output, combined as
    the family's pipeline does (`assemble_condition`). What launchers/precompute_text.py stores and the trainer reads
    back in place of running the encoders."""
    captions = spec.preprocess_captions(captions)  # e.g. PixArt's pipeline lower-cases and strips its prompts
    encoded = {slot: encode_slot(slot, e, captions, use_mask=spec.text_mask) for slot, e in encoders.items()}
    return spec.assemble_condition(encoded)


class Conditioner:
    """Batch -> (condition, null condition) for the teacher's family, on `device`.

    Class-conditional families: the batch's labels; null = class `num_classes`. Text families: the encoders the
    family lists by slot (`family.text_encoders`; `sections` maps each slot — 't5', 'clip', 'clip_2', 'qwen' — to
    its recipe section: text_encoder, pooled_encoder, pooled_encoder_2, qwen_encoder) run on the captions, and the
    family combines their outputs (`family.assemble_condition`: T5 tokens + CLIP's pooled embedding for FLUX.1;
    CLIP-L ‖ CLIP-G tokens padded and prepended to T5's, pooled CLIP-L ‖ CLIP-G for SD3; Qwen2.5-VL's hidden states
    and mask for Qwen-Image); or that combined text precomputed in the shards by launchers/precompute_text.py
    (`t5_emb`/`t5_mask` — named for T5, holding whatever tokens the family reads —, with `pooled_emb` where a 'clip'
    slot is listed; without the mask where the family attends to padding).

    Guidance (`family.guidance`): 'cfg' — the null condition is the condition of the family's `null_caption` (the
    empty caption; Qwen-Image's " "), encoded once; 'embedded' — every condition carries `guidance_scale` as its
    guidance value and there is no null condition (`cfg_scale` is 1). With `keep_encoders` false (precomputed
    embeddings, nothing to evaluate) the encoders are loaded only to encode the null caption, then dropped, or not at
    all where the shards carry that `null` condition too (launchers/precompute_text.py writes it).
    `qwen_dtype`: Qwen2.5-VL's dtype, `t5_dtype`: T5's (text_encoder.precision); CLIP runs in fp32.

    `text_source` says where a batch's text condition comes from, one choice for the whole run: 'precomputed' — the
    shards' stored embeddings, and a batch without them is an error; 'captions' — the encoders, on the captions, even
    where the shards also carry embeddings; 'auto' — stored where the batch has them, else the captions (one process
    only: with ZeRO-3 encoders, encoding is collective, and ranks whose batches chose differently would hang).
    Prompts outside the shards (evaluation, a pipeline) go through `encode`."""

    def __init__(
        self,
        teacher: Teacher,
        sections: dict[str, Any],
        *,
        guidance_scale: float,
        keep_encoders: bool = True,
        null: Condition | None = None,
        qwen_dtype: torch.dtype = torch.float32,
        t5_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        text_source: str = "auto",
    ):
        if text_source not in TEXT_SOURCES:
            raise ValueError(f"text_source {text_source!r}: one of {', '.join(TEXT_SOURCES)}")
        self.text_source = text_source
        spec = teacher.spec
        self.kind, self.teacher, self.spec, self.device = teacher.condition_kind, teacher, spec, torch.device(device)
        self.use_mask, self.needs_pooled = spec.text_mask, "clip" in spec.text_encoders
        self.cfg_scale = 1.0 if spec.guidance == "embedded" else float(guidance_scale)
        self.guidance = distilled_guidance(teacher, guidance_scale)
        self.encoders: dict[str, LoadedEncoder] = {}
        self.null: Condition | None = None
        if self.kind != "text" or (not keep_encoders and self.cfg_scale == 1):
            return
        if not keep_encoders and null is not None:  # precomputed with the shards: no encoder to load
            self.null = null
            return
        self.encoders = load_text_encoders(spec, sections, dtype=qwen_dtype, t5_dtype=t5_dtype, device=self.device)
        if self.cfg_scale != 1:
            self.null = self._encode([spec.null_caption])
        if not keep_encoders:
            self.encoders = {}

    def partition(self, wrap) -> None:
        """Replace each loaded text encoder by `wrap(encoder)`: the trainer holds them in frozen ZeRO-3 engines
        (`zero.teacher_stage` 3), whose hooks gather each layer's weights as it runs, so every rank keeps 1/N of
        them. Encoding is then collective: every rank must encode the same number of times, as the step does."""
        for encoder in self.encoders.values():
            encoder.model = wrap(encoder.model)

    @property
    def can_encode(self) -> bool:
        """Whether captions can be encoded here (the family's encoders are loaded)."""
        return bool(self.encoders)

    def __call__(self, batch: dict[str, Any]) -> tuple[Condition, Condition | None]:
        """The batch's condition and null condition (None when guidance needs none), on the run's device."""
        cond, null = self._conditions(batch)
        return cond.to(self.device), None if null is None else null.to(self.device)

    def encode(self, captions: list[str]) -> Condition:
        """The condition of `captions` (prompts that are not a shard batch: evaluation, a pipeline), on the run's
        device. Collective where the encoders are ZeRO-3 engines."""
        if not self.can_encode:
            raise UserError(
                "no text encoder is loaded to encode prompts: give text_encoder.path (and the family's "
                "other encoder paths)"
            )
        return self._encode(list(captions)).to(self.device)

    def to(self, device: torch.device | str) -> Conditioner:
        """Move the loaded encoders and the null condition to `device` (nothing is read again)."""
        self.device = torch.device(device)
        for encoder in self.encoders.values():
            encoder.model.to(self.device)
        self.null = None if self.null is None else self.null.to(self.device)
        return self

    def _conditions(self, batch: dict[str, Any]) -> tuple[Condition, Condition | None]:
        if self.kind == "labels":
            if "labels" not in batch:
                raise UserError(  # the shards carry none, or only other samples have one
                    f"the class-conditional teacher needs class labels, but samples {_keys(batch)} have no class "
                    "label; write shards with a label for every sample (launchers/build_shards.py reads it from each "
                    "image's .json) or leave the unlabelled ones out"
                )
            labels = batch["labels"].long()
            check_labels(labels, batch.get("keys"), self.teacher.num_classes)
            return Condition(labels=labels), self.teacher.null_condition(labels.shape[0])
        stored = "t5_emb" in batch and (not self.needs_pooled or "pooled_emb" in batch)
        if self.text_source == "captions" or (self.text_source == "auto" and not stored and self.can_encode):
            if "captions" not in batch:
                raise UserError(
                    f"the batch of samples {_keys(batch)} carries no captions to encode; write shards with captions "
                    "(launchers/build_shards.py), or precompute their embeddings (launchers/precompute_text.py) and "
                    "set text_encoder.use_precomputed=true"
                )
            cond = self._encode(batch["captions"])
        elif stored:
            cond = self.stored(batch["t5_emb"], batch["t5_mask"], batch.get("pooled_emb"))
        else:
            wanted = "t5_emb and pooled_emb" if self.needs_pooled else "t5_emb"
            raise UserError(
                f"text_encoder.use_precomputed is set but the batch of samples {_keys(batch)} carries no {wanted} "
                "(every shard must be precomputed: a run reads one kind); run launchers/precompute_text.py SHARDS OUT "
                "--recipe RECIPE on the shards (it writes what the family reads) or set "
                "text_encoder.use_precomputed=false"
            )
        if self.null is None:  # no CFG: the null condition is never evaluated
            return cond, None
        return cond, batch_null(self.null, *cond.text.shape[:2])

    def stored(self, text: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor | None) -> Condition:
        """The condition of text stored by launchers/precompute_text.py (shards, trajectory dumps): completed as this
        family's encoders would give it (`stored_condition`)."""
        return stored_condition(
            text, mask, pooled if self.needs_pooled else None, use_mask=self.use_mask, guidance=self.guidance
        )

    def _guidance(self, batch_size: int) -> torch.Tensor | None:
        return None if self.guidance is None else torch.full((batch_size,), self.guidance)

    def _encode(self, captions: list[str]) -> Condition:
        """Captions -> their condition: each listed encoder's output, combined as the family's pipeline does."""
        out = encode_text(self.spec, self.encoders, captions)
        return Condition(text=out.tokens, text_mask=out.mask, pooled=out.pooled, guidance=self._guidance(len(captions)))


def _keys(batch: dict[str, Any], shown: int = 3) -> str:
    """The first sample keys of a batch, for an error message ('?' where the batch carries none)."""
    keys = list(batch.get("keys") or [])
    if not keys:
        return "?"
    return ", ".join(map(str, keys[:shown])) + (", ..." if len(keys) > shown else "")


def stored_condition(
    text: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor | None, *, use_mask: bool, guidance: float | None
) -> Condition:
    """A condition from stored text (B, L, D), its mask (B, L) and pooled embedding (B, D) or None: in fp32, the mask
    only where the family reads one (`Family.text_mask`), a guidance-distilled teacher's embedded value."""
    return Condition(
        text=text.float(),
        text_mask=mask if use_mask else None,
        pooled=None if pooled is None else pooled.float(),
        guidance=None if guidance is None else torch.full((text.shape[0],), guidance),
    )


def batch_null(null: Condition, batch_size: int, num_tokens: int) -> Condition:
    """The null condition (a batch of one) for a batch of `batch_size` captions of `num_tokens` tokens: its text and
    mask zero-padded or cut to that count (precomputed shards may hold another than the encoder gives)."""
    B, L = batch_size, num_tokens
    text = torch.nn.functional.pad(null.text, (0, 0, 0, max(0, L - null.text.shape[1])))[:, :L]
    mask = None
    if null.text_mask is not None:
        mask = torch.nn.functional.pad(null.text_mask, (0, max(0, L - null.text_mask.shape[1])))[:, :L].expand(B, -1)
    pooled = None if null.pooled is None else null.pooled.expand(B, -1)
    return Condition(text=text.expand(B, -1, -1), text_mask=mask, pooled=pooled)


def precomputed_null(shards: str | None) -> Condition | None:
    """The null condition launchers/precompute_text.py stored beside shard folder `shards` (batch of one), or None."""
    from ard_scale.data.text_encoding import load_null

    if shards is None or not os.path.isdir(shards):
        return None
    tensors = load_null(shards)
    if tensors is None:
        return None
    one = {k: v[None] for k, v in tensors.items()}
    return Condition(text=one["text"], text_mask=one.get("text_mask"), pooled=one.get("pooled"))
