"""From the meta-device measurements (`Measured`) to the plan's numbers: bytes per GPU per model under the recipe's
ZeRO settings, the transient phases and the peak (`memory`), and FLOPs per optimizer step per GPU (`flops`). The
accounting is the one the package docstring (ard_scale/plan/__init__.py) describes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ard_scale.config import RootConfig
from ard_scale.diffusion.solvers import num_evals
from ard_scale.models.discriminator import Discriminator
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher

GB = 1e9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Measured:
    """The recipe's models on meta and what their passes counted, at micro batch `batch` (the teacher's pass at
    `teacher_batch`: twice that with CFG; the text encoders' at batch + 1, the null caption)."""

    teacher: Teacher
    student: ARDStudent
    t5: nn.Module | None
    qwen: nn.Module | None
    sources: dict[str, str]  # where each architecture came from, by model
    guided: bool  # a CFG pass per solver evaluation
    side: int  # the latent side
    group_text_tokens: int  # caption tokens each of the S groups carries into self-attention (MMDiT families), else 0
    batch: int
    teacher_batch: int
    student_saved: dict[str, int]  # bytes saved for backward: 'no_checkpointing' and 'checkpointing'
    student_flops: int
    teacher_working_set: int
    teacher_flops: int
    t5_working_set: int = 0
    t5_flops: int = 0
    qwen_working_set: int = 0
    qwen_flops: int = 0


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def trained_memory(
    num_params: int, stage: int, gpus: int, precision: str, offload_optimizer=False, offload_params=False
):
    """Per-GPU bytes of a trained model's weights, gradients and AdamW state under ZeRO `stage`."""
    weight_b = DTYPES[precision].itemsize
    optim_b = 12 if precision != "fp32" else 8  # fp32 master (when weights are 16-bit) + exp_avg + exp_avg_sq
    return {
        "params": 0 if offload_params else num_params * weight_b / (gpus if stage >= 3 else 1),
        "grads": num_params * weight_b / (gpus if stage >= 2 else 1),
        "optimizer": 0 if offload_optimizer else num_params * optim_b / (gpus if stage >= 1 else 1),
        "ema": 0,
    }


def frozen_memory(num_params: int, stage: int, gpus: int, precision: str) -> dict:
    return {
        "params": num_params * DTYPES[precision].itemsize / (gpus if stage == 3 else 1),
        "grads": 0,
        "optimizer": 0,
        "ema": 0,
    }


def ema_memory(num_trainable: int, cfg: RootConfig, gpus: int) -> float:
    """Per-GPU bytes of the student's EMA (`ZeroEMA`, train.ema_decay): fp32 copies of the trainable parameters, a
    1/gpus shard each under ZeRO-3 (beside the optimizer's fp32 master partition: in CPU memory with
    zero.offload_optimizer), the whole parameters on every rank at stages 0-2."""
    z = cfg.zero
    if not cfg.train.ema_decay or (z.stage == 3 and z.offload_optimizer):
        return 0
    return 4 * num_trainable / (gpus if z.stage == 3 else 1)


def t5_precision(cfg: RootConfig) -> str:
    """T5's precision in the trainer: fp32 unless text_encoder.precision is 'run' (conditioning.load_encoder)."""
    return cfg.text_encoder.dtype_name(cfg.train.precision)


def _frozen_encoder(n: int, cfg: RootConfig, gpus: int, working_set: int, source: str, precision: str) -> dict:
    """A text encoder in `precision` (the trainer's: T5 `t5_precision`, Qwen2.5-VL the run's), partitioned at
    teacher_stage 3 like the teacher."""
    stage = cfg.zero.teacher_stage
    return {
        "num_params": n,
        "zero_stage": stage,
        **frozen_memory(n, stage, gpus, precision),
        "activations": working_set,
        "source": source,
    }


def _models(cfg: RootConfig, m: Measured, gpus: int) -> dict[str, dict]:
    """Per-GPU bytes of each model's weights, gradients, optimizer state, EMA and activations. A LoRA student trains
    its adapters and heads only; its frozen base is held at the student's stage (in CPU memory with
    zero.offload_params) — and with share_teacher it *is* the teacher's weights, held once."""
    z, precision, student = cfg.zero, cfg.train.precision, m.student
    n_student, n_teacher = num_params(student), num_params(m.teacher)
    n_trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    shared = student.shares_teacher
    teacher_stage = z.stage if shared else z.teacher_stage
    trained = trained_memory(n_trainable, z.stage, gpus, precision, z.offload_optimizer, z.offload_params)
    # zero.offload_params moves every partition of the student engine into CPU memory, the frozen base's too
    frozen_base = frozen_memory(0 if z.offload_params else n_student - n_trainable, z.stage, gpus, precision)
    checkpointing = "checkpointing" if cfg.train.activation_checkpointing else "no_checkpointing"
    models = {
        "student": {
            "num_params": n_student,
            "trainable_params": n_trainable,
            "zero_stage": z.stage,
            **{k: trained[k] + frozen_base[k] for k in trained},
            "ema": ema_memory(n_trainable, cfg, gpus),
            "activations": m.student_saved[checkpointing],
            "activations_no_checkpointing": m.student_saved["no_checkpointing"],
            "activations_checkpointing": m.student_saved["checkpointing"],
        },
        "teacher": {
            "num_params": n_teacher,
            "zero_stage": teacher_stage,
            **(
                {"params": 0, "grads": 0, "optimizer": 0, "ema": 0}
                if shared
                else frozen_memory(n_teacher, teacher_stage, gpus, precision)
            ),
            "shared_with_student": shared,
            "activations": m.teacher_working_set,
            "source": m.sources["teacher"],
        },
    }
    if m.t5 is not None:
        models["t5"] = _frozen_encoder(
            num_params(m.t5), cfg, gpus, m.t5_working_set, m.sources["t5"], t5_precision(cfg)
        )
    if m.qwen is not None:
        models["qwen2.5-vl"] = _frozen_encoder(
            num_params(m.qwen), cfg, gpus, m.qwen_working_set, m.sources["qwen"], cfg.train.precision
        )
    if cfg.gan.enabled:  # replicated fp32 heads with their own AdamW: weights + grads + 2 moments, on every GPU
        heads = m.teacher.depth if cfg.gan.layers is None else len(cfg.gan.layers)
        with torch.device("meta"):
            disc = Discriminator.for_teacher(m.teacher, num_heads=heads, hidden=cfg.gan.head_hidden)
        n_disc = num_params(disc)
        models["disc heads"] = {
            "num_params": n_disc,
            "zero_stage": 0,
            "params": 4 * n_disc,
            "grads": 4 * n_disc,
            "optimizer": 8 * n_disc,
            "ema": 0,
            "activations": 0,
        }
    return models


def _largest_gathered(blocks, stage: int, weight_b: int) -> int:
    """Bytes ZeRO-3 holds gathered while a frozen model runs block by block: the largest block plus one prefetched."""
    return 2 * max(map(num_params, blocks)) * weight_b if blocks and stage == 3 else 0


def memory(cfg: RootConfig, m: Measured, gpus: int, gpu_mem_gb: float) -> dict:
    """The models' bytes per GPU, the transient phases, and the peak with and without gather-once of the teacher."""
    z, weight_b = cfg.zero, DTYPES[cfg.train.precision].itemsize
    models = _models(cfg, m, gpus)
    persistent = sum(v["params"] + v["grads"] + v["optimizer"] + v["ema"] for v in models.values())
    teacher = models["teacher"]
    full_teacher = teacher["num_params"] * weight_b
    teacher_stage = teacher["zero_stage"]
    # Under teacher ZeRO-3 without gather-once, a solver step gathers a block at a time (plus one prefetched).
    gathered_per_step = _largest_gathered(m.teacher.model.transformer_blocks, teacher_stage, weight_b)
    teacher_partition = full_teacher / gpus if teacher["shared_with_student"] else teacher["params"]
    gathered_once = full_teacher - teacher_partition if teacher_stage == 3 else 0
    t5_blocks = m.t5.encoder.block if m.t5 is not None else []
    qwen_layers = [x for x in m.qwen.modules() if type(x).__name__.endswith("DecoderLayer")] if m.qwen else []
    # The GAN generator phase keeps the graph of one feature pass (one state: about 1/S of the student's S-state
    # forward) beside the student's own until its backward.
    S = cfg.student.num_steps
    gan_features = m.student_saved["no_checkpointing"] // S if cfg.gan.enabled else 0
    phases = {
        "student_fwd_bwd": models["student"]["activations"] + gan_features,
        "teacher_trajectory": m.teacher_working_set + (gathered_once if z.gather_teacher_once else gathered_per_step),
        "t5_encode": m.t5_working_set
        + _largest_gathered(t5_blocks, z.teacher_stage, DTYPES[t5_precision(cfg)].itemsize),
        "qwen_encode": m.qwen_working_set + _largest_gathered(qwen_layers, z.teacher_stage, weight_b),
    }
    peak = persistent + max(phases.values())
    peak_gather_once = persistent + max(
        phases["student_fwd_bwd"], phases["t5_encode"], phases["qwen_encode"], m.teacher_working_set + gathered_once
    )
    return {
        "models": models,
        "phases": phases,
        "persistent_bytes": persistent,
        "peak_bytes": peak,
        "fits": peak <= gpu_mem_gb * GB,
        "gather_once": {
            "full_teacher_bytes": full_teacher,
            "peak_bytes": peak_gather_once,
            "fits": peak_gather_once <= gpu_mem_gb * GB,
        },
    }


def flops(cfg: RootConfig, m: Measured) -> dict:
    """FLOPs per optimizer step per GPU, from the per-sample counts of the passes (every op's count is linear in
    the batch)."""
    B, S, K = m.batch, cfg.student.num_steps, cfg.diffusion.substeps
    teacher_fwd, student_fwd = m.teacher_flops // m.teacher_batch, m.student_flops // B
    nfe = num_evals(cfg.diffusion.solver, S * K, guided=m.guided)
    trajectory_share = {"online": 1.0, "replay": 1.0 / cfg.train.replay_times, "offline": 0.0}
    share = trajectory_share[cfg.train.trajectory_source]
    # The text encoders run with the teacher, except that a GAN step on a replayed trajectory encodes its own batch's
    # captions for the reals (`ard_scale.trainer.gan.real_condition`): with replay and a GAN, every step encodes.
    text_share = 1.0 if cfg.gan.enabled and cfg.train.trajectory_source == "replay" else share
    samples = B * cfg.train.grad_accum  # per GPU per optimizer step
    student_passes = 4 if cfg.train.activation_checkpointing else 3
    out = {
        "teacher_forward_per_sample": teacher_fwd,
        "teacher_forwards_per_sample": nfe,
        "teacher_trajectory": nfe * teacher_fwd * share * samples,
        "student_forward_per_sample": student_fwd,
        "student_fwd_bwd": student_passes * student_fwd * samples,
        "t5_encode": m.t5_flops // (B + 1) * samples * text_share,
        "qwen_encode": m.qwen_flops // (B + 1) * samples * text_share,
    }
    gan = cfg.gan
    if gan.enabled:
        # Feature passes per sample: generator forward + backward to the input (~3 forwards), discriminator phase on
        # fakes and reals (+ perturbed reals with R1), no gradients. One pass = one state through the backbone.
        feature_fwd = teacher_fwd if gan.backbone == "teacher" else student_fwd // S
        out["gan_feature_passes"] = (3 + 2 + (1 if gan.r1_weight else 0)) * feature_fwd * samples
    else:
        out["gan_feature_passes"] = 0
    parts = ("teacher_trajectory", "student_fwd_bwd", "t5_encode", "qwen_encode", "gan_feature_passes")
    out["total"] = sum(out[k] for k in parts)
    out["teacher_over_student"] = out["teacher_trajectory"] / out["student_fwd_bwd"]
    return out
