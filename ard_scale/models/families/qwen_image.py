"""`qwen_image`: Qwen-Image (`QwenImageTransformer2DModel`), a 20B flow-matching MMDiT: 60 dual-stream blocks (separate
text and image weights — modulation, norms, MLPs and q/k/v projections — and one joint attention over text ‖ image),
qk RMS-norm, 3072 wide, a 3-axis RoPE over (frame, row, column) of the packed latent grid, centred (`scale_rope`), with
the text positions continuing after the image's largest half-side; time-only modulation (no pooled embedding). The
caption is Qwen2.5-VL's last hidden states (3584 wide, padded, with a mask the joint attention honours).

Student layout (DESIGN.md §1 "Joint-attention teachers"), as `flux` and `sd3`: each of the S groups carries its *own
copy* of the text tokens, modulated by that group's time, and the groups are folded into the batch (B·S sequences of
L_txt + L_img tokens), so every per-token computation is the teacher's own and each block's modulation MLPs run once
per group (on B·S time embeddings), never per token:
- blocks at or above N run the teacher's own processor per group (block-diagonal over groups), with the text mask;
- the lowest N blocks have `ARDQwenAttnProcessor` installed: under the history mask (M1–M4) group g attends to the
  text and image keys/values of the groups the mask allows (one SDPA over the folded groups with a boolean group mask
  and-ed with every group's text-padding mask); at sampling time it keeps a KV cache of each earlier group's text and
  image keys/values and their padding mask.
RoPE is the teacher's own (`pos_embed` on the pipeline's `img_shapes` = [(1, H/2, W/2)] and the text length): every
group has the same image shape, so one RoPE table serves all of them. Cost: S·(L_txt + L_img) tokens instead of S·L_img.

Packing: states stay (B, 16, H/8, W/8) latents; the 2×2 packing into 64-channel tokens (QwenImagePipeline's
`_pack_latents`, the same as FLUX's) happens here. Time: the network takes σ (the pipeline passes timestep / 1000; the
embedder scales by 1000 itself). Guidance: true CFG (`guidance='cfg'`, the pipeline's `true_cfg_scale`) with its norm
rescaling (`guide`), the null condition the model card's negative prompt " ".
"""

from __future__ import annotations

import torch

from ard_scale.diffusion.condition import Condition, EncodedText
from ard_scale.errors import UserError
from ard_scale.models.attention import AttentionPlan
from ard_scale.models.families import register
from ard_scale.models.families.base import Family
from ard_scale.models.families.flux import PACK, pack, unpack
from ard_scale.models.families.joint import ContinuousAdaLNHead, JointAttentionFamily

# the RoPE table of QwenEmbedRope has 4096 positions per axis; text positions follow the image's largest half-side
ROPE_POSITIONS = 4096


class ARDQwenAttnProcessor:
    """QwenDoubleStreamAttnProcessor2_0's computation (both streams' projections, qk RMS-norms, RoPE, text ‖ image
    concatenation, output projections) with the attention itself taken from the student's `AttentionPlan`; the joint
    padding mask the block receives (`attention_mask`, (N, 1, 1, L)) goes to the plan as a key mask. No parameters."""

    def __init__(self, plan: AttentionPlan, layer: int):
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        self.plan, self.layer, self.rope = plan, layer, apply_rotary_emb_qwen

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        encoder_hidden_states_mask=None,
        attention_mask=None,
        image_rotary_emb=None,
    ):
        def heads(t):  # (N, L, H·d) -> (N, L, H, d)
            return t.unflatten(-1, (attn.heads, -1))

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        eq = heads(attn.add_q_proj(encoder_hidden_states))
        ek = heads(attn.add_k_proj(encoder_hidden_states))
        ev = heads(attn.add_v_proj(encoder_hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
        img_freqs, txt_freqs = image_rotary_emb
        q, k = self.rope(q, img_freqs, use_real=False), self.rope(k, img_freqs, use_real=False)
        eq, ek = self.rope(eq, txt_freqs, use_real=False), self.rope(ek, txt_freqs, use_real=False)
        q, k, v = (torch.cat([e, x], 1).transpose(1, 2) for e, x in ((eq, q), (ek, k), (ev, v)))  # (N, H, L, d)
        key_mask = None if attention_mask is None else attention_mask.reshape(attention_mask.shape[0], -1)
        o = self._attend(q, k, v, key_mask)
        o = o.transpose(1, 2).flatten(2, 3).to(q.dtype)
        L_txt = encoder_hidden_states.shape[1]
        text, image = o[:, :L_txt], o[:, L_txt:]
        return attn.to_out[1](attn.to_out[0](image.contiguous())), attn.to_add_out(text.contiguous())

    def _attend(self, q, k, v, key_mask):
        return self.plan.attend(self.layer, q, k, v, key_mask)


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """(frame, row, column) RoPE widths summing to `head_dim`, each even, in Qwen-Image's 16:56:56 spirit."""
    side = (head_dim * 7 // 16) // 2 * 2
    return head_dim - 2 * side, side, side


@register
class QwenImageFamily(JointAttentionFamily):
    name = "qwen_image"
    model_class_name = "QwenImageTransformer2DModel"
    condition_kind = "text"
    text_encoders = ("qwen",)  # Qwen2.5-VL's last hidden states (recipe section qwen_encoder)
    encoder_folders = {"qwen": "text_encoder"}
    null_caption = " "  # Qwen-Image's model card: negative_prompt=" " turns true CFG on
    guidance = "cfg"
    text_mask = True
    lora_targets = (*Family.lora_targets, "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")
    description = "Qwen-Image flow-matching MMDiT (Qwen2.5-VL hidden states with mask, true CFG with norm rescaling)"
    default_sizes = {1024: "qwen_image"}
    sizes = {
        # 4 latent channels (16 packed), 4 dual-stream blocks; text width 24 = the debug Qwen2.5-VL's hidden size
        "debug": dict(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=4,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=24,
            axes_dims_rope=(4, 6, 6),
        ),
        # Qwen/Qwen-Image transformer/config.json (20.4B).
        "qwen_image": dict(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=60,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=3584,
            guidance_embeds=False,
            axes_dims_rope=(16, 56, 56),
        ),
    }

    # -- building --------------------------------------------------------------------------------------------------
    @classmethod
    def width_overrides(cls, width):
        heads, head_dim = max(1, width // 32), min(32, width)
        return {"num_attention_heads": heads, "attention_head_dim": head_dim, "axes_dims_rope": _rope_axes(head_dim)}

    @classmethod
    def pixel_overrides(cls, channels, resolution):
        # 2×2-packed tokens in, `channels` per packed pixel out (no learned sigma, no sample_size)
        return {"in_channels": channels * PACK * PACK, "out_channels": channels}

    @classmethod
    def check_model(cls, model):
        from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

        c, problems = model.config, []
        if c.patch_size != PACK or c.in_channels != PACK * PACK * model.out_channels:
            problems.append(
                f"patch_size={c.patch_size}, in_channels={c.in_channels}, out_channels={model.out_channels} (the "
                f"pipeline packs 2×2 latent patches: need patch_size 2 and in_channels = 4 × out_channels)"
            )
        for flag, what in (
            ("zero_cond_t", "zero_cond_t=True (the edit models' zero-time modulation of condition images)"),
            ("use_additional_t_cond", "use_additional_t_cond=True (Qwen-Image-Layered's extra time condition)"),
            ("use_layer3d_rope", "use_layer3d_rope=True (the layered RoPE)"),
            ("guidance_embeds", "guidance_embeds=True (a guidance embedding; no released text-to-image model has one)"),
        ):
            if getattr(c, flag, False):
                problems.append(what)
        for i, block in enumerate(model.transformer_blocks):
            proc = block.attn.processor
            # a student's backbone (wrapped as a Teacher by exports) runs ours, 'grouped' outside the student
            if not isinstance(proc, (QwenDoubleStreamAttnProcessor2_0, ARDQwenAttnProcessor)):
                problems.append(
                    f"transformer_blocks.{i}.attn runs {type(proc).__name__} (supported: "
                    "QwenDoubleStreamAttnProcessor2_0)"
                )
            if getattr(block.attn, "fused_projections", False):
                problems.append(f"transformer_blocks.{i}.attn has fused qkv projections (unfuse them)")
        if problems:
            raise UserError(
                "this QwenImageTransformer2DModel has a layout ard_scale's qwen_image family does not support: "
                + "; ".join(problems)
                + ". Supported: the Qwen-Image text-to-image transformer as released (dual-stream blocks, qk "
                "RMS-norm, QwenEmbedRope, diffusers' default attention processor); for an edit or layered variant, "
                "load its text-to-image base"
            )

    # -- shape facts -----------------------------------------------------------------------------------------------
    @classmethod
    def in_channels(cls, model):
        return model.config.in_channels // (PACK * PACK)

    @classmethod
    def out_channels(cls, model):
        return model.out_channels  # the config counts unpacked channels (proj_out: 4 × out_channels)

    @classmethod
    def patch_size(cls, model):
        return PACK

    @classmethod
    def sample_size(cls, model):
        return 128  # Qwen-Image's native 1024px: 128×128 latents (QwenImagePipeline.default_sample_size)

    @classmethod
    def check_latent_side(cls, model, side):
        # text RoPE positions start after the image's half-side (scale_rope) and must stay inside the table
        max_side = 2 * 2 * (ROPE_POSITIONS - 1024)  # room for the pipeline's longest caption, 1024 tokens
        if side % PACK or side > max_side:
            raise UserError(
                f"data.resolution gives {side}×{side} latents; Qwen-Image packs {PACK}×{PACK} latent patches and its "
                f"RoPE table fits latent sides up to {max_side}: choose data.resolution as a multiple of 16 px (the "
                "VAE's 8 px per latent × the packing)",
                every_rank=True,
            )

    @classmethod
    def text_dim(cls, model):
        return model.config.joint_attention_dim

    @classmethod
    def example_condition(cls, model, batch, device, text_tokens, dtype=None):
        """`text_tokens` Qwen2.5-VL hidden states, all valid (no mask)."""
        c = model.config
        return Condition(text=torch.zeros(batch, text_tokens, c.joint_attention_dim, device=device, dtype=dtype))

    @classmethod
    def check_condition(cls, cond, who="teacher"):
        super().check_condition(cond, who)
        if cond.pooled is not None:
            raise UserError(
                f"a Qwen-Image {who} reads no pooled text embedding (Condition.pooled); give the Qwen2.5-VL hidden "
                "states and their mask only"
            )

    # -- conditions --------------------------------------------------------------------------------------------------
    @classmethod
    def assemble_condition(cls, encoded):
        """QwenImagePipeline.encode_prompt: Qwen2.5-VL's hidden states and their mask (`text_encoder.encode_qwen`)."""
        qwen = encoded["qwen"]
        return EncodedText(tokens=qwen.tokens, mask=qwen.mask)

    # -- guidance ----------------------------------------------------------------------------------------------------
    @classmethod
    def guide(cls, out_c, out_u, scale):
        """QwenImagePipeline's true CFG: comb = u + w·(c − u), rescaled per packed token to the conditional
        prediction's norm, comb · ‖c‖ / ‖comb‖ (the norms over each 2×2 patch's 4·C channels, as the pipeline takes
        them over its packed (B, L, 64) predictions)."""
        H, W = out_c.shape[-2:]
        comb = pack(out_u + scale * (out_c - out_u))
        cond_norm = pack(out_c).norm(dim=-1, keepdim=True)
        return unpack(comb * (cond_norm / comb.norm(dim=-1, keepdim=True)), H, W)

    # -- the network's inputs ------------------------------------------------------------------------------------
    @staticmethod
    def _text_mask(cond: Condition) -> torch.Tensor | None:
        """(B, L_txt) bool, or None when every text token is valid (QwenImagePipeline then passes no mask)."""
        if cond.text_mask is None or bool(cond.text_mask.bool().all()):
            return None
        return cond.text_mask.bool()

    @classmethod
    def _inputs(cls, model, x_NCHW, t_N, cond: Condition, repeats: int):
        """Embedded image tokens (N, L_img, D), text tokens (N, L_txt, D), temb (N, D), RoPE (image and text
        frequencies) and the joint key mask (N, L_txt + L_img) or None, for N = B·repeats sequences; the condition
        (B samples) is repeated `repeats` times per sample."""
        cls.check_condition(cond)
        dtype = model.img_in.weight.dtype
        H, W = x_NCHW.shape[-2:]
        img = model.img_in(pack(x_NCHW.to(dtype)))
        # QwenImagePipeline feeds σ = t/1000 (the embedder scales it by 1000). Fed in fp32, as `flux` does: the model's
        # forward first rounds σ to the weights' dtype (in bf16 that moves σ = 0.999 to 1.0). Equal in fp32.
        temb = model.time_text_embed(t_N.float() / 1000, img)
        txt = model.txt_in(model.txt_norm(cond.text.to(dtype))).repeat_interleave(repeats, 0)
        rope = model.pos_embed([[(1, H // PACK, W // PACK)]], max_txt_seq_len=cond.text.shape[1], device=img.device)
        mask = cls._text_mask(cond)  # -> the joint key mask: the text mask, then every image token
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], img.shape[1])], 1).to(img.device)
            mask = mask.repeat_interleave(repeats, 0)
        return img, txt, temb, rope, mask

    @classmethod
    def _run_block(cls, block, img, txt, temb, rope, mask, plan=None, mode="grouped"):
        if plan is not None:  # set inside the (possibly recomputed) call, so a checkpointed block replays its mode
            plan.mode = mode
        kwargs = {} if mask is None else {"attention_mask": mask[:, None, None, :]}
        txt, img = block(
            hidden_states=img,
            encoder_hidden_states=txt,
            encoder_hidden_states_mask=None,  # the joint mask goes in attention_mask, as the model's forward does
            temb=temb,
            image_rotary_emb=rope,
            joint_attention_kwargs=kwargs,
        )
        return img, txt

    # -- the teacher -----------------------------------------------------------------------------------------------
    @classmethod
    def denoise(cls, model, x_t, t, cond):
        """QwenImageTransformer2DModel.forward on packed latents (img_shapes, text mask and σ = t/1000 as
        QwenImagePipeline passes them), unpacked back to (B, 16, H, W)."""
        cls.check_condition(cond)
        B, _, H, W = x_t.shape
        dtype = model.img_in.weight.dtype
        mask = cls._text_mask(cond)
        mask = None if mask is None else cond.text_mask.to(x_t.device)
        out = model(
            hidden_states=pack(x_t.to(dtype)),
            encoder_hidden_states=cond.text.to(dtype),
            encoder_hidden_states_mask=mask,
            timestep=t / 1000,
            img_shapes=[[(1, H // PACK, W // PACK)]] * B,
            return_dict=False,
        )[0]
        return unpack(out, H, W).to(x_t.dtype)

    @classmethod
    def features(cls, model, x_t, t, cond, layers):
        img, txt, temb, rope, mask = cls._inputs(model, x_t, t, cond, 1)
        out = {}
        for i, block in enumerate(list(model.transformer_blocks)[: max(layers) + 1]):
            img, txt = cls._run_block(block, img, txt, temb, rope, mask)
            out[i] = img
        return [out[i] for i in layers]

    # -- the student -----------------------------------------------------------------------------------------------
    @classmethod
    def prepare_student(cls, student):
        model = student.backbone
        student.attention_plan = AttentionPlan()
        for i, block in enumerate(list(model.transformer_blocks)[: student.cfg.num_causal_layers]):
            block.attn.set_processor(ARDQwenAttnProcessor(student.attention_plan, i))
        head = ContinuousAdaLNHead(model.norm_out, model.proj_out)
        del model.norm_out, model.proj_out
        return head

    @classmethod
    def _latents(cls, student, tokens, H, W):
        return unpack(tokens, H, W)
