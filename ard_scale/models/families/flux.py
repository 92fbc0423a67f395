"""`flux`: FLUX.1 (`FluxTransformer2DModel`), a flow-matching MMDiT: 19 double-stream blocks (separate text and image
weights, joint attention) then 38 single-stream blocks (one weight set over the concatenated text+image sequence),
3072 wide, RoPE over (text, row, column) ids, time + pooled CLIP (+ distilled guidance for FLUX.1-dev) modulation.

Student layout (DESIGN.md §1 "Joint-attention teachers"). Each of the S groups carries its *own copy* of the text
tokens, modulated by that group's time: group g = (text_g, image_g). The groups are folded into the batch
(B·S sequences of L_txt + L_img tokens), so every per-token computation (modulation, norms, MLPs, RoPE) is the
teacher's own, run once per group; only attention mixes tokens across groups:
- blocks at or above N (counted from the input across double- then single-stream blocks) run the teacher's own
  attention per group — block-diagonal over groups, so each group is exactly the teacher's step;
- the lowest N blocks have `ARDJointAttnProcessor` installed: under the history mask (M1–M4) group g attends to the
  text and image keys/values of the groups the mask allows (one SDPA over S·(L_txt + L_img) tokens with a boolean
  group mask); at sampling time it keeps a KV cache holding each earlier group's text *and* image keys/values.
RoPE ids are the teacher's, identical for every group. Cost: S·(L_txt + L_img) tokens instead of S·L_img (at 1024px
with 512 T5 tokens, L_img = 4096: 12.5 % more tokens per group than an image-only layout; `bench/flops.py` counts it).

Packing: states stay in the VAE latent layout (B, 16, H/8, W/8); the 2×2 packing into 64-channel tokens (FluxPipeline's
`_pack_latents`) happens here. Time: the network takes σ ∈ [0, 1] (it multiplies by 1000 itself); the schedule's
model time is 1000·σ, divided back here exactly as FluxPipeline does.
"""

from __future__ import annotations

import torch
from torch import nn

from ard_scale.diffusion.condition import Condition
from ard_scale.errors import UserError
from ard_scale.models.attention import AttentionPlan
from ard_scale.models.families import register
from ard_scale.models.families.base import Family
from ard_scale.models.families.joint import ContinuousAdaLNHead, JointAttentionFamily

PACK = 2  # latent pixels per token side


def pack(x_BCHW: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2·W/2, 4C) tokens, as FluxPipeline._pack_latents."""
    B, C, H, W = x_BCHW.shape
    x = x_BCHW.view(B, C, H // PACK, PACK, W // PACK, PACK).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // PACK) * (W // PACK), C * PACK * PACK)


def unpack(x_BLP: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Inverse of `pack`: (B, L, 4C) -> (B, C, H, W)."""
    B, _, P = x_BLP.shape
    C = P // (PACK * PACK)
    x = x_BLP.view(B, H // PACK, W // PACK, C, PACK, PACK).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, H, W)


def image_ids(H: int, W: int, device, dtype) -> torch.Tensor:
    """(L_img, 3) RoPE ids (0, row, column) of the packed latent grid, as FluxPipeline._prepare_latent_image_ids."""
    h, w = H // PACK, W // PACK
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


class ARDJointAttnProcessor:
    """FluxAttnProcessor's computation (projections, qk RMS-norms, text+image concatenation, RoPE) with the
    attention itself taken from the student's `AttentionPlan`. Holds no parameters."""

    def __init__(self, plan: AttentionPlan, layer: int):
        from diffusers.models.embeddings import apply_rotary_emb

        self.plan, self.layer, self.rope = plan, layer, apply_rotary_emb

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        q = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))
        k = attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:  # double-stream block: the text stream has its own projections
            eq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (attn.heads, -1)))
            ek = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (attn.heads, -1)))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (attn.heads, -1))
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        if image_rotary_emb is not None:
            q = self.rope(q, image_rotary_emb, sequence_dim=1)
            k = self.rope(k, image_rotary_emb, sequence_dim=1)
        o = self._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (N, heads, L, d)
        o = o.transpose(1, 2).flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:
            return o
        L_txt = encoder_hidden_states.shape[1]
        text, image = o[:, :L_txt], o[:, L_txt:]
        return attn.to_out[1](attn.to_out[0](image.contiguous())), attn.to_add_out(text.contiguous())

    def _attend(self, q, k, v):
        return self.plan.attend(self.layer, q, k, v)


def _blocks(model) -> list[nn.Module]:
    return [*model.transformer_blocks, *model.single_transformer_blocks]


@register
class FluxFamily(JointAttentionFamily):
    name = "flux"
    model_class_name = "FluxTransformer2DModel"
    condition_kind = "text"
    text_encoders = ("t5", "clip")
    encoder_folders = {"t5": "text_encoder_2", "clip": "text_encoder"}  # FluxPipeline's text_encoder_2 is T5
    guidance = "embedded"
    text_mask = False
    lora_targets = (*Family.lora_targets, "proj_mlp", "proj_out")  # single-stream blocks: fused MLP in, out
    description = "FLUX.1 flow-matching MMDiT (T5 tokens + pooled CLIP, distilled guidance)"
    default_sizes = {1024: "flux_1_dev"}
    sizes = {
        "debug": dict(  # 4 latent channels (16 packed), 2 double- + 2 single-stream blocks
            patch_size=1,
            in_channels=16,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=24,
            pooled_projection_dim=16,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ),
        # black-forest-labs/FLUX.1-dev transformer config (12B).
        "flux_1_dev": dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
    }

    # -- building --------------------------------------------------------------------------------------------------
    @classmethod
    def width_overrides(cls, width):
        out = super().width_overrides(width)  # RoPE's (text, row, column) axes must add up to the head width
        d = out["attention_head_dim"]
        return {**out, "axes_dims_rope": (d - 2 * (3 * d // 8), 3 * d // 8, 3 * d // 8)}

    @classmethod
    def pixel_overrides(cls, channels, resolution):
        return {"in_channels": channels * PACK * PACK}  # 2×2-packed tokens; no sample_size, no learned sigma

    # -- shape facts ---------------------------------------------------------------------------------------------
    @classmethod
    def check_model(cls, model):
        if model.config.patch_size != 1:
            raise UserError(
                f"this FLUX transformer has patch_size={model.config.patch_size}; ard_scale supports FLUX.1's "
                "layout (patch_size 1 over 2×2-packed latents)"
            )

    @classmethod
    def in_channels(cls, model):
        return model.config.in_channels // (PACK * PACK)

    @classmethod
    def out_channels(cls, model):
        return model.out_channels // (PACK * PACK)

    @classmethod
    def patch_size(cls, model):
        return PACK

    @classmethod
    def sample_size(cls, model):
        return 128  # FLUX.1's native 1024px: 128×128 latents

    @classmethod
    def check_latent_side(cls, model, side):
        if side % PACK:
            raise UserError(
                f"data.resolution gives {side}×{side} latents, which FLUX cannot pack into {PACK}×{PACK} patches; use "
                f"a resolution that is a multiple of {PACK} × the VAE's downsampling (FLUX.1's VAE: 16 px)",
                every_rank=True,
            )

    @classmethod
    def blocks(cls, model):
        return _blocks(model)

    @classmethod
    def config_depth(cls, config):
        return config["num_layers"] + config["num_single_layers"]  # double-stream, then single-stream blocks

    @classmethod
    def distilled_guidance(cls, model):
        return bool(model.config.guidance_embeds)

    @classmethod
    def text_dim(cls, model):
        return model.config.joint_attention_dim

    @classmethod
    def example_condition(cls, model, batch, device, text_tokens, dtype=None):
        c = model.config
        return Condition(
            text=torch.zeros(batch, text_tokens, c.joint_attention_dim, device=device, dtype=dtype),
            pooled=torch.zeros(batch, c.pooled_projection_dim, device=device, dtype=dtype),
            guidance=torch.full((batch,), 3.5, device=device) if c.guidance_embeds else None,
        )

    @classmethod
    def check_condition(cls, cond, who="teacher"):
        super().check_condition(cond, who)
        if cond.pooled is None:
            raise UserError(
                f"a FLUX {who} needs the pooled CLIP text embedding beside the T5 tokens (Condition.pooled); "
                "encode captions with the CLIP text encoder too, or precompute it into the shards"
            )
        if cond.text_mask is not None and not bool(cond.text_mask.bool().all()):
            raise UserError("FLUX attends to every T5 token (padding included, as FluxPipeline); give no text_mask")

    # -- the network's inputs ------------------------------------------------------------------------------------
    @classmethod
    def _inputs(cls, model, x_NCHW, t_N, cond: Condition, repeats: int):
        """Embedded image tokens (N, L_img, D), text tokens (N, L_txt, D), temb (N, D) and RoPE for N = B·repeats
        sequences; the condition (B samples) is repeated `repeats` times per sample."""
        cls.check_condition(cond)
        dtype = model.x_embedder.weight.dtype
        H, W = x_NCHW.shape[-2:]
        img = model.x_embedder(pack(x_NCHW.to(dtype)))
        # FluxPipeline feeds σ = t/1000 and the model scales it back by 1000. The sinusoidal embedding reads it in
        # fp32 here: FluxTransformer2DModel.forward first rounds σ to the weights' dtype, which in bf16 moves
        # σ = 0.999 to 1.0 — a whole time unit at the embedding's highest frequency. Equal in fp32.
        timestep = (t_N.float() / 1000) * 1000
        pooled = cond.pooled.to(dtype).repeat_interleave(repeats, 0)
        guidance = cls._guidance(model, cond)
        if guidance is not None:
            guidance = guidance.float().to(x_NCHW.device).repeat_interleave(repeats, 0) * 1000
            temb = model.time_text_embed(timestep, guidance, pooled)
        else:
            temb = model.time_text_embed(timestep, pooled)
        txt = model.context_embedder(cond.text.to(dtype)).repeat_interleave(repeats, 0)
        txt_ids = torch.zeros(cond.text.shape[1], 3, device=x_NCHW.device, dtype=dtype)
        rope = model.pos_embed(torch.cat([txt_ids, image_ids(H, W, x_NCHW.device, dtype)], 0))
        return img, txt, temb, rope

    @classmethod
    def _guidance(cls, model, cond: Condition) -> torch.Tensor | None:
        """The condition's distilled-guidance value for a guidance-embedding teacher (None for one without)."""
        if not model.config.guidance_embeds:
            return None
        if cond.guidance is None:
            raise UserError(
                "this FLUX teacher is guidance-distilled (guidance_embeds=True, FLUX.1-dev): the condition needs "
                "its guidance value (diffusion.guidance_scale)"
            )
        return cond.guidance

    @classmethod
    def _run_block(cls, block, img, txt, temb, rope, plan=None, mode="grouped"):
        if plan is not None:  # set inside the (possibly recomputed) call, so a checkpointed block replays its mode
            plan.mode = mode
        txt, img = block(hidden_states=img, encoder_hidden_states=txt, temb=temb, image_rotary_emb=rope)
        return img, txt

    # -- the teacher -----------------------------------------------------------------------------------------------
    @classmethod
    def denoise(cls, model, x_t, t, cond):
        """FluxTransformer2DModel.forward on packed latents, unpacked back to (B, 16, H, W)."""
        cls.check_condition(cond)
        H, W = x_t.shape[-2:]
        dtype = model.x_embedder.weight.dtype
        txt_ids = torch.zeros(cond.text.shape[1], 3, device=x_t.device, dtype=dtype)
        guidance = cls._guidance(model, cond)
        guidance = None if guidance is None else guidance.to(x_t.device)
        out = model(
            hidden_states=pack(x_t.to(dtype)),
            encoder_hidden_states=cond.text.to(dtype),
            pooled_projections=cond.pooled.to(dtype),
            timestep=t / 1000,
            img_ids=image_ids(H, W, x_t.device, dtype),
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack(out, H, W).to(x_t.dtype)

    @classmethod
    def features(cls, model, x_t, t, cond, layers):
        img, txt, temb, rope = cls._inputs(model, x_t, t, cond, 1)
        out = {}
        for i, block in enumerate(_blocks(model)[: max(layers) + 1]):
            img, txt = cls._run_block(block, img, txt, temb, rope)
            out[i] = img
        return [out[i] for i in layers]

    # -- the student -----------------------------------------------------------------------------------------------
    @classmethod
    def prepare_student(cls, student):
        model = student.backbone
        student.attention_plan = AttentionPlan()
        for i, block in enumerate(_blocks(model)[: student.cfg.num_causal_layers]):
            block.attn.set_processor(ARDJointAttnProcessor(student.attention_plan, i))
        head = ContinuousAdaLNHead(model.norm_out, model.proj_out)
        del model.norm_out, model.proj_out
        return head

    @classmethod
    def _latents(cls, student, tokens, H, W):
        return unpack(tokens, H, W)
