"""The student's computation shared by the joint-attention MMDiT families (FLUX.1, SD3.5, Qwen-Image).

Each such family provides `_inputs(model, x, t, cond, repeats) -> (img, txt, temb, *extras)` (the embedded image
tokens, one text copy per group, the per-group modulation input and whatever else its blocks read: RoPE, a key
mask), `_run_block(block, img, txt, temb, *extras, plan=, mode=)` through its ARD attention processors,
`blocks(model)`, `features(model, x, t, cond, layers)`, its heads and `_latents(student, tokens, H, W)` (tokens back
to (N, C, H, W)). This class runs them over the S groups: all at once under the history mask for training, one group
at a time with the KV cache for sampling.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ard_scale.models.families.base import Family


class ContinuousAdaLNHead(nn.Module):
    """The MMDiTs' final layer: `norm_out` (adaLN-continuous on the per-group conditioning embedding: time, and for
    FLUX/SD3 the pooled text) then `proj_out`. The attribute names are the teacher's, so head 0 is the teacher's final
    layer under its own parameter names."""

    def __init__(self, norm_out: nn.Module, proj_out: nn.Linear):
        super().__init__()
        self.norm_out, self.proj_out = norm_out, proj_out

    def forward(self, x_BLD: torch.Tensor, temb_BD: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.norm_out(x_BLD, temb_BD))


class JointAttentionFamily(Family):
    joint_attention = True

    @classmethod
    def _latents(cls, student, tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Head output tokens (N, L, P) -> latents (N, C, H, W)."""
        raise NotImplementedError

    @classmethod
    def _blocks_over_groups(cls, student, img, txt, temb, extras, mode_of):
        plan = student.attention_plan
        for i, block in enumerate(cls.blocks(student.backbone)):
            run = partial(_run_in_mode, cls._run_block, block, plan, mode_of(i))
            if student.activation_checkpointing and torch.is_grad_enabled():
                img, txt = checkpoint(run, img, txt, temb, *extras, use_reentrant=False)
            else:
                img, txt = run(img, txt, temb, *extras)
        return img

    @classmethod
    def student_forward(cls, student, states, cond):
        B, S, C, H, W = states.shape
        t_N = student.schedule.model_time(student.grid[:S].repeat(B)).to(states.device)
        img, txt, temb, *extras = cls._inputs(student.backbone, states.flatten(0, 1), t_N, cond, S)
        plan = student.attention_plan
        plan.groups, plan.mask_GG = S, student.history_mask[:S, :S]
        plan.history = student.history_kernel(states.device)
        img = cls._blocks_over_groups(
            student, img, txt, temb, extras, lambda i: "masked" if student.uses_mask(i) else "grouped"
        )
        img_BSLD, temb_BSD = img.unflatten(0, (B, S)), temb.unflatten(0, (B, S))
        out = torch.stack([student.head(s)(img_BSLD[:, s], temb_BSD[:, s]) for s in range(S)], 1)
        return cls._latents(student, out.flatten(0, 1), H, W).unflatten(0, (B, S))

    @classmethod
    def student_features(cls, student, x_t, t, cond, layers):
        # one group through the backbone: exactly the teacher's feature pass on the student's weights
        return cls.features(student.backbone, x_t, student.schedule.model_time(t).to(x_t.device), cond, layers)

    @classmethod
    def student_sample(cls, student, noise, cond):
        B, _, H, W = noise.shape
        plan = student.attention_plan
        plan.caches = {}
        x, states = noise, [noise]
        try:
            for g in range(student.num_steps):
                t_B = student.schedule.model_time(student.grid[g].repeat(B)).to(noise.device)
                img, txt, temb, *extras = cls._inputs(student.backbone, x, t_B, cond, 1)
                plan.visible = student.history_mask[g].nonzero().flatten().tolist()
                img = cls._blocks_over_groups(student, img, txt, temb, extras, lambda i: "cached")
                x = student.next_state(x, cls._latents(student, student.head(g)(img, temb), H, W).to(noise.dtype), g)
                states.append(x)
        finally:
            plan.caches, plan.visible = {}, None
        return states


def _run_in_mode(run_block, block, plan, mode, *inputs):
    """One block with the plan in `mode`, then back to 'grouped' however the call ends. A checkpointed block is run
    again by the backward, after the forward has returned: the plan must not stay in that block's mode, or a later
    one-group pass that sets none (`features`, e.g. the GAN's discriminator phase after the generator's backward)
    would attend across its batch as if its samples were one sample's groups."""
    try:
        return run_block(block, *inputs, plan=plan, mode=mode)
    finally:
        plan.mode = "grouped"
