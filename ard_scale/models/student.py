"""The ARD student (DESIGN.md §1 "Student input" to "Sampling").

A copy of the teacher's network that reads the S states x_{τ_S} … x_{τ_1} of a trajectory at once:
- every state is patch-embedded by the teacher's shared embedder with the same positional embedding, and the S
  groups of L tokens are laid side by side (S·L tokens);
- every token is modulated by the adaLN of its *own* state's time, computed once per group and broadcast;
- the lowest N blocks attend under a history mask (default block-causal), the blocks above block-diagonally,
  exactly as the teacher does;
- S output heads (or one shared), each initialised from the teacher's final layer, predict for group s either the
  teacher's native target (`solver`: the next state is one DDIM/Euler step) or the next state itself (`direct`).

Sampling is autoregressive: S forward passes of L tokens each, with a KV cache in the lowest N blocks only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import Schedule, first_order_step
from ard_scale.errors import UserError
from ard_scale.models.attention import group_mask
from ard_scale.models.flex import resolve_attention
from ard_scale.models.lora import add_adapters, target_names, trainable_state_only
from ard_scale.models.teachers import Teacher


class ARDStudent(nn.Module):
    """Autoregressive student built from (and initialised as) a teacher. The computation over groups is the
    teacher family's (`ard_scale.models.families`); this class owns what every family shares: the grid, the
    history mask, the heads, the next-state rule and the shape checks."""

    def __init__(
        self,
        teacher: Teacher,
        cfg: ARDConfig,
        schedule: Schedule,
        *,
        latent_shape: tuple[int, int, int] | None = None,
        guidance: float | None = None,
        latent_sizes: list[tuple[int, int]] | None = None,
    ):
        """`latent_shape` (C, H, W) of the states it was trained on (the default size to sample), the (H, W) of
        each aspect-ratio bucket it was also trained on (`latent_sizes`, data.buckets) and the embedded `guidance`
        value its conditions carried (guidance-distilled teachers): recorded with its checkpoints and exports, so a
        sampler built from an export draws the same noise and conditions as the in-training one."""
        super().__init__()
        self.latent_shape = None if latent_shape is None else tuple(int(n) for n in latent_shape)
        self.latent_sizes = None if latent_sizes is None else [(int(h), int(w)) for h, w in latent_sizes]
        self.guidance = guidance
        cfg.validate(depth=teacher.depth)
        self.cfg, self.schedule = cfg, schedule
        self.family = teacher.spec
        self.in_channels, self.out_channels = teacher.in_channels, teacher.out_channels
        self.patch_size = teacher.patch_size
        lora = cfg.lora
        share = lora.enabled and lora.share_teacher
        # Shared (ard_scale/models/lora.py): a structural copy whose parameters and buffers are the teacher's own
        # objects (nothing is copied); the teacher module is registered after the backbone, so shared parameters are
        # named by the backbone, and the teacher role runs that module unmodified.
        memo = {id(t): t for t in (*teacher.model.parameters(), *teacher.model.buffers())} if share else None
        self.backbone = copy.deepcopy(teacher.model, memo).requires_grad_(not lora.enabled).train()
        if share:
            self.teacher_model = teacher.model
        self.num_blocks = teacher.depth
        head = self.family.prepare_student(self)
        if lora.enabled:  # the heads train in full: their own weights, never the (maybe shared) teacher's
            head = copy.deepcopy(head).requires_grad_(True)
        self.heads = nn.ModuleList(
            [head] + [copy.deepcopy(head) for _ in range(0 if cfg.shared_head else cfg.num_steps - 1)]
        )
        if lora.enabled:
            suffixes = lora.targets if lora.targets is not None else self.family.lora_targets
            names = target_names(self.family.named_blocks(self.backbone), suffixes)
            # shared: the teacher's parameters that train_also matches get the backbone's own trainable copy
            add_adapters(self.backbone, lora, names, frozen=list(teacher.model.parameters()) if share else None)
            trainable_state_only(self)
        with torch.device("cpu"):  # structure, not weights: stays on CPU even when the model is built on meta
            self.grid = schedule.grid(cfg.num_steps)  # (S+1,) float64: τ_S … τ_1 and the clean end
            self.history_mask = group_mask(cfg.num_steps, cfg.mask, cfg.window)  # (S, S) bool
        self.activation_checkpointing = False

    # -- helpers -----------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ARDStudent:
        super().train(mode)
        if hasattr(self, "teacher_model"):  # the shared teacher stays the frozen teacher (eval mode) in either role
            self.teacher_model.eval()
        return self

    @property
    def shares_teacher(self) -> bool:
        """Whether the teacher's base weights live in this module (a LoRA student with share_teacher)."""
        return hasattr(self, "teacher_model")

    @property
    def num_steps(self) -> int:
        return self.cfg.num_steps

    @property
    def depth(self) -> int:
        return self.num_blocks

    def head(self, step: int) -> nn.Module:
        return self.heads[0 if self.cfg.shared_head else step]

    def uses_mask(self, layer: int) -> bool:
        """Whether block `layer` attends across groups under the history mask (else block-diagonally)."""
        return layer < self.cfg.num_causal_layers and self.cfg.mask != "diagonal"

    def history_kernel(self, device) -> str:
        """How the lowest N blocks attend across groups on `device`: 'flex' (block-sparse) or 'sdpa' (dense mask),
        from `student.attention` (ard_scale.models.flex.resolve_attention)."""
        return resolve_attention(self.cfg.attention, device)

    def _check_states(self, states: torch.Tensor, prefix: bool = False) -> None:
        S, C, p = self.num_steps, self.in_channels, self.patch_size
        if states.ndim != 5 or not (1 <= states.shape[1] <= S if prefix else states.shape[1] == S):
            raise UserError(
                f"the student takes S={S} states per sample as (B, {S}, {C}, H, W), got "
                f"{tuple(states.shape)}; pass x_τS … x_τ1 of the teacher trajectory"
            )
        if states.shape[2] != C or states.shape[-1] % p or states.shape[-2] % p:
            raise UserError(
                f"states of shape {tuple(states.shape)} do not match the teacher's patch grid: expected "
                f"{C} channels and H, W multiples of the patch size {p}"
            )

    # -- training: all S predictions from one forward pass ----------------------------------------------------------
    def forward(self, states: torch.Tensor, cond: Condition, *, prefix: bool = False) -> torch.Tensor:
        """Head outputs for teacher-forced states (B, S, C, H, W) -> (B, S, C_out, H, W).

        With `prefix=True` the first G <= S states may be given alone (x_τS … x_τ(S-G+1)); the masks make their
        predictions the same as in the full forward, which is how sampling without a KV cache recomputes history."""
        self._check_states(states, prefix)
        cond.check_batch(states.shape[0], "student")
        return self.family.student_forward(self, states, cond).to(states.dtype)

    def next_state(self, x_t: torch.Tensor, out: torch.Tensor, step: int) -> torch.Tensor:
        """The state after student step `step` (0 = from noise) given that step's head output."""
        out = out[:, : self.in_channels]  # drop learned-sigma channels
        if self.cfg.output == "direct":
            return out
        return first_order_step(self.schedule, x_t, self.grid[step], out, self.grid[step + 1])

    def next_states(self, states: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next states (B, G, C, H, W) from the head outputs `out` of the forward on `states`."""
        return torch.stack([self.next_state(states[:, s], out[:, s], s) for s in range(states.shape[1])], 1)

    def predict_next(self, states: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Teacher-forced next states (B, S, C, H, W): the prediction of x_{τ_{s-1}} from the history up to x_{τ_s}."""
        return self.next_states(states, self(states, cond))

    # -- features for the GAN discriminator -------------------------------------------------------------------------
    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, layers: list[int]) -> list[torch.Tensor]:
        """Hidden states (B, L, D) after each block in `layers` for one state x_t (B, C, H, W) at schedule times t
        (B,): the backbone run as the teacher would run it (one group, so no history mask applies), up to the
        highest requested block. Gradients flow to x_t and to the parameters alike; the GAN step decides which
        it takes (see ard_scale.trainer.gan)."""
        cond.check_batch(x_t.shape[0], "student")
        return self.family.student_features(self, x_t, t, cond, layers)

    # -- sampling: S steps of L tokens with a KV cache in the lowest N blocks ---------------------------------------
    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond: Condition, *, return_states: bool = False) -> torch.Tensor:
        """Autoregressive S-step generation from x_{τ_S} = noise (B, C, H, W). Returns the final state, or all
        S+1 states (B, S+1, C, H, W) with `return_states`."""
        if noise.ndim != 4:
            raise UserError(f"noise must be (B, C, H, W), got {tuple(noise.shape)}")
        self._check_states(noise[:, None].expand(-1, self.num_steps, -1, -1, -1))
        cond.check_batch(noise.shape[0], "student")
        states = self.family.student_sample(self, noise, cond)
        return torch.stack(states, 1) if return_states else states[-1]
