"""The conditioning a teacher or student receives: class labels (DiT), or T5 token embeddings + mask (PixArt), plus
a pooled CLIP embedding and a distilled-guidance value for the families that read them (FLUX.1)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ard_scale.errors import UserError


@dataclass
class Condition:
    """A batch of conditions. Exactly one of `labels` or `text` is set.

    labels:    (B,) long class indices; the null class (for CFG) is the teacher's `num_classes`.
    text:      (B, L_txt, C_txt) T5 token embeddings.
    text_mask: (B, L_txt) 1 for real tokens, 0 for padding (None = all tokens valid).
    pooled:    (B, C_pool) pooled text embedding (FLUX.1: CLIP-L's pooled output) or None.
    guidance:  (B,) float guidance value a guidance-distilled teacher embeds (FLUX.1-dev) or None.
    """

    labels: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    guidance: torch.Tensor | None = None

    def __post_init__(self):
        if (self.labels is None) == (self.text is None):
            raise UserError("a Condition needs exactly one of `labels` (class-conditional) or `text` (T5 embeddings)")
        if self.text_mask is not None and self.text is None:
            raise UserError("`text_mask` given without `text`")
        if self.pooled is not None and self.text is None:
            raise UserError("`pooled` given without `text`")

    @property
    def batch_size(self) -> int:
        return (self.labels if self.labels is not None else self.text).shape[0]

    def check_batch(self, batch: int, who: str) -> None:
        """Raise unless this holds one condition per sample of a batch of `batch` (the network would pair samples with
        conditions wrongly, or fail deep inside a layer)."""
        if self.batch_size != batch:
            raise UserError(
                f"the {who} got {batch} samples but {self.batch_size} conditions; give one condition per sample "
                f"(Condition.repeat_interleave(n) repeats each condition n times)"
            )

    def _map(self, fn) -> Condition:
        return Condition(
            **{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name)) for f in fields(self)}
        )

    def to(self, *args, **kwargs) -> Condition:
        """Moves tensors; a dtype argument applies to the float tensors (`text`, `pooled`) only."""

        def move(v):
            if v.is_floating_point() and v.ndim > 1:  # guidance (B,) keeps its fp32 value
                return v.to(*args, **kwargs)
            return v.to(device=_device_of(args, kwargs, v))

        return self._map(move)

    def __getitem__(self, index) -> Condition:
        return self._map(lambda v: v[index])

    def repeat_interleave(self, n: int) -> Condition:
        return self._map(lambda v: v.repeat_interleave(n, dim=0))

    @staticmethod
    def cat(conds: list[Condition]) -> Condition:
        """Concatenate along the batch (e.g. conditional and unconditional halves for CFG)."""
        first = conds[0]
        out = {}
        for f in fields(first):
            vals = [getattr(c, f.name) for c in conds]
            if all(v is None for v in vals):
                out[f.name] = None
            elif f.name == "text_mask" and any(v is None for v in vals):
                out[f.name] = torch.cat(
                    [
                        v if v is not None else torch.ones(c.text.shape[:2], dtype=torch.long, device=c.text.device)
                        for v, c in zip(vals, conds, strict=True)
                    ]
                )
            else:
                out[f.name] = torch.cat(vals)
        return Condition(**out)


@dataclass
class EncodedText:
    """One text encoder's output for a batch of captions, or the combination a family makes of several
    (`Family.assemble_condition`): token embeddings (B, L, D), their mask (B, L) where the encoder ran with one, and a
    pooled embedding (B, D_pool) where the encoder gives one (CLIP)."""

    tokens: torch.Tensor
    mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


def _device_of(args, kwargs, v):
    for a in (*args, kwargs.get("device")):
        if isinstance(a, (str, torch.device)):
            return a
    return v.device
