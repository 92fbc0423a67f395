"""`sd3`: Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`), a flow-matching MMDiT: a stack of joint blocks (separate
text and image weights, one attention over the concatenated image+text sequence), qk RMS-norm (SD3.5), a second,
image-only attention in the blocks of `dual_attention_layers` (SD3.5-Medium's MMDiT-X: its lowest 13 of 24), and a
last block that is `context_pre_only` (its text stream is read by the attention but not updated). Time + pooled CLIP
(CLIP-L ‖ CLIP-G projected text embeddings) modulation; sincos positional embedding cropped from a
`pos_embed_max_size`² table around the centre, so any latent side up to patch_size·pos_embed_max_size works.

Student layout (DESIGN.md §1 "Joint-attention teachers"), as `flux`: each of the S groups carries its *own copy* of
the text tokens (77 CLIP + T5 tokens), modulated by that group's time, and the groups are folded into the batch
(B·S sequences of L_img + L_txt tokens), so every per-token computation is the teacher's own, run once per group:
- blocks at or above N run the teacher's own attention processors per group (block-diagonal over groups);
- in the lowest N blocks `ARDSD3AttnProcessor` replaces *both* attentions (the joint one and, in dual-attention
  blocks, the image-only one): under the history mask (M1–M4) group g attends to the keys/values of the groups the
  mask allows (the joint attention: their image and text tokens; the image-only attention: their image tokens) in one
  SDPA over the folded groups with a boolean group mask; at sampling time each attention keeps a KV cache of the
  earlier groups. diffusers' `JointAttnProcessor2_0` drops any attention mask, which is why this family runs its own
  attention over the layer's projections.
The positional embedding is the teacher's, identical for every group. Cost: S·(L_txt + L_img) tokens instead of
S·L_img (1024px, 77 + 256 text tokens, L_img = 4096: 8.1 % more tokens per group; `bench/flops.py` counts it).

States stay (B, C, H, W) latents: the model's own patch embed (patch size 2) patchifies, the family unpatchifies as
`SD3Transformer2DModel.forward` does. Time: the network takes the schedule's model time 1000·σ directly, as
StableDiffusion3Pipeline passes the scheduler's timesteps. Guidance: true classifier-free guidance (`guidance='cfg'`)
with the empty prompt's embeddings as the null condition, as the pipeline's default negative prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ard_scale.diffusion.condition import Condition, EncodedText
from ard_scale.errors import UserError
from ard_scale.models.attention import AttentionPlan
from ard_scale.models.families import register
from ard_scale.models.families.joint import ContinuousAdaLNHead, JointAttentionFamily


def unpatchify(x_BLP: torch.Tensor, H: int, W: int, p: int) -> torch.Tensor:
    """(B, H/p·W/p, p·p·C) -> (B, C, H, W), exactly as SD3Transformer2DModel.forward."""
    B, _, P = x_BLP.shape
    C = P // (p * p)
    x = x_BLP.reshape(B, H // p, W // p, p, p, C)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, C, H, W)


class ARDSD3AttnProcessor:
    """JointAttnProcessor2_0's computation (projections, qk-norms, image+text concatenation, output projections,
    `context_pre_only`) with the attention itself taken from the student's `AttentionPlan`. Serves the joint attention
    (`attn`, with text) and the image-only second attention (`attn2`). Holds no parameters."""

    def __init__(self, plan: AttentionPlan, key: str):
        self.plan, self.key = plan, key

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        def heads(t):  # (N, L, H·d) -> (N, H, L, d)
            return t.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:  # joint attention: the text stream has its own projections
            eq = heads(attn.add_q_proj(encoder_hidden_states))
            ek = heads(attn.add_k_proj(encoder_hidden_states))
            ev = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([q, eq], 2), torch.cat([k, ek], 2), torch.cat([v, ev], 2)
        o = self._attend(q, k, v)  # (N, H, L, d)
        o = o.transpose(1, 2).flatten(2, 3).to(q.dtype)
        L_img = hidden_states.shape[1]
        image = attn.to_out[1](attn.to_out[0](o[:, :L_img].contiguous()))
        if encoder_hidden_states is None:
            return image
        text = o[:, L_img:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text.contiguous())
        return image, text

    def _attend(self, q, k, v):
        return self.plan.attend(self.key, q, k, v)


def _attentions(block) -> list[tuple[str, nn.Module]]:
    """The block's attention layers: the joint one, then SD3.5's image-only second one where it has it."""
    return [("attn", block.attn)] + ([("attn2", block.attn2)] if block.attn2 is not None else [])


@register
class SD3Family(JointAttentionFamily):
    name = "sd3"
    model_class_name = "SD3Transformer2DModel"
    condition_kind = "text"
    # T5 tokens, CLIP-L (pooled_encoder) and CLIP-G (pooled_encoder_2), both CLIPTextModelWithProjection
    text_encoders = ("t5", "clip", "clip_2")
    encoder_folders = {"clip": "text_encoder", "clip_2": "text_encoder_2", "t5": "text_encoder_3"}
    clip_projection = True
    guidance = "cfg"
    text_mask = False
    description = "Stable Diffusion 3/3.5 flow-matching MMDiT (CLIP-L + CLIP-G + T5 tokens, pooled CLIP, CFG)"
    default_sizes = {1024: "sd35_large"}
    sizes = {
        # 4 latent channels, 4 joint blocks (the lowest 2 dual-attention, the last context_pre_only), qk RMS-norm;
        # text width 24 = debug T5 = debug CLIP (16) + narrow debug CLIP (8) padded; pooled 16 + 8.
        "debug": dict(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=4,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=24,
            caption_projection_dim=32,
            pooled_projection_dim=24,
            pos_embed_max_size=16,
            dual_attention_layers=(0, 1),
            qk_norm="rms_norm",
        ),
        # stabilityai/stable-diffusion-3.5-medium transformer/config.json (2.5B, MMDiT-X).
        "sd35_medium": dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)),
            qk_norm="rms_norm",
        ),
        # stabilityai/stable-diffusion-3.5-large transformer/config.json (8.1B).
        "sd35_large": dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=38,
            attention_head_dim=64,
            num_attention_heads=38,
            joint_attention_dim=4096,
            caption_projection_dim=2432,
            pooled_projection_dim=2048,
            pos_embed_max_size=192,
            dual_attention_layers=(),
            qk_norm="rms_norm",
        ),
    }

    # -- building --------------------------------------------------------------------------------------------------
    @classmethod
    def width_overrides(cls, width):
        out = super().width_overrides(width)  # the caption projection feeds the blocks' own width
        return {**out, "caption_projection_dim": out["num_attention_heads"] * out["attention_head_dim"]}

    @classmethod
    def pixel_overrides(cls, channels, resolution):
        # no learned sigma; the cropped positional table must cover the resolution / patch_size patches per side
        table = max(16, resolution // 2)
        return dict(in_channels=channels, out_channels=channels, sample_size=resolution, pos_embed_max_size=table)

    @classmethod
    def check_model(cls, model):
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        # qk-norms need no check: ours applies `norm_q`/`norm_k` exactly where JointAttnProcessor2_0 does
        c, problems = model.config, []
        if c.pos_embed_max_size is None or model.pos_embed.pos_embed is None:
            problems.append("a positional embedding without pos_embed_max_size cropping")
        if getattr(model, "image_proj", None) is not None:
            problems.append("an IP-Adapter image projection")
        for i, block in enumerate(model.transformer_blocks):
            for name, attn in _attentions(block):
                proc = type(attn.processor).__name__
                # a student's backbone (wrapped as a Teacher by exports) runs ours, 'grouped' outside the student
                if not isinstance(attn.processor, (JointAttnProcessor2_0, ARDSD3AttnProcessor)):
                    problems.append(f"transformer_blocks.{i}.{name} runs {proc} (supported: JointAttnProcessor2_0)")
                if getattr(attn, "fused_projections", False):
                    problems.append(f"transformer_blocks.{i}.{name} has fused qkv projections (unfuse them)")
                if attn.residual_connection or attn.rescale_output_factor != 1 or attn.norm_cross is not None:
                    problems.append(f"transformer_blocks.{i}.{name} has a residual/rescale/cross norm")
        if problems:
            raise UserError(
                "this SD3Transformer2DModel has a layout ard_scale's SD3 family does not support: "
                + "; ".join(problems)
                + ". Supported: SD3 / SD3.5 transformers as released (joint blocks, optional dual attention, "
                "qk RMS-norm, cropped sincos positions, diffusers' default attention processors)"
            )

    # -- shape facts -----------------------------------------------------------------------------------------------
    @classmethod
    def check_latent_side(cls, model, side):
        p, max_patches = model.config.patch_size, model.config.pos_embed_max_size
        if side % p or side // p > max_patches:
            raise UserError(
                f"data.resolution gives {side}×{side} latents; this SD3 teacher takes a latent side that is a multiple "
                f"of its patch size {p} and at most patch_size × pos_embed_max_size = {p * max_patches} (its "
                "positional table is cropped, not interpolated); choose data.resolution accordingly (SD3's VAE: 8 px "
                f"per latent, so multiples of {8 * p} px up to {8 * p * max_patches} px)",
                every_rank=True,
            )

    @classmethod
    def text_dim(cls, model):
        return model.config.joint_attention_dim

    @classmethod
    def example_condition(cls, model, batch, device, text_tokens, dtype=None):
        """`text_tokens` T5 tokens after StableDiffusion3Pipeline's 77 CLIP tokens; the pooled CLIP-L ‖ CLIP-G."""
        c = model.config
        return Condition(
            text=torch.zeros(batch, 77 + text_tokens, c.joint_attention_dim, device=device, dtype=dtype),
            pooled=torch.zeros(batch, c.pooled_projection_dim, device=device, dtype=dtype),
        )

    @classmethod
    def check_condition(cls, cond, who="teacher"):
        super().check_condition(cond, who)
        if cond.pooled is None:
            raise UserError(
                f"an SD3 {who} needs the pooled CLIP-L ‖ CLIP-G text embedding beside the token embeddings "
                "(Condition.pooled); encode captions with both CLIP text encoders (pooled_encoder, pooled_encoder_2)"
            )
        if cond.text_mask is not None and not bool(cond.text_mask.bool().all()):
            raise UserError(
                "SD3 attends to every CLIP and T5 token (padding included, as StableDiffusion3Pipeline); give no "
                "text_mask"
            )

    # -- conditions ------------------------------------------------------------------------------------------------
    @classmethod
    def assemble_condition(cls, encoded):
        """StableDiffusion3Pipeline.encode_prompt: CLIP-L ‖ CLIP-G penultimate hidden states (channels), zero-padded
        to T5's width, then the T5 tokens after them (sequence); pooled = CLIP-L ‖ CLIP-G projected embeddings."""
        t5, clip_l, clip_g = encoded["t5"], encoded["clip"], encoded["clip_2"]
        if clip_l.tokens.shape[1] != clip_g.tokens.shape[1]:
            raise UserError(
                f"SD3 concatenates CLIP-L's and CLIP-G's token embeddings channel-wise, but they have "
                f"{clip_l.tokens.shape[1]} and {clip_g.tokens.shape[1]} tokens: set pooled_encoder.max_length and "
                "pooled_encoder_2.max_length equal (StableDiffusion3Pipeline: 77 both)"
            )
        clip = torch.cat([clip_l.tokens, clip_g.tokens], -1)
        if clip.shape[-1] > t5.tokens.shape[-1]:
            raise UserError(
                f"the CLIP token embeddings are {clip.shape[-1]} wide together, wider than the T5 tokens "
                f"({t5.tokens.shape[-1]}); SD3 pads CLIP-L ‖ CLIP-G to T5's width: give matching encoders"
            )
        clip = F.pad(clip, (0, t5.tokens.shape[-1] - clip.shape[-1]))
        return EncodedText(
            tokens=torch.cat([clip, t5.tokens], -2), pooled=torch.cat([clip_l.pooled, clip_g.pooled], -1)
        )

    # -- the network's inputs --------------------------------------------------------------------------------------
    @classmethod
    def _inputs(cls, model, x_NCHW, t_N, cond: Condition, repeats: int):
        """Embedded image tokens (N, L_img, D), text tokens (N, L_txt, D) and temb (N, D) for N = B·repeats
        sequences; the condition (B samples) is repeated `repeats` times per sample."""
        cls.check_condition(cond)
        dtype = model.context_embedder.weight.dtype
        img = model.pos_embed(x_NCHW.to(dtype))  # patches + the cropped positional embedding
        pooled = cond.pooled.to(dtype).repeat_interleave(repeats, 0)
        temb = model.time_text_embed(t_N.float(), pooled)
        txt = model.context_embedder(cond.text.to(dtype)).repeat_interleave(repeats, 0)
        return img, txt, temb

    @classmethod
    def _run_block(cls, block, img, txt, temb, plan=None, mode="grouped"):
        if plan is not None:  # set inside the (possibly recomputed) call, so a checkpointed block replays its mode
            plan.mode = mode
        txt, img = block(hidden_states=img, encoder_hidden_states=txt, temb=temb)
        return img, txt  # txt is None after the context_pre_only last block

    # -- the teacher -------------------------------------------------------------------------------------------------
    @classmethod
    def denoise(cls, model, x_t, t, cond):
        """SD3Transformer2DModel.forward on (B, C, H, W) latents at model times t = 1000·σ (B,)."""
        cls.check_condition(cond)
        dtype = model.context_embedder.weight.dtype
        out = model(
            hidden_states=x_t.to(dtype),
            encoder_hidden_states=cond.text.to(dtype),
            pooled_projections=cond.pooled.to(dtype),
            timestep=t.float(),
            return_dict=False,
        )[0]
        return out.to(x_t.dtype)

    @classmethod
    def features(cls, model, x_t, t, cond, layers):
        img, txt, temb = cls._inputs(model, x_t, t, cond, 1)
        out = {}
        for i, block in enumerate(list(model.transformer_blocks)[: max(layers) + 1]):
            img, txt = cls._run_block(block, img, txt, temb)
            out[i] = img
        return [out[i] for i in layers]

    # -- the student -------------------------------------------------------------------------------------------------
    @classmethod
    def prepare_student(cls, student):
        model = student.backbone
        student.attention_plan = AttentionPlan()
        for i, block in enumerate(list(model.transformer_blocks)[: student.cfg.num_causal_layers]):
            for name, attn in _attentions(block):
                attn.set_processor(ARDSD3AttnProcessor(student.attention_plan, f"{i}.{name}"))
        head = ContinuousAdaLNHead(model.norm_out, model.proj_out)
        del model.norm_out, model.proj_out
        return head

    @classmethod
    def _latents(cls, student, tokens, H, W):
        return unpatchify(tokens, H, W, student.patch_size)
