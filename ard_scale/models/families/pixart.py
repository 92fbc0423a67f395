"""`pixart`: text-to-image `PixArtTransformer2DModel` (adaLN-single, cross-attention to T5 tokens; PixArt-Σ layout).

One timestep MLP for all blocks plus a learned (6, D) table per block; the caption enters by cross-attention, which
every group of the student sees unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ard_scale.diffusion.condition import Condition
from ard_scale.errors import UserError
from ard_scale.models.families import register
from ard_scale.models.families.adaln import AdaLNFamily, Context, caption_bias

_NO_ADDED = {"resolution": None, "aspect_ratio": None}


class PixArtHead(nn.Module):
    """PixArt's final layer: a learned (2, D) shift/scale table plus the embedded timestep, then the projection."""

    def __init__(self, scale_shift_table: nn.Parameter, proj_out: nn.Linear):
        super().__init__()
        self.scale_shift_table, self.proj_out = scale_shift_table, proj_out

    def forward(self, x_BLD: torch.Tensor, cond_BD: torch.Tensor, norm_out: nn.Module) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + cond_BD[:, None]).chunk(2, dim=1)  # (B, 1, D) each
        return self.proj_out(norm_out(x_BLD) * (1 + scale) + shift)


@register
class PixArtFamily(AdaLNFamily):
    name = "pixart"
    # PixArtSigmaPipeline's `_text_preprocessing` (prompt and negative prompt). Its `clean_caption=True` default also
    # runs `_clean_caption` (URLs, HTML, some punctuation) where bs4 and ftfy are installed, which is not reproduced;
    # without them, and in `encode_prompt(clean_caption=False)`, it does exactly this.
    captions = "lower-cased and stripped"
    model_class_name = "PixArtTransformer2DModel"
    condition_kind = "text"
    text_encoders = ("t5",)
    encoder_folders = {"t5": "text_encoder"}
    description = "PixArt-Σ-style text-to-image DiT with T5 cross-attention"
    default_sizes = {1024: "pixart_sigma_1024"}
    sizes = {
        "debug": dict(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=4,
            sample_size=8,
            patch_size=2,
            cross_attention_dim=32,
            caption_channels=24,
            use_additional_conditions=False,
        ),
        # PixArt-Σ 1024px (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer config).
        "pixart_sigma_1024": dict(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=128,
            patch_size=2,
            cross_attention_dim=1152,
            caption_channels=4096,
            interpolation_scale=2,
            use_additional_conditions=False,
        ),
    }

    @classmethod
    def width_overrides(cls, width):
        out = super().width_overrides(width)  # cross-attention projects captions to the blocks' own width
        return {**out, "cross_attention_dim": out["num_attention_heads"] * out["attention_head_dim"]}

    @classmethod
    def check_model(cls, model):
        if model.config.use_additional_conditions:
            raise UserError(
                "this PixArt teacher uses resolution/aspect-ratio conditioning (use_additional_conditions=True, "
                "PixArt-α 1024); ard_scale supports PixArt-Σ-style teachers without it"
            )

    @classmethod
    def check_latent_size(cls, model, height, width):
        # PixArt-Σ trains on aspect-ratio buckets around its resolution (PixArtSigmaPipeline's resolution binning):
        # its PatchEmbed builds the sin-cos table for the size it is given, scaled as for its own square.
        if height == width:
            return cls.check_latent_side(model, height)
        p = cls.patch_size(model)
        if height % p or width % p:
            raise UserError(
                f"{height}×{width} latents: a PixArt teacher takes non-square latents whose sides are multiples of its "
                f"patch size {p}; use buckets (or a height and width) that are multiples of {p} × the VAE's "
                "downsampling",
                every_rank=True,
            )

    @classmethod
    def other_aspects(cls, model):
        return cls.patch_size(model)

    @classmethod
    def text_dim(cls, model):
        return model.config.caption_channels

    @classmethod
    def example_condition(cls, model, batch, device, text_tokens, dtype=None):
        text = torch.zeros(batch, text_tokens, model.config.caption_channels, device=device, dtype=dtype)
        return Condition(text=text, text_mask=torch.ones(batch, text_tokens, device=device))

    @classmethod
    def denoise(cls, model, x_t, t, cond):
        cls.check_condition(cond)
        x = x_t.to(model.pos_embed.proj.weight.dtype)
        return model(
            x,
            encoder_hidden_states=cond.text.to(x.dtype),
            timestep=t,
            encoder_attention_mask=cond.text_mask,
            added_cond_kwargs=_NO_ADDED,
            return_dict=False,
        )[0].to(x_t.dtype)

    @classmethod
    def features(cls, model, x_t, t, cond, layers):
        cls.check_condition(cond)
        h = model.pos_embed(x_t.to(model.pos_embed.proj.weight.dtype))
        t6, _ = model.adaln_single(t, _NO_ADDED, batch_size=x_t.shape[0], hidden_dtype=h.dtype)
        text = model.caption_projection(cond.text.to(h.dtype)).view(x_t.shape[0], -1, h.shape[-1])
        kwargs = {
            "timestep": t6,
            "encoder_hidden_states": text,
            "encoder_attention_mask": caption_bias(cond.text_mask, h.dtype),
        }
        out = {}
        for i in range(max(layers) + 1):
            h = model.transformer_blocks[i](h, **kwargs)
            out[i] = h
        return [out[i] for i in layers]

    # -- student pieces ----------------------------------------------------------------------------------------------
    @staticmethod
    def take_head(model):
        head = PixArtHead(model.scale_shift_table, model.proj_out)
        del model.scale_shift_table, model.proj_out
        return head

    @staticmethod
    def context(model, t_N, cond, repeats, dtype, text_from=None):
        ada = model.adaln_single
        emb_ND = ada.emb(t_N, resolution=None, aspect_ratio=None, batch_size=t_N.shape[0], hidden_dtype=dtype)
        t6_N6D = ada.linear(F.silu(emb_ND)).unflatten(1, (6, -1))
        if text_from is not None:  # the caption does not change between sampling steps
            return Context(mods=None, t6=t6_N6D, head_cond=emb_ND, text=text_from.text, text_bias=text_from.text_bias)
        B = cond.batch_size
        text = model.caption_projection(cond.text.to(dtype)).view(B, -1, emb_ND.shape[-1])
        return Context(mods=None, t6=t6_N6D, head_cond=emb_ND, text=text, text_bias=caption_bias(cond.text_mask, dtype))

    @staticmethod
    def block_mods(block, i, ctx):
        # Runs inside the block's own call: `scale_shift_table` is the block's direct parameter, which a
        # parameter-partitioning wrapper (ZeRO-3) only materialises while that block's forward runs.
        return tuple((block.scale_shift_table[None] + ctx.t6).unbind(1))

    @staticmethod
    def msa_norm(block):
        return block.norm1

    @staticmethod
    def ff_norm(block):
        return block.norm2  # PixArt applies no norm before cross-attention; norm2 precedes the MLP
