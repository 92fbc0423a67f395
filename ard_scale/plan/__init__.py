"""Memory and FLOPs plan of a recipe on N GPUs, from meta-device models (no weights allocated).

    python -m ard_scale.plan recipes/t2i_1024.yaml --gpus 64 [--gpu-mem-gb 80] [--json plan.json] [a.b=c ...]

Per GPU and per model (student, teacher, T5), under the recipe's ZeRO settings:
- parameters, gradients and optimizer state, ZeRO-paper accounting: mixed precision (bf16/fp16) keeps 2-byte weights
  and gradients plus 12 bytes of AdamW state per trainable parameter (fp32 master, two fp32 moments); fp32 keeps
  4 + 4 + 8. T5 stays fp32 in any precision unless text_encoder.precision is 'run'; Qwen2.5-VL takes the run's. Stage 1
  partitions the optimizer state, 2 also the gradients, 3 also the weights; the frozen teacher
  and the text encoders (T5, Qwen-Image's Qwen2.5-VL) have weights only (teacher_stage 0 replicates them, 3
  partitions them: the trainer holds the encoders in frozen ZeRO-3 engines too). zero.offload_params puts the
  student's weights in CPU memory, a LoRA student's frozen base included (and so a shared teacher's).
- the student's EMA (train.ema_decay): fp32 copies of its trainable parameters, 4 bytes each, a 1/N shard under
  ZeRO-3 (none on the GPU with zero.offload_optimizer: it follows the fp32 master into CPU memory), whole on every
  rank at stages 0-2 (ard_scale/distributed/ema.py).
- activations: the student's are the bytes autograd saves for backward, counted with saved-tensor hooks during a
  meta forward at the recipe's micro batch (unique storages, weights excluded). SDPA is counted as the fused
  (flash / memory-efficient) kernels save it — q, k, v, output, fp32 log-sum-exp and, for the masked layers, the
  expanded attention bias — not as the math fallback the meta device would run. The history attention of the
  lowest N blocks is counted with the kernel `student.attention` picks on a GPU: `flex` (the default `auto`) computes
  and saves only the group pairs the mask allows (q, k, v, output, log-sum-exp; no bias), `sdpa` the dense masked
  attention with its bias. With activation checkpointing the
  estimate is what stays outside the blocks + every block's input + the largest block's saved tensors (its
  recomputation in backward). The teacher and T5 run without grad: their working set is bounded by the bytes all
  ops of their largest block produce (CFG doubles the teacher's batch).
- peak: weights, gradients and optimizer state persist; the phases of a step do not overlap, so the peak adds the
  largest of: T5 encode, teacher trajectory (with gather-once: the whole teacher gathered) and student
  forward/backward. DeepSpeed's buckets, the allocator's fragmentation and the CUDA context are not counted.
- FLOPs per optimizer step per GPU, counted with torch's FLOP counter on meta: the teacher trajectory is
  S·K solver steps × evaluations per step × 2 with CFG (guidance != 1) teacher forwards (divided by R for replay,
  0 for offline trajectories), the student forward + backward ≈ 3 forwards (4 with activation checkpointing); the
  text encoders run with the teacher (1/R with replay), except in the GAN stage, where a replayed step encodes its
  own captions for the real images.

Recipes name local model folders; where a folder is missing here (a planning machine), the family's named size for
the recipe's resolution is used and the plan says so.

The package: `meta` builds the models on meta, `passes` counts their bytes and FLOPs, `budget` turns the counts into
bytes per GPU and FLOPs per step, `report` prints the table (and is the command line).
"""

from __future__ import annotations

import dataclasses

import torch

from ard_scale.config import ConfigError, RootConfig
from ard_scale.config.teacher_fit import size_problems, teacher_problems
from ard_scale.errors import UserError
from ard_scale.models.families import get_family
from ard_scale.models.flex import resolve_attention
from ard_scale.models.student import ARDStudent
from ard_scale.plan import budget
from ard_scale.plan.budget import DTYPES, Measured, t5_precision
from ard_scale.plan.meta import (
    T5_XXL,
    build_schedule,
    example_inputs,
    latent_side,
    meta_qwen_encoder,
    meta_teacher,
    meta_text_encoder,
)
from ard_scale.plan.passes import inference_pass, qwen_encode_cost, student_pass

__all__ = ["T5_XXL", "Measured", "example_inputs", "format_plan", "main", "measure", "meta_teacher", "plan"]


def measure(cfg: RootConfig) -> tuple[Measured, str]:
    """The recipe's models on meta, one training forward of the student and one guided teacher evaluation at the
    micro batch, and the text encoders' passes; and the history-attention kernel the student was planned with."""
    dtype, B, S = DTYPES[cfg.train.precision], cfg.data.batch_size, cfg.student.num_steps
    unknown = size_problems(cfg, get_family(cfg.teacher.family))  # not planned as another size
    if unknown:
        raise ConfigError("recipe", unknown)
    teacher, teacher_source = meta_teacher(cfg)
    side = latent_side(cfg)
    down = cfg.data.resolution // side
    refused = teacher_problems(cfg, teacher.spec, teacher.depth, teacher.model, side, down)  # not planned
    if refused:
        raise ConfigError("recipe", refused)
    # a guidance-distilled teacher (FLUX.1-dev) embeds the scale: one forward per solver evaluation, no CFG pass
    guided = cfg.diffusion.guidance_scale != 1 and teacher.spec.guidance == "cfg"
    t5, t5_source = meta_text_encoder(cfg)
    qwen, qwen_source = meta_qwen_encoder(cfg)
    history = resolve_attention(cfg.student.attention, "cuda")  # the kernel training on a GPU runs
    with torch.device("meta"):
        student_cfg = dataclasses.replace(cfg.student, attention=history)  # 'flex' on meta too
        student = ARDStudent(teacher, student_cfg, build_schedule(cfg, teacher.patch_size))
    teacher.to(dtype)
    student.to(dtype)
    if t5 is not None:  # fp32 whatever train.precision unless text_encoder.precision is 'run' (as the trainer loads it)
        t5.to(DTYPES[t5_precision(cfg)])

    x, cond, side = example_inputs(teacher, cfg, B, dtype)
    states = x[:, None].expand(B, S, *x.shape[1:]).contiguous()
    student_saved, student_flops = student_pass(student, states, cond)
    teacher_batch = 2 * B if guided else B
    xt, cond_t, _ = example_inputs(teacher, cfg, teacher_batch, dtype)
    t_model = torch.zeros(teacher_batch, device="meta")
    teacher_ws, teacher_flops = inference_pass(teacher.model.transformer_blocks, lambda: teacher(xt, t_model, cond_t))
    m = Measured(
        teacher=teacher,
        student=student,
        t5=t5,
        qwen=qwen,
        sources={"teacher": teacher_source, "t5": t5_source, "qwen": qwen_source},
        guided=guided,
        side=side,
        group_text_tokens=cond.text.shape[1] if teacher.spec.joint_attention and cond.text is not None else 0,
        batch=B,
        teacher_batch=teacher_batch,
        student_saved=student_saved,
        student_flops=student_flops,
        teacher_working_set=teacher_ws,
        teacher_flops=teacher_flops,
    )
    if t5 is not None:
        ids = torch.zeros(B + 1, cfg.text_encoder.max_length, dtype=torch.long, device="meta")  # + the empty caption
        m.t5_working_set, m.t5_flops = inference_pass(t5.encoder.block, lambda: t5(input_ids=ids))
    if qwen is not None:  # + the null caption; the template's 34 head tokens run through the encoder too
        from ard_scale.models.text_encoder import QWEN_TEMPLATE_TOKENS

        tokens = cfg.qwen_encoder.max_length + QWEN_TEMPLATE_TOKENS
        m.qwen_working_set, m.qwen_flops = qwen_encode_cost(qwen, B + 1, tokens, dtype)
    return m, history


def plan(cfg: RootConfig, gpus: int, gpu_mem_gb: float = 80.0) -> dict:
    """Memory per GPU (bytes) and FLOPs per optimizer step per GPU of `cfg` on `gpus` GPUs (see module docstring)."""
    if gpus < 1:
        raise UserError(f"gpus must be >= 1, got {gpus}")
    m, history = measure(cfg)
    B, side, patch = cfg.data.batch_size, m.side, m.teacher.patch_size
    notes = [f"teacher: {m.sources['teacher']}"] + ([f"t5: {m.sources['t5']}"] if m.t5 is not None else [])
    if m.qwen is not None:
        notes.append(f"qwen2.5-vl: {m.sources['qwen']} (its encode FLOPs and working set are derived, not counted)")
    tb = cfg.train.global_batch_size
    global_batch = B * gpus * cfg.train.grad_accum
    if tb is not None and tb != global_batch:
        notes.append(
            f"train.global_batch_size={tb} but data.batch_size × gpus × train.grad_accum = {global_batch}; the trainer"
            " refuses this: override data.batch_size / train.grad_accum for this GPU count"
        )
    return {
        "notes": notes,
        "recipe": {
            "gpus": gpus,
            "gpu_mem_gb": gpu_mem_gb,
            "micro_batch": B,
            "grad_accum": cfg.train.grad_accum,
            "precision": cfg.train.precision,
            "latent": [m.teacher.in_channels, side, side],
            # a joint-attention group is its image tokens and its own copy of the caption's
            "tokens_per_sample": cfg.student.num_steps * ((side // patch) ** 2 + m.group_text_tokens),
            "activation_checkpointing": cfg.train.activation_checkpointing,
            "history_attention": history,
            "gather_teacher_once": cfg.zero.gather_teacher_once,
            "trajectory_source": cfg.train.trajectory_source,
        },
        **budget.memory(cfg, m, gpus, gpu_mem_gb),
        "flops": budget.flops(cfg, m),
    }


from ard_scale.plan.report import format_plan, main  # noqa: E402  (report reads plan's docstring)
