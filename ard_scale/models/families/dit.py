"""`dit`: class-conditional `DiTTransformer2DModel` (adaLN-Zero, learned sigma; DiT-XL/2 layout).

Every block has its own timestep + class embedder and modulation MLP; the final layer reads block 0's conditioning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ard_scale.diffusion.condition import Condition
from ard_scale.models.families import register
from ard_scale.models.families.adaln import AdaLNFamily, Context


class DiTHead(nn.Module):
    """DiT's final layer: adaLN (shift, scale) from the conditioning, then the linear un-patch projection."""

    def __init__(self, proj_out_1: nn.Linear, proj_out_2: nn.Linear):
        super().__init__()
        self.proj_out_1, self.proj_out_2 = proj_out_1, proj_out_2

    def forward(self, x_BLD: torch.Tensor, cond_BD: torch.Tensor, norm_out: nn.Module) -> torch.Tensor:
        shift, scale = self.proj_out_1(F.silu(cond_BD)).chunk(2, dim=1)
        return self.proj_out_2(norm_out(x_BLD) * (1 + scale[:, None]) + shift[:, None])


@register
class DiTFamily(AdaLNFamily):
    name = "dit"
    model_class_name = "DiTTransformer2DModel"
    condition_kind = "labels"
    description = "class-conditional DiT (adaLN)"
    default_sizes = {256: "dit_xl_2_256"}
    sizes = {
        "debug": dict(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=4,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=10,
        ),
        "dit_xl_2_256": dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        ),
    }

    @classmethod
    def size_overrides(cls, num_classes):
        return {"num_embeds_ada_norm": num_classes} if num_classes else {}

    @classmethod
    def num_classes(cls, model):
        return model.config.num_embeds_ada_norm

    @classmethod
    def null_condition(cls, model, batch_size, device=None):
        return Condition(labels=torch.full((batch_size,), cls.num_classes(model), dtype=torch.long, device=device))

    @classmethod
    def example_condition(cls, model, batch, device, text_tokens, dtype=None):
        return Condition(labels=torch.zeros(batch, dtype=torch.long, device=device))

    @classmethod
    def denoise(cls, model, x_t, t, cond):
        cls.check_condition(cond)
        x = x_t.to(model.pos_embed.proj.weight.dtype)
        return model(x, timestep=t, class_labels=cond.labels, return_dict=False)[0].to(x_t.dtype)

    @classmethod
    def features(cls, model, x_t, t, cond, layers):
        cls.check_condition(cond)
        h = model.pos_embed(x_t.to(model.pos_embed.proj.weight.dtype))
        out = {}
        for i in range(max(layers) + 1):
            h = model.transformer_blocks[i](h, timestep=t, class_labels=cond.labels)
            out[i] = h
        return [out[i] for i in layers]

    # -- student pieces ----------------------------------------------------------------------------------------------
    @staticmethod
    def take_head(model):
        head = DiTHead(model.proj_out_1, model.proj_out_2)
        del model.proj_out_1, model.proj_out_2
        return head

    @staticmethod
    def context(model, t_N, cond, repeats, dtype, text_from=None):
        labels_N = cond.labels.repeat_interleave(repeats)
        mods, head_cond = [], None
        for block in model.transformer_blocks:
            emb = block.norm1.emb
            # Embedding table directly: LabelEmbedding.forward would drop labels at random in train mode.
            c_ND = emb.timestep_embedder(emb.time_proj(t_N).to(dtype)) + emb.class_embedder.embedding_table(labels_N)
            mods.append(block.norm1.linear(F.silu(c_ND)).chunk(6, dim=1))
            head_cond = c_ND if head_cond is None else head_cond  # the teacher's final layer reads block 0's
        return Context(mods=mods, head_cond=head_cond)

    @staticmethod
    def block_mods(block, i, ctx):
        return ctx.mods[i]

    @staticmethod
    def msa_norm(block):
        return block.norm1.norm

    @staticmethod
    def ff_norm(block):
        return block.norm3
