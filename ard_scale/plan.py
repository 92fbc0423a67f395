"""Memory and FLOPs plan of a recipe on N GPUs, from meta-device models (no weights allocated).

    python -m ard_scale.plan recipes/t2i_1024.yaml --gpus 64 [--gpu-mem-gb 80] [--json plan.json] [a.b=c ...]

Per GPU and per model (student, teacher, T5), under the recipe's ZeRO settings:
- parameters, gradients and optimizer state, ZeRO-paper accounting: mixed precision (bf16/fp16) keeps 2-byte weights
  and gradients plus 12 bytes of AdamW state per trainable parameter (fp32 master, two fp32 moments); fp32 keeps
  4 + 4 + 8. Stage 1 partitions the optimizer state, 2 also the gradients, 3 also the weights; the frozen teacher
  and the text encoders (T5, Qwen-Image's Qwen2.5-VL) have weights only (teacher_stage 0 replicates them, 3
  partitions them: the trainer holds the encoders in frozen ZeRO-3 engines too).
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
  0 for offline trajectories), the student forward + backward ≈ 3 forwards (4 with activation checkpointing).

Recipes name local model folders; where a folder is missing here (a planning machine), the family's named size for
the recipe's resolution is used and the plan says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn

from ard_scale.config import RootConfig, load_config
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import schedule_for_recipe
from ard_scale.diffusion.solvers import NUM_EVALS_PER_STEP
from ard_scale.models.discriminator import Discriminator
from ard_scale.models.families import get_family
from ard_scale.models.flex import resolve_attention
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher, build_teacher
from ard_scale.models.vae import vae_downsample
from ard_scale.plan_passes import inference_pass, student_pass

GB = 1e9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# PixArt-Σ's text encoder: the T5-v1.1-XXL encoder (google/t5-v1_1-xxl).
T5_XXL = dict(
    d_model=4096,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    d_kv=64,
    vocab_size=32128,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
)
T5_DEBUG = dict(d_model=24, d_ff=48, num_layers=2, num_heads=2, d_kv=12, vocab_size=384, feed_forward_proj="gated-gelu")
# Qwen-Image's text encoder: Qwen2.5-VL-7B-Instruct (Qwen2_5_VLConfig text_config / vision_config).
QWEN25_VL_7B = dict(
    text_config=dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        tie_word_embeddings=False,
    ),
    vision_config=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        fullatt_block_indexes=[7, 15, 23, 31],
    ),  # fmt: skip
)


# -- meta-device models ------------------------------------------------------------------------------------------
def _config_file(path: str | None, sub: str) -> Path | None:
    if path is None:
        return None
    for folder in (Path(path), Path(path) / sub):
        if (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def meta_teacher(cfg: RootConfig) -> tuple[Teacher, str]:
    """The recipe's teacher on the meta device, and where its architecture came from."""
    t = cfg.teacher
    if t.size is not None:
        return build_teacher(t.family, t.size, device="meta"), f"named size {t.size!r}"
    config_file = _config_file(t.path, "transformer")
    if config_file is not None:
        model_class = get_family(t.family).model_class
        config = model_class.load_config(config_file.parent)
        with torch.device("meta"):
            model = model_class.from_config(config)
        return Teacher(model).eval().requires_grad_(False), f"{config_file}"
    spec = get_family(t.family)
    size = spec.default_sizes.get(cfg.data.resolution)
    if size is None:
        raise ValueError(
            f"teacher.path {t.path!r} has no config.json here and there is no default {t.family} size for "
            f"resolution {cfg.data.resolution}; give teacher.size=<one of {', '.join(spec.sizes)}>"
        )
    teacher = build_teacher(t.family, size, device="meta", **spec.size_overrides(t.num_classes))
    return teacher, f"named size {size!r} (teacher.path {t.path} not found here)"


def meta_text_encoder(cfg: RootConfig) -> tuple[nn.Module | None, str]:
    """The T5 encoder on meta when the recipe runs one (None for class-conditional or precomputed embeddings)."""
    te = cfg.text_encoder
    if "t5" not in get_family(cfg.teacher.family).text_encoders or te.use_precomputed:
        return None, "none"
    from transformers import T5Config, T5EncoderModel

    config_file = _config_file(te.path, "text_encoder")
    if config_file is not None:
        config, source = T5Config.from_json_file(config_file), str(config_file)
    elif te.size == "debug":
        config, source = T5Config(**T5_DEBUG), "named size 'debug'"
    else:
        config, source = T5Config(**T5_XXL), f"T5-v1.1-XXL encoder (text_encoder.path {te.path} not found here)"
    with torch.device("meta"):
        model = T5EncoderModel(config)
    return model.eval().requires_grad_(False), source


def meta_qwen_encoder(cfg: RootConfig) -> tuple[nn.Module | None, str]:
    """Qwen2.5-VL on meta when the family reads it (Qwen-Image), from qwen_encoder.path's config where it is here."""
    if "qwen" not in get_family(cfg.teacher.family).text_encoders:
        return None, "none"
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ard_scale.models.text_encoder import QWEN_SIZES

    qe = cfg.qwen_encoder
    config_file = _config_file(qe.path, "text_encoder")
    if config_file is not None:
        config, source = Qwen2_5_VLConfig.from_json_file(config_file), str(config_file)
    elif qe.size in QWEN_SIZES:
        config, source = Qwen2_5_VLConfig(**QWEN_SIZES[qe.size]), f"named size {qe.size!r}"
    else:
        config = Qwen2_5_VLConfig(**QWEN25_VL_7B)
        source = f"Qwen2.5-VL-7B-Instruct (qwen_encoder.path {qe.path} not found here)"
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model.eval().requires_grad_(False), source


def qwen_encode_cost(model: nn.Module, batch: int, tokens: int, dtype) -> tuple[int, int]:
    """(working set bytes, FLOPs) of one encoder pass over `batch` captions of `tokens` tokens, derived rather than
    counted (Qwen2.5-VL's rotary embedding does not run on meta): 2 FLOPs per decoder weight per token (no LM head,
    `encode_qwen` stops at the hidden states) + causal attention, and a decoder layer's largest outputs (q, k, v, o,
    the gated MLP's three intermediates) as the working set."""
    c = model.config.text_config
    layers = model.model.language_model.layers
    per_layer = sum(p.numel() for p in layers[0].parameters())
    attention = 2 * 2 * tokens * tokens * c.hidden_size // 2  # QKᵀ and PV over the causal half
    flops = batch * c.num_hidden_layers * (2 * per_layer * tokens + attention)
    working = batch * tokens * (4 * c.hidden_size + 3 * c.intermediate_size) * dtype.itemsize
    return working, flops


def latent_side(cfg: RootConfig) -> int:
    """The states' side at data.resolution: read from the VAE's config where it is on this machine, else the 8×
    downsampling of the SD/FLUX VAEs (the trainer, `ard_scale.trainer.build.latent_side`, always reads it)."""
    return cfg.data.resolution // vae_downsample(size=cfg.vae.size, path=cfg.vae.path, missing=8)


def build_schedule(cfg: RootConfig, patch_size: int = 2):
    return schedule_for_recipe(cfg.diffusion, latent_side(cfg), patch_size)


def example_inputs(teacher: Teacher, cfg: RootConfig, batch: int, dtype) -> tuple[torch.Tensor, Condition, int]:
    """(latents (B, C, h, w), condition, latent side) on meta at the recipe's resolution."""
    side = latent_side(cfg)
    x = torch.empty(batch, teacher.in_channels, side, side, device="meta", dtype=dtype)
    return x, teacher.example_condition(batch, "meta", cfg.text_encoder.max_length, dtype), side


# -- the plan --------------------------------------------------------------------------------------------------------
def _num_params(module: nn.Module) -> int:
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
    }


def frozen_memory(num_params: int, stage: int, gpus: int, precision: str) -> dict:
    return {"params": num_params * DTYPES[precision].itemsize / (gpus if stage == 3 else 1), "grads": 0, "optimizer": 0}


def plan(cfg: RootConfig, gpus: int, gpu_mem_gb: float = 80.0) -> dict:
    """Memory per GPU (bytes) and FLOPs per optimizer step per GPU of `cfg` on `gpus` GPUs (see module docstring)."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    dtype, precision, z = DTYPES[cfg.train.precision], cfg.train.precision, cfg.zero
    B, S, K = cfg.data.batch_size, cfg.student.num_steps, cfg.diffusion.substeps
    teacher, teacher_source = meta_teacher(cfg)
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
    if t5 is not None:
        t5.to(dtype)

    # Activations.
    x, cond, side = example_inputs(teacher, cfg, B, dtype)
    states = x[:, None].expand(B, S, *x.shape[1:]).contiguous()
    student_act, student_flops = student_pass(student, states, cond)
    student_act_used = student_act["checkpointing" if cfg.train.activation_checkpointing else "no_checkpointing"]
    batch_t = 2 * B if guided else B
    xt, cond_t, _ = example_inputs(teacher, cfg, batch_t, dtype)
    t_model = torch.zeros(batch_t, device="meta")
    teacher_ws, teacher_flops = inference_pass(teacher.model.transformer_blocks, lambda: teacher(xt, t_model, cond_t))
    t5_ws = t5_flops = 0
    if t5 is not None:
        ids = torch.zeros(B + 1, cfg.text_encoder.max_length, dtype=torch.long, device="meta")  # + the empty caption
        t5_ws, t5_flops = inference_pass(t5.encoder.block, lambda: t5(input_ids=ids))
    qwen_ws = qwen_flops = 0
    if qwen is not None:  # + the null caption; the template's 34 head tokens run through the encoder too
        from ard_scale.models.text_encoder import QWEN_TEMPLATE_TOKENS

        qwen_ws, qwen_flops = qwen_encode_cost(qwen, B + 1, cfg.qwen_encoder.max_length + QWEN_TEMPLATE_TOKENS, dtype)

    # Weights, gradients, optimizer state. A LoRA student trains its adapters and heads only; its frozen base is
    # held at the student's stage — and with share_teacher it *is* the teacher's weights, held once.
    n_student, n_teacher = _num_params(student), _num_params(teacher)
    n_trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    shared = student.shares_teacher
    teacher_stage = z.stage if shared else z.teacher_stage
    n_t5 = _num_params(t5) if t5 is not None else 0
    trained = trained_memory(n_trainable, z.stage, gpus, precision, z.offload_optimizer, z.offload_params)
    frozen_base = frozen_memory(n_student - n_trainable, z.stage, gpus, precision)
    models = {
        "student": {
            "num_params": n_student,
            "trainable_params": n_trainable,
            "zero_stage": z.stage,
            **{k: trained[k] + frozen_base[k] for k in trained},
            "activations": student_act_used,
            "activations_no_checkpointing": student_act["no_checkpointing"],
            "activations_checkpointing": student_act["checkpointing"],
        },
        "teacher": {
            "num_params": n_teacher,
            "zero_stage": teacher_stage,
            **(
                {"params": 0, "grads": 0, "optimizer": 0}
                if shared
                else frozen_memory(n_teacher, teacher_stage, gpus, precision)
            ),
            "shared_with_student": shared,
            "activations": teacher_ws,
            "source": teacher_source,
        },
    }
    if t5 is not None:
        models["t5"] = {
            "num_params": n_t5,
            "zero_stage": z.teacher_stage,
            **frozen_memory(n_t5, z.teacher_stage, gpus, precision),
            "activations": t5_ws,
            "source": t5_source,
        }
    if qwen is not None:  # in the run's precision, partitioned at teacher_stage 3 like T5
        n_qwen = _num_params(qwen)
        models["qwen2.5-vl"] = {
            "num_params": n_qwen,
            "zero_stage": z.teacher_stage,
            **frozen_memory(n_qwen, z.teacher_stage, gpus, precision),
            "activations": qwen_ws,
            "source": qwen_source,
        }
    gan = cfg.gan
    if gan.enabled:  # replicated fp32 heads with their own AdamW: weights + grads + 2 moments, on every GPU
        heads = teacher.depth if gan.layers is None else len(gan.layers)
        with torch.device("meta"):
            disc = Discriminator.for_teacher(teacher, num_heads=heads, hidden=gan.head_hidden)
        n_disc = _num_params(disc)
        models["disc heads"] = {
            "num_params": n_disc,
            "zero_stage": 0,
            "params": 4 * n_disc,
            "grads": 4 * n_disc,
            "optimizer": 8 * n_disc,
            "activations": 0,
        }
    persistent = sum(m["params"] + m["grads"] + m["optimizer"] for m in models.values())
    weight_b = dtype.itemsize
    full_teacher = n_teacher * weight_b
    # Under teacher ZeRO-3 without gather-once, a solver step gathers a block at a time (plus one prefetched).
    largest_teacher_block = max(_num_params(b) for b in teacher.model.transformer_blocks) * weight_b
    gathered_per_step = 2 * largest_teacher_block if teacher_stage == 3 else 0
    teacher_partition = full_teacher / gpus if shared else models["teacher"]["params"]
    gathered_once = full_teacher - teacher_partition if teacher_stage == 3 else 0
    t5_gathered = (
        2 * max(_num_params(b) for b in t5.encoder.block) * weight_b if t5 is not None and z.teacher_stage == 3 else 0
    )
    qwen_layers = [m for m in qwen.modules() if type(m).__name__.endswith("DecoderLayer")] if qwen is not None else []
    qwen_gathered = 2 * max(map(_num_params, qwen_layers)) * weight_b if qwen_layers and z.teacher_stage == 3 else 0
    # The GAN generator phase keeps the graph of one feature pass (one state: about 1/S of the student's S-state
    # forward) beside the student's own until its backward.
    gan_features = student_act["no_checkpointing"] // S if gan.enabled else 0
    phases = {
        "student_fwd_bwd": student_act_used + gan_features,
        "teacher_trajectory": teacher_ws + (gathered_once if z.gather_teacher_once else gathered_per_step),
        "t5_encode": t5_ws + t5_gathered,
        "qwen_encode": qwen_ws + qwen_gathered,
    }
    peak = persistent + max(phases.values())
    peak_gather_once = persistent + max(
        phases["student_fwd_bwd"], phases["t5_encode"], phases["qwen_encode"], teacher_ws + gathered_once
    )

    # FLOPs per sample, counted in the passes above (every op's count is linear in the batch).
    teacher_fwd, student_fwd = teacher_flops // batch_t, student_flops // B
    t5_fwd = t5_flops // (B + 1)
    nfe = S * K * NUM_EVALS_PER_STEP[cfg.diffusion.solver] * (2 if guided else 1)
    source = cfg.train.trajectory_source
    trajectory_share = {"online": 1.0, "replay": 1.0 / cfg.train.replay_times, "offline": 0.0}[source]
    samples = B * cfg.train.grad_accum  # per GPU per optimizer step
    student_passes = 4 if cfg.train.activation_checkpointing else 3
    flops = {
        "teacher_forward_per_sample": teacher_fwd,
        "teacher_forwards_per_sample": nfe,
        "teacher_trajectory": nfe * teacher_fwd * trajectory_share * samples,
        "student_forward_per_sample": student_fwd,
        "student_fwd_bwd": student_passes * student_fwd * samples,
        "t5_encode": t5_fwd * samples * trajectory_share,
        "qwen_encode": qwen_flops // (B + 1) * samples * trajectory_share,
    }
    if gan.enabled:
        # Feature passes per sample: generator forward + backward to the input (~3 forwards), discriminator phase on
        # fakes and reals (+ perturbed reals with R1), no gradients. One pass = one state through the backbone.
        feature_fwd = teacher_fwd if gan.backbone == "teacher" else student_fwd // S
        flops["gan_feature_passes"] = (3 + 2 + (1 if gan.r1_weight else 0)) * feature_fwd * samples
    else:
        flops["gan_feature_passes"] = 0
    flops["total"] = (
        flops["teacher_trajectory"]
        + flops["student_fwd_bwd"]
        + flops["t5_encode"]
        + flops["qwen_encode"]
        + flops["gan_feature_passes"]
    )
    flops["teacher_over_student"] = flops["teacher_trajectory"] / flops["student_fwd_bwd"]

    notes = [f"teacher: {teacher_source}"] + ([f"t5: {t5_source}"] if t5 is not None else [])
    notes += [f"qwen2.5-vl: {qwen_source} (its encode FLOPs and working set are derived, not counted)"] if qwen else []
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
            "precision": precision,
            "latent": [teacher.in_channels, side, side],
            "tokens_per_sample": S * (side // teacher.patch_size) ** 2,
            "activation_checkpointing": cfg.train.activation_checkpointing,
            "history_attention": history,
            "gather_teacher_once": z.gather_teacher_once,
            "trajectory_source": source,
        },
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
        "flops": flops,
    }


# -- the table --------------------------------------------------------------------------------------------------------
def format_plan(p: dict) -> str:
    r = p["recipe"]
    lines = [
        *(f"note: {n}" for n in p["notes"]),
        f"{r['gpus']} GPUs × {r['gpu_mem_gb']:g} GB, {r['precision']}, micro batch {r['micro_batch']} × grad accum "
        f"{r['grad_accum']}, latent {tuple(r['latent'])}, {r['tokens_per_sample']} student tokens per sample, "
        f"activation checkpointing {'on' if r['activation_checkpointing'] else 'off'}, history attention "
        f"{r['history_attention']}",
        "",
        f"{'per GPU, GB':<10}{'params (M)':>12}{'ZeRO':>6}{'weights':>10}{'grads':>9}{'optim':>9}{'activ.':>9}",
    ]
    for name, m in p["models"].items():
        lines.append(
            f"{name:<10}{m['num_params'] / 1e6:>12.1f}{m['zero_stage']:>6}{m['params'] / GB:>10.3f}"
            f"{m['grads'] / GB:>9.3f}{m['optimizer'] / GB:>9.3f}{m['activations'] / GB:>9.2f}"
        )
    s = p["models"]["student"]
    if s["trainable_params"] != s["num_params"]:
        lines.append(
            f"LoRA student: {s['trainable_params'] / 1e6:.1f} M trainable of {s['num_params'] / 1e6:.1f} M"
            + (
                "; the teacher's weights are the student's frozen base (held once)"
                if p["models"]["teacher"]["shared_with_student"]
                else ""
            )
        )
    lines += [
        f"student activations: {s['activations_no_checkpointing'] / GB:.2f} GB without checkpointing, "
        f"{s['activations_checkpointing'] / GB:.2f} GB with",
        "phases (transient, GB): " + ", ".join(f"{k} {v / GB:.2f}" for k, v in p["phases"].items()),
        f"peak per GPU: {p['peak_bytes'] / GB:.2f} GB = persistent {p['persistent_bytes'] / GB:.2f} + largest phase "
        f"-> {'fits' if p['fits'] else 'DOES NOT FIT'} in {r['gpu_mem_gb']:g} GB",
        f"gather-once of the teacher ({p['gather_once']['full_teacher_bytes'] / GB:.2f} GB on every rank): peak "
        f"{p['gather_once']['peak_bytes'] / GB:.2f} GB -> {'fits' if p['gather_once']['fits'] else 'DOES NOT FIT'}"
        f"{' (enabled)' if r['gather_teacher_once'] else ' (not enabled)'}",
    ]
    f = p["flops"]
    lines += [
        "",
        f"FLOPs per optimizer step per GPU ({r['trajectory_source']} trajectories):",
        f"  teacher trajectory {f['teacher_trajectory'] / 1e12:10.2f} TFLOP  ({f['teacher_forwards_per_sample']} "
        f"forwards × {f['teacher_forward_per_sample'] / 1e9:.1f} GFLOP per sample)",
        f"  student fwd+bwd    {f['student_fwd_bwd'] / 1e12:10.2f} TFLOP  "
        f"(forward {f['student_forward_per_sample'] / 1e9:.1f} GFLOP per sample)",
    ]
    if f["t5_encode"]:
        lines.append(f"  T5 encode          {f['t5_encode'] / 1e12:10.2f} TFLOP")
    if f["qwen_encode"]:
        lines.append(f"  Qwen2.5-VL encode  {f['qwen_encode'] / 1e12:10.2f} TFLOP")
    if f["gan_feature_passes"]:
        lines.append(f"  GAN feature passes {f['gan_feature_passes'] / 1e12:10.2f} TFLOP")
    lines.append(
        f"  total              {f['total'] / 1e12:10.2f} TFLOP; teacher / student = {f['teacher_over_student']:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ard_scale.plan", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.batch_size=8")
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--gpu-mem-gb", type=float, default=80.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the plan as JSON here")
    args = parser.parse_intermixed_args(argv)  # overrides may come after the options
    result = plan(load_config(args.recipe, args.overrides), args.gpus, args.gpu_mem_gb)
    print(format_plan(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
