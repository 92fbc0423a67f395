"""Block-sparse history attention (ard_scale/models/flex.py, issue 18): FlexAttention with a BlockMask built from the
group mask equals SDPA with the dense token mask for every mask kind, for ragged L and with a key padding mask, and
for every family's student layout (text-per-group joint attention included); the invariants hold with it on.

On CPU FlexAttention is forward-only and compiles per shape (seconds), so the CPU tests share a few shapes; the
gradients are checked in the `gpu`-marked tests (skipped without CUDA) and in bench/gpu_check.py."""

import pytest
import torch
import torch.nn.functional as F
from model_helpers import FAMILIES, make_condition

from ard_scale.config import ConfigError, config_hash, load_config
from ard_scale.config.ard import MASK_KINDS, ARDConfig
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.models import attention
from ard_scale.models.attention import group_mask, token_mask
from ard_scale.models.flex import HistoryMask, history_attention, resolve_attention
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher
from ard_scale.trainer.checks import check_attention

S, B = 4, 2


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def qkv(L, *, H=2, d=16, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, S * L, d, generator=g).to(device, dtype) for _ in range(3)]


def padding(L, device="cpu"):
    keep = torch.ones(B, S * L, dtype=torch.bool)
    keep[0, 3:L] = False  # group 0 of sample 0 keeps only 3 keys
    keep[1, L + 5 : 2 * L] = False  # a tail of group 1 of sample 1
    return keep.to(device)


def dense_reference(q, k, v, mask_SS, keep=None):
    mask = token_mask(mask_SS.to(q.device), q.shape[2] // mask_SS.shape[0])
    if keep is not None:
        mask = mask & keep[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# -- the kernel against the dense reference ---------------------------------------------------------------------------
@pytest.mark.parametrize("mask", MASK_KINDS)
@pytest.mark.parametrize("padded", [False, True], ids=["no-key-mask", "key-mask"])
def test_flex_equals_sdpa_with_the_dense_mask_for_every_mask_kind(mask, padded):
    L = 40  # 160 tokens: groups straddle the 128-token blocks, so partial blocks must be masked per token
    q, k, v = qkv(L)
    mask_SS = group_mask(S, mask, 2)
    keep = padding(L) if padded else None
    with torch.no_grad():
        out = history_attention(q, k, v, mask_SS, keep)
    assert out.shape == q.shape
    assert rel_err(out, dense_reference(q, k, v, mask_SS, keep)) <= 1e-5


@pytest.mark.parametrize("L", [128, 40, 130])
def test_history_mask_is_exact_per_token_and_skips_the_blocks_the_mask_rules_out(L):
    from torch.nn.attention.flex_attention import create_mask

    mask_SS = group_mask(S, "causal")
    block_mask = HistoryMask(mask_SS).block_mask(L, "cpu")
    assert HistoryMask(mask_SS).block_mask(L, "cpu") is block_mask  # cached per shape and device
    assert HistoryMask(group_mask(S, "diagonal")).block_mask(L, "cpu") is not block_mask
    dense = create_mask(block_mask.mask_mod, None, None, S * L, S * L, device="cpu")[0, 0]
    assert torch.equal(dense, token_mask(mask_SS, L))
    if L == 128:  # one block per group: exactly the 10 of 16 blocks the causal mask allows are computed
        assert int(block_mask.kv_num_blocks.sum()) + int(block_mask.full_kv_num_blocks.sum()) == 10


def test_resolve_attention_picks_flex_on_cuda_only_for_auto():
    assert resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_attention("auto", torch.device("cuda")) == "flex"
    assert resolve_attention("flex", "cpu") == "flex" and resolve_attention("sdpa", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="student.attention: unknown 'dense'.*flex, sdpa, auto"):
        resolve_attention("dense", "cpu")


def test_flex_training_on_cpu_is_a_clear_error():
    q, k, v = qkv(40)
    q.requires_grad_(True)
    with pytest.raises(ValueError, match="no backward on CPU.*student.attention: sdpa"):
        history_attention(q, k, v, group_mask(S, "causal"))


# -- the config key and its trainer check ----------------------------------------------------------------------------
def test_student_attention_is_a_checked_choice_outside_the_config_hash():
    recipe = "recipes/tiny_cpu.yaml"
    cfg = load_config(recipe)
    assert cfg.student.attention == "auto"
    for kind in ("flex", "sdpa"):
        assert config_hash(load_config(recipe, [f"student.attention={kind}"])) == config_hash(cfg)
    with pytest.raises(ConfigError, match="student.attention"):
        load_config(recipe, ["student.attention=dense"])
    assert any("attention: unknown" in p for p in ARDConfig(attention="dense").problems())

    check_attention(cfg, "cpu")  # auto: sdpa on CPU
    check_attention(load_config(recipe, ["student.attention=flex"]), "cuda")
    with pytest.raises(ConfigError, match="student.attention: 'flex' cannot train on cpu.*student.attention: sdpa"):
        check_attention(load_config(recipe, ["student.attention=flex"]), "cpu")


# -- every family's student layout -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teachers():
    out = {}
    for name in FAMILIES:
        t = build_teacher(name, "debug", seed=1)
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():  # as tests/unit/models/conftest.py: no gate or head near zero
            for p in t.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        out[name] = t
    return out


def students(teacher, mask="causal", num_causal_layers=2):
    cfg = dict(num_steps=S, num_causal_layers=num_causal_layers, mask=mask, window=2)
    flex = ARDStudent(teacher, ARDConfig(**cfg, attention="flex"), VPSchedule()).eval()
    sdpa = ARDStudent(teacher, ARDConfig(**cfg, attention="sdpa"), VPSchedule()).eval()
    flex.load_state_dict(sdpa.state_dict())
    return flex, sdpa


def states_for(student, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, student.in_channels, 8, 8, generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_forward_with_flex_equals_sdpa_and_keeps_invariants_1_and_2(teachers, family, monkeypatch):
    """flex == sdpa (fp32, 1e-5) on the family's layout (PixArt and Qwen-Image with a padded caption), each really
    running its kernel in the N masked blocks; with flex on, group 0's prediction ignores every later group
    (invariant 1) and KV-cached sampling equals the flex forward on the sampled trajectory (invariant 2)."""
    flex, sdpa = students(teachers[family])
    cond = make_condition(family, B)
    states = states_for(flex)
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return history_attention(*args)

    monkeypatch.setattr(attention, "history_attention", counted)
    with torch.no_grad():
        reference = sdpa(states, cond)
        assert not calls
        out = flex(states, cond)
        assert len(calls) >= flex.cfg.num_causal_layers  # SD3.5 blocks have two attentions (joint, image-only)
        assert rel_err(out, reference) <= 1e-5
        later = states.clone()
        later[:, 1:] += torch.randn_like(later[:, 1:])
        changed = flex(later, cond)
        assert torch.equal(changed[:, 0], out[:, 0]) and not torch.equal(changed[:, 1], out[:, 1])
        sampled = flex.sample(states[:, 0], cond, return_states=True)
        assert rel_err(flex.predict_next(sampled[:, :S], cond), sampled[:, 1:]) <= 1e-5


@pytest.mark.parametrize("mask", ["window", "first"])  # 'diagonal' has no history layers
def test_dit_student_with_flex_equals_sdpa_for_the_other_mask_kinds(teachers, mask):
    flex, sdpa = students(teachers["dit"], mask)
    cond = make_condition("dit", B)
    with torch.no_grad():
        assert rel_err(flex(states_for(flex), cond), sdpa(states_for(flex), cond)) <= 1e-5


# -- CUDA: forward and gradients in bf16 -----------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("mask", MASK_KINDS)
@pytest.mark.parametrize("padded", [False, True], ids=["no-key-mask", "key-mask"])
def test_gpu_flex_forward_and_gradients_equal_sdpa_in_bf16(mask, padded):
    L = 300  # ragged against the 128-token blocks
    q, k, v = (t.requires_grad_(True) for t in qkv(L, H=4, d=64, device="cuda", dtype=torch.bfloat16))
    mask_SS = group_mask(S, mask, 2)
    keep = padding(L, "cuda") if padded else None
    out = history_attention(q, k, v, mask_SS, keep)
    ref_inputs = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    ref = dense_reference(*ref_inputs, mask_SS, keep)
    grad = torch.randn_like(ref)
    (out.float() * grad).sum().backward()
    (ref * grad).sum().backward()
    assert rel_err(out.float(), ref) <= 2e-2
    for t, r in zip((q, k, v), ref_inputs, strict=True):
        assert rel_err(t.grad.float(), r.grad) <= 3e-2


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_every_family_student_gradients_with_flex_equal_sdpa_under_checkpointing(teachers, family):
    flex, sdpa = students(teachers[family])
    for student in (flex, sdpa):
        student.cuda().train().activation_checkpointing = True
    cond = make_condition(family, B).to("cuda")
    states = states_for(flex).cuda()
    grads = []
    for student in (flex, sdpa):
        student.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = student(states, cond).float().square().mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten().float() for p in student.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape
    assert rel_err(grads[0], grads[1]) <= 3e-2
