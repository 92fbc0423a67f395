"""The planner on meta-device models: the two real recipes plan quickly and their numbers hold together."""

import json

import pytest
import torch
from one_process import run_child

from ard_scale.config import load_config
from ard_scale.models.discriminator import Discriminator
from ard_scale.models.flops import count_flops
from ard_scale.plan import T5_XXL, example_inputs, main, meta_teacher, plan

GPUS = 64


@pytest.fixture(scope="module")
def imagenet():
    return load_config("recipes/imagenet_256.yaml"), plan(load_config("recipes/imagenet_256.yaml"), GPUS)


@pytest.fixture(scope="module")
def t2i():
    return load_config("recipes/t2i_1024.yaml"), plan(load_config("recipes/t2i_1024.yaml"), GPUS)


def test_parameter_counts_are_the_models_real_counts(imagenet, t2i):
    _, p = imagenet
    assert round(p["models"]["teacher"]["num_params"] / 1e6, 1) == 749.8  # DiT-XL/2, diffusers layout
    # The student is the teacher plus S-1 more copies of the final layer (norm_out has no parameters in DiT).
    head = 1152 * 2 * 1152 + 2 * 1152 + 1152 * 32 + 32  # proj_out_1 + proj_out_2
    assert p["models"]["student"]["num_params"] == p["models"]["teacher"]["num_params"] + 3 * head
    _, q = t2i
    assert round(q["models"]["teacher"]["num_params"] / 1e6) == 611  # PixArt-Σ XL/2
    d, f, n = T5_XXL["d_model"], T5_XXL["d_ff"], T5_XXL["num_layers"]
    t5 = T5_XXL["vocab_size"] * d + n * (4 * d * d + 3 * d * f + 2 * d) + d + 32 * T5_XXL["num_heads"]
    assert q["models"]["t5"]["num_params"] == t5  # embeddings, attention, gated FF, RMSNorms, relative bias


def test_named_debug_sizes_are_planned_as_the_trainer_builds_them():
    """A recipe at named sizes plans the very models `build_teacher` and `build_t5` train with."""
    from ard_scale.models.teachers import build_teacher
    from ard_scale.models.text_encoder import build_t5

    p = plan(load_config("recipes/tiny_t2i_cpu.yaml"), 2)
    count = lambda m: sum(x.numel() for x in m.parameters())  # noqa: E731
    assert p["models"]["t5"]["num_params"] == count(build_t5("debug")[0])
    assert p["models"]["teacher"]["num_params"] == count(build_teacher("pixart", "debug"))


@pytest.mark.parametrize("t5_precision, t5_bytes", [("fp32", 4), ("run", 2)])
def test_text_encoder_bytes_are_those_of_the_encoder_the_trainer_loads(t5_precision, t5_bytes):
    """A bf16 run holds T5 in fp32 (the planner once counted it at 2 bytes a weight), or in bf16 with
    text_encoder.precision 'run': what the trainer's conditioner loads, counted byte for byte."""
    from ard_scale.models.teachers import build_teacher
    from ard_scale.trainer.build import build_conditioner

    overrides = ["train.precision=bf16", "zero.teacher_stage=0", f"text_encoder.precision={t5_precision}"]
    cfg = load_config("recipes/tiny_t2i_cpu.yaml", overrides)
    loaded = build_conditioner(cfg, build_teacher("pixart", "debug")).encoders["t5"].model
    held = sum(p.numel() * p.element_size() for p in loaded.parameters())
    assert held == t5_bytes * sum(p.numel() for p in loaded.parameters())
    assert plan(cfg, 2)["models"]["t5"]["params"] == held


def test_zero3_bytes_scale_as_one_over_gpus_and_zero2_replicates_weights(imagenet, t2i):
    _, q = t2i  # student ZeRO-3, teacher and T5 ZeRO-3, bf16 (T5 held in fp32: see the test below)
    for name, weight_b in (("student", 2), ("teacher", 2), ("t5", 4)):
        m = q["models"][name]
        assert m["params"] == pytest.approx(weight_b * m["num_params"] / GPUS)
    s = q["models"]["student"]
    assert s["grads"] == pytest.approx(2 * s["num_params"] / GPUS)
    assert s["optimizer"] == pytest.approx(12 * s["num_params"] / GPUS)  # fp32 master + 2 moments
    _, p = imagenet  # student ZeRO-2, teacher replicated
    s, t = p["models"]["student"], p["models"]["teacher"]
    assert s["params"] == 2 * s["num_params"] and t["params"] == 2 * t["num_params"]
    assert s["grads"] == pytest.approx(2 * s["num_params"] / GPUS)
    small = plan(load_config("recipes/tiny_cpu.yaml"), 2)["models"]["student"]
    large = plan(load_config("recipes/tiny_cpu.yaml"), 8)["models"]["student"]
    for key in ("params", "grads", "optimizer"):
        assert large[key] * 8 == pytest.approx(small[key] * 2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trained_bytes_follow_the_zero_papers_table_at_every_stage(precision):
    """ZeRO (Rajbhandari et al. 2020, fig. 1): stage 1 partitions the optimizer state, 2 the gradients too, 3 the
    weights too. AdamW holds two fp32 moments, plus an fp32 master copy when the weights are 16-bit."""
    from ard_scale.plan.budget import trained_memory

    n, gpus = 1000, 8
    weight, optim = {"fp32": (4, 8), "bf16": (2, 12)}[precision]
    for stage in range(4):
        split = {kind: gpus if stage >= first else 1 for kind, first in (("params", 3), ("grads", 2), ("optim", 1))}
        expected = {"params": n * weight / split["params"], "grads": n * weight / split["grads"],
                    "optimizer": n * optim / split["optim"], "ema": 0}  # fmt: skip
        assert trained_memory(n, stage, gpus, precision) == expected, stage


def test_replay_plans_the_teacher_and_its_text_encoder_once_per_cycle():
    """train.trajectory_source replay solves (and encodes the captions of) one step in train.replay_times; the
    student trains every step. The planner counted the text encoder at 1/R in the GAN stage too, where it runs every
    step."""
    online = plan(load_config("recipes/tiny_t2i_cpu.yaml"), 2)["flops"]
    replay_4 = ["train.trajectory_source=replay", "train.replay_times=4"]
    replay = plan(load_config("recipes/tiny_t2i_cpu.yaml", replay_4), 2)["flops"]
    assert online["t5_encode"] > 0 and online["teacher_trajectory"] > 0
    assert replay["teacher_trajectory"] == pytest.approx(online["teacher_trajectory"] / 4)
    assert replay["t5_encode"] == pytest.approx(online["t5_encode"] / 4)
    assert replay["student_fwd_bwd"] == online["student_fwd_bwd"]
    # in the GAN stage a replayed step encodes its own captions for the real images (`real_condition`): every step
    gan = ["gan.enabled=true", "gan.warmup_steps=1"]
    gan_online = plan(load_config("recipes/tiny_t2i_cpu.yaml", gan), 2)["flops"]
    gan_replay = plan(load_config("recipes/tiny_t2i_cpu.yaml", [*gan, *replay_4]), 2)["flops"]
    assert gan_replay["teacher_trajectory"] == pytest.approx(gan_online["teacher_trajectory"] / 4)
    assert gan_replay["t5_encode"] == gan_online["t5_encode"] == online["t5_encode"]


def test_teacher_trajectory_flops_are_s_k_cfg_teacher_forwards(imagenet, t2i):
    for cfg, p in (imagenet, t2i):
        teacher, _ = meta_teacher(cfg)
        teacher.to(torch.bfloat16)
        x, cond, _ = example_inputs(teacher, cfg, 1, torch.bfloat16)
        with torch.no_grad():
            forward = count_flops(lambda teacher=teacher, x=x, cond=cond: teacher(x, torch.zeros(1), cond))
        S, K, B = cfg.student.num_steps, cfg.diffusion.substeps, cfg.data.batch_size
        assert p["flops"]["teacher_forwards_per_sample"] == S * K * 2  # both recipes guide (CFG doubles)
        assert p["flops"]["teacher_trajectory"] == S * K * 2 * forward * B
        passes = 4 if cfg.train.activation_checkpointing else 3
        assert p["flops"]["student_fwd_bwd"] == passes * p["flops"]["student_forward_per_sample"] * B
    # Heun: two forwards per step but one on its last (an Euler step onto the clean end), per CFG branch
    cfg = load_config("recipes/imagenet_256.yaml", ["diffusion.solver=heun"])
    S, K = cfg.student.num_steps, cfg.diffusion.substeps
    assert plan(cfg, GPUS)["flops"]["teacher_forwards_per_sample"] == (2 * (S * K - 1) + 1) * 2
    _, p = imagenet
    assert p["flops"]["teacher_forward_per_sample"] == pytest.approx(237.3e9, rel=1e-3)  # 2 × DiT-XL/2's 118.6 GMACs


def test_activations_memory_and_gather_once(imagenet, t2i):
    for _, p in (imagenet, t2i):
        s = p["models"]["student"]
        assert 0 < s["activations_checkpointing"] < s["activations_no_checkpointing"]
        assert p["peak_bytes"] == p["persistent_bytes"] + max(p["phases"].values())
    _, q = t2i
    assert q["recipe"]["activation_checkpointing"] and q["recipe"]["tokens_per_sample"] == 4 * 4096
    assert q["gather_once"]["full_teacher_bytes"] == 2 * q["models"]["teacher"]["num_params"]
    assert q["fits"] and q["gather_once"]["fits"]
    assert not plan(load_config("recipes/tiny_cpu.yaml"), 2, gpu_mem_gb=1e-6)["fits"]


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    main(["recipes/tiny_cpu.yaml", "--gpus", "2", "--gpu-mem-gb", "16", "--json", str(out), "data.batch_size=4"])
    text = capsys.readouterr().out
    assert "student" in text and "teacher trajectory" in text and "gather-once" in text
    saved = json.loads(out.read_text())
    assert saved["recipe"]["micro_batch"] == 4 and saved["recipe"]["gpus"] == 2


def test_cli_refuses_a_json_path_it_cannot_write_before_planning(tmp_path, capsys):
    """It planned, printed the table and then failed with a FileNotFoundError traceback."""
    out = tmp_path / "no_such_folder" / "plan.json"
    with pytest.raises(SystemExit) as stopped:
        main(["recipes/tiny_cpu.yaml", "--gpus", "2", "--json", str(out)])
    assert stopped.value.code == (
        f"error: --json {out}: its folder {out.parent} does not exist; create it or write elsewhere"
    )
    assert capsys.readouterr().out == ""


def test_gan_stage_adds_the_replicated_heads_and_the_feature_passes():
    cfg = load_config(
        "recipes/tiny_cpu.yaml", ["gan.enabled=true", "gan.warmup_steps=1", "gan.layers=[1,3]", "gan.r1_weight=0.1"]
    )
    base = plan(load_config("recipes/tiny_cpu.yaml"), 2)
    p = plan(cfg, 2)
    heads = Discriminator(num_heads=2, dim=32, hidden=cfg.gan.head_hidden, cond_dim=cfg.gan.head_hidden, num_classes=10)
    n = sum(t.numel() for t in heads.parameters())
    m = p["models"]["disc heads"]
    assert m["num_params"] == n
    assert (m["params"], m["grads"], m["optimizer"]) == (4 * n, 4 * n, 8 * n)  # fp32, replicated, AdamW
    assert p["persistent_bytes"] == base["persistent_bytes"] + 16 * n
    S = cfg.student.num_steps
    f = p["flops"]
    assert f["gan_feature_passes"] == 6 * (f["student_forward_per_sample"] // S) * cfg.data.batch_size
    assert f["total"] == base["flops"]["total"] + f["gan_feature_passes"]
    assert p["phases"]["student_fwd_bwd"] > base["phases"]["student_fwd_bwd"]


def test_a_shared_lora_student_holds_the_teacher_once_and_trains_only_its_adapters_and_heads():
    """ImageNet DiT-XL/2 at 8 GPUs, ZeRO-3, bf16: the LoRA-shared student's frozen base is the teacher's weights
    (teacher row 0 bytes), and only the trainable parameters carry gradients and AdamW state."""
    zero3 = ["zero.stage=3", "zero.teacher_stage=3"]
    full = plan(load_config("recipes/imagenet_256.yaml", zero3), 8)
    lora = plan(load_config("recipes/imagenet_256.yaml", [*zero3, "student.lora.rank=16"]), 8)
    s, t = lora["models"]["student"], lora["models"]["teacher"]
    assert t["shared_with_student"] and t["params"] == 0 and not full["models"]["teacher"]["shared_with_student"]
    n, n_train = s["num_params"], s["trainable_params"]
    d, blocks = 1152, 28  # rank 16 on q, k, v, out (d→d) and the MLP (d→4d, 4d→d) of every block
    adapters = blocks * 16 * (4 * 2 * d + (d + 4 * d) + (4 * d + d))
    head = 1152 * 2 * 1152 + 2 * 1152 + 1152 * 32 + 32
    assert n_train == adapters + 4 * head
    assert n == full["models"]["teacher"]["num_params"] + adapters + 4 * head  # base + adapters + S heads (own)
    assert s["params"] == n * 2 / 8  # bf16 weights, all partitioned (ZeRO-3)
    assert s["grads"] == n_train * 2 / 8 and s["optimizer"] == n_train * 12 / 8
    assert lora["persistent_bytes"] < 0.3 * full["persistent_bytes"]


def test_offloaded_parameters_take_a_lora_students_frozen_base_off_the_gpu():
    """zero.offload_params: DeepSpeed's ZeRO-3 partitioning puts every parameter of the student engine in CPU memory
    whether it trains or not (partition_parameters.py picks the partition's device without looking at requires_grad),
    so a LoRA student's frozen base — a shared teacher's weights — holds no GPU bytes; a separate teacher's do."""
    lora = ["zero.stage=3", "zero.teacher_stage=3", "student.lora.rank=4"]
    for shared in ("true", "false"):
        on, off = (
            plan(load_config("recipes/tiny_cpu.yaml", [*lora, f"student.lora.share_teacher={shared}", *more]), 8)
            for more in (["zero.offload_params=true"], [])
        )
        assert off["models"]["student"]["params"] > 0 and on["models"]["student"]["params"] == 0
        assert on["models"]["teacher"]["params"] == off["models"]["teacher"]["params"]
        assert (on["models"]["teacher"]["params"] == 0) == (shared == "true")


@pytest.mark.parametrize("recipe", ["recipes/tiny_cpu.yaml", "recipes/tiny_flux_cpu.yaml"])
def test_flex_history_attention_is_planned_at_the_blocks_its_mask_allows(recipe):
    """`student.attention` flex (what `auto` picks on a GPU) counts the history attention of the N masked blocks at
    the group pairs the mask allows and saves no bias; sdpa counts the dense masked attention and its (S·L)² bias.
    The differences are the closed forms: FLOPs 4·H·d·L²·(S² − allowed) and bias bytes (S·L)²·4 (fp32) per layer."""
    from ard_scale.models.attention import group_mask

    cfg = load_config(recipe)
    flex, sdpa = (plan(load_config(recipe, [f"student.attention={k}"]), 2) for k in ("flex", "sdpa"))
    assert plan(cfg, 2)["recipe"]["history_attention"] == "flex"  # auto, planned for a GPU
    assert (flex["recipe"]["history_attention"], sdpa["recipe"]["history_attention"]) == ("flex", "sdpa")
    teacher, _ = meta_teacher(cfg)
    c = teacher.model.config
    S, layers = cfg.student.num_steps, cfg.student.num_causal_layers
    heads, head_dim = c.num_attention_heads, c.attention_head_dim
    _, cond, side = example_inputs(teacher, cfg, 1, torch.float32)
    text = 0 if cond.text is None else cond.text.shape[1]  # joint families: each group carries its caption tokens
    L = (side // teacher.patch_size) ** 2 + text
    allowed = int(group_mask(S, cfg.student.mask, cfg.student.window).sum())
    assert allowed < S * S
    per_sample = sdpa["flops"]["student_forward_per_sample"] - flex["flops"]["student_forward_per_sample"]
    assert per_sample == layers * 4 * heads * head_dim * L * L * (S * S - allowed)
    saved = {k: p["models"]["student"]["activations_no_checkpointing"] for k, p in (("flex", flex), ("sdpa", sdpa))}
    assert saved["sdpa"] - saved["flex"] == layers * (S * L) ** 2 * 4


def test_precomputed_text_takes_qwen_image_s_encoder_off_the_gpus():
    """With text_encoder.use_precomputed the trainer drops Qwen2.5-VL after encoding the null caption; the plan
    counts neither its weights nor its encode pass."""
    online = plan(load_config("recipes/qwen_image_1024.yaml"), 8)
    precomputed = plan(load_config("recipes/qwen_image_1024.yaml", ["text_encoder.use_precomputed=true"]), 8)
    qwen = online["models"]["qwen2.5-vl"]
    assert round(qwen["num_params"] / 1e9, 1) == 8.3 and online["phases"]["qwen_encode"] > 0
    assert "qwen2.5-vl" not in precomputed["models"] and precomputed["phases"]["qwen_encode"] == 0
    assert precomputed["persistent_bytes"] == online["persistent_bytes"] - qwen["params"]  # its ZeRO-3 share


def test_the_students_ema_is_planned_as_the_trainer_holds_it():
    """The trainer keeps an fp32 EMA of the student's trainable parameters (`ZeroEMA`, train.ema_decay): the whole
    parameters on every rank at ZeRO 0-2, a 1/N shard at ZeRO-3, in CPU memory beside the offloaded fp32 master. The
    planner left it out (FLUX.1-dev at 8 GPUs: 6 GB per GPU more than it said)."""
    from ard_scale.distributed.ema import ZeroEMA
    from ard_scale.models.student import ARDStudent
    from ard_scale.trainer.build import build_schedule, build_teacher_model

    zero2_lora = ["zero.stage=2", "student.lora.rank=4", "student.lora.share_teacher=false"]  # trainable ones only
    cfg = load_config("recipes/tiny_cpu.yaml", zero2_lora)
    teacher = build_teacher_model(cfg)
    student = ARDStudent(teacher, cfg.student, build_schedule(cfg, teacher.patch_size))
    held = sum(t.numel() * t.element_size() for t in ZeroEMA(student, cfg.train.ema_decay).shadow.values())
    p = plan(cfg, 8)
    s = p["models"]["student"]
    assert s["ema"] == held == 4 * s["trainable_params"] < 4 * s["num_params"]  # whole on each of the 8 GPUs
    no_ema = plan(load_config("recipes/tiny_cpu.yaml", [*zero2_lora, "train.ema_decay=null"]), 8)
    assert no_ema["models"]["student"]["ema"] == 0 and p["persistent_bytes"] == no_ema["persistent_bytes"] + held
    zero3 = plan(load_config("recipes/tiny_cpu.yaml", ["zero.stage=3"]), 8)["models"]["student"]
    assert zero3["ema"] == 4 * zero3["num_params"] / 8  # a shard per GPU
    offloaded = plan(load_config("recipes/tiny_cpu.yaml", ["zero.offload_optimizer=true"]), 8)
    assert offloaded["models"]["student"]["ema"] == 0


ENGINE_BYTES = """
import json, sys
import torch
from ard_scale.config import load_config
from ard_scale.diffusion.condition import Condition
from ard_scale.distributed.ema import ZeroEMA
from ard_scale.distributed.engines import build_student_engine, init_distributed
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import build_schedule, build_teacher_model, latent_shape, student_engine_config

torch.set_num_threads(1)
init_distributed()
cfg = load_config("recipes/tiny_cpu.yaml", sys.argv[1:])
teacher = build_teacher_model(cfg)
shape = latent_shape(cfg, teacher)
student = ARDStudent(teacher, cfg.student, build_schedule(cfg, teacher.patch_size), latent_shape=shape)
engine, optimizer = build_student_engine(student, student_engine_config(cfg))
states = torch.randn(2, cfg.student.num_steps, *shape)
engine.backward(engine(states, Condition(labels=torch.tensor([1, 2]))).float().square().mean())
engine.step()  # the AdamW moments exist from the first step on
nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
moments = [t for s in optimizer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
print("RESULT " + json.dumps({
    "params": nbytes(p.ds_tensor for p in engine.module.parameters()),
    "optimizer": nbytes(optimizer.fp32_partitioned_groups_flat) + nbytes(moments),
    "ema": nbytes(ZeroEMA(engine, cfg.train.ema_decay).shadow.values()),
}), flush=True)
"""


def test_student_bytes_are_those_of_the_trainers_zero3_engine():
    """The student row against a real ZeRO-3 bf16 engine built as the trainer builds it (one rank): bf16 weight
    partitions, fp32 master + AdamW moments after a step, and the EMA shards."""
    overrides = ["zero.stage=3", "train.precision=bf16"]
    held = run_child(ENGINE_BYTES, *overrides)
    s = plan(load_config("recipes/tiny_cpu.yaml", overrides), 1)["models"]["student"]
    assert {k: s[k] for k in held} == held


def test_qwen_image_is_planned_with_the_caption_tokens_its_encoder_gives():
    """Qwen-Image reads Qwen2.5-VL's hidden states, padded to qwen_encoder.max_length (512 in the 1024 recipe, 16 in
    the tiny one); the planner built its example condition at T5's text_encoder.max_length instead (300 by default, a
    setting the family never reads), so every teacher and student FLOP and activation was counted at 300 tokens per
    group. Here against the teacher forward (on meta, where SDPA's FLOPs are counted) at the condition the trainer's
    own conditioner encodes."""
    from ard_scale.diffusion.condition import Condition
    from ard_scale.models.teachers import build_teacher
    from ard_scale.trainer.build import build_conditioner, latent_shape

    cfg = load_config("recipes/tiny_qwen_image_cpu.yaml")
    text = build_conditioner(cfg, build_teacher("qwen_image", cfg.teacher.size))({"captions": ["a seven"]})[0].text
    assert text.shape[1] == cfg.qwen_encoder.max_length != cfg.text_encoder.max_length
    teacher, _ = meta_teacher(cfg)
    x = torch.zeros(1, *latent_shape(cfg, teacher), device="meta")
    cond = Condition(text=torch.zeros(text.shape, device="meta"))
    with torch.no_grad():
        forward = count_flops(lambda: teacher(x, torch.zeros(1, device="meta"), cond))
    assert plan(cfg, 2)["flops"]["teacher_forward_per_sample"] == forward
    assert plan(load_config("recipes/tiny_qwen_image_cpu.yaml", ["text_encoder.max_length=7"]), 2) == plan(cfg, 2)


@pytest.mark.parametrize("recipe", ["recipes/tiny_flux_cpu.yaml", "recipes/tiny_qwen_image_cpu.yaml"])
def test_student_tokens_per_sample_are_the_tokens_its_blocks_run(recipe):
    """A joint-attention (MMDiT) group is its image tokens and its own copy of the caption's: the plan said S·L_img
    tokens per sample (16384 for flux_1024), not the S·(L_txt + L_img) its blocks run (18432). Counted here on the
    trainer's student and conditioner: the token rows of an upper block's sequence inputs (groups folded into the
    batch), per sample."""
    from ard_scale.models.student import ARDStudent
    from ard_scale.trainer.build import build_conditioner, build_schedule, build_teacher_model, latent_shape

    cfg = load_config(recipe)
    teacher = build_teacher_model(cfg)
    shape = latent_shape(cfg, teacher)
    student = ARDStudent(teacher, cfg.student, build_schedule(cfg, teacher.patch_size), latent_shape=shape)
    B, S = 2, cfg.student.num_steps
    cond, _ = build_conditioner(cfg, teacher)({"captions": ["a seven", "a zero"]})
    rows = []

    def count(module, args, kwargs):  # image and text streams, (B·S, L, D) each
        rows.append(
            sum(a.shape[0] * a.shape[1] for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.dim() == 3)
        )

    hook = student.family.blocks(student.backbone)[-1].register_forward_pre_hook(count, with_kwargs=True)
    with torch.no_grad():
        student(torch.zeros(B, S, *shape), cond)
    hook.remove()
    assert plan(cfg, 2)["recipe"]["tokens_per_sample"] == rows[0] // B
