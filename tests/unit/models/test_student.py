"""The ARD student's invariants (DESIGN.md §1, 1–3) and its bad-input errors, for both teacher families."""

import copy

import pytest
import torch
from model_helpers import make_condition, small_side

from ard_scale.config.ard import MASK_KINDS, ARDConfig
from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule, first_order_step
from ard_scale.models.attention import group_mask
from ard_scale.models.student import ARDStudent

S, B = 4, 2


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def states_for(student, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, student.num_steps, student.in_channels, 8, 8, generator=g)


def teacher_sampler(teacher, schedule, noise, cond, num_steps):
    """The teacher's own S-step deterministic sampler on the student grid (DDIM / Euler), guidance 1."""
    grid, x, states = schedule.grid(num_steps), noise, [noise]
    for k in range(num_steps):
        out = teacher(x, schedule.model_time(grid[k]).expand(x.shape[0]), cond)
        x = first_order_step(schedule, x, grid[k], teacher.split_output(out), grid[k + 1])
        states.append(x)
    return torch.stack(states, 1)


def reference_group_mask(num_groups: int, kind: str, window: int) -> torch.Tensor:
    """DESIGN.md §1 "Masks" written out entry by entry, independently of `group_mask`: may group g attend to group h?
    M1 diagonal: itself; M2 window: itself and the W-1 groups before it; M3 first: itself and the pure-noise group 0;
    M4 causal: itself and every earlier group."""

    def allowed(g: int, h: int) -> bool:
        return {
            "diagonal": h == g,
            "window": g - window < h <= g,
            "first": h in (g, 0),
            "causal": h <= g,
        }[kind]

    return torch.tensor([[allowed(g, h) for h in range(num_groups)] for g in range(num_groups)])


@pytest.mark.parametrize("mask", MASK_KINDS)
@pytest.mark.parametrize("window", [1, 2, 3])
def test_group_mask_is_the_papers_m1_to_m4_entry_by_entry(mask, window):
    for num_groups in (1, 2, 4, 6):
        got = group_mask(num_groups, mask, window)
        assert got.dtype == torch.bool
        assert torch.equal(got, reference_group_mask(num_groups, mask, window)), (mask, window, num_groups)


def reachable(mask_SS: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Which input groups can influence each output group after `num_layers` masked layers (N-step reachability)."""
    reach = torch.eye(mask_SS.shape[0], dtype=torch.bool)
    for _ in range(num_layers):
        reach = (mask_SS.int() @ reach.int()) > 0
    return reach


@pytest.mark.parametrize("mask", MASK_KINDS)
@pytest.mark.parametrize("num_causal_layers", [0, 1, 2])
def test_group_outputs_depend_exactly_on_the_groups_the_mask_reaches(teacher, family, mask, num_causal_layers):
    """Invariant 1, both ways: perturbing group h changes the prediction of group g iff the mask lets h reach g
    through the N masked layers — so no later group ever leaks in, and M4 with N > 0 *does* read the history."""
    cfg = ARDConfig(num_steps=S, num_causal_layers=num_causal_layers, mask=mask, window=2)
    student = ARDStudent(teacher, cfg, VPSchedule()).eval()
    cond = make_condition(family, B)
    states = states_for(student)
    with torch.no_grad():
        base = student(states, cond)
        expected = reachable(reference_group_mask(S, mask, 2), num_causal_layers)
        for h in range(S):
            perturbed = states.clone()
            perturbed[:, h] += torch.randn_like(perturbed[:, h])
            out = student(perturbed, cond)
            for g in range(S):
                changed = not torch.equal(out[:, g], base[:, g])
                assert changed == bool(expected[g, h]), (g, h, mask, num_causal_layers)
    if mask == "causal" and num_causal_layers > 0:
        assert expected[S - 1, 0]  # the check above really exercised a history dependence


def distinct_heads(student):
    """Perturb each step's head differently (untrained heads are identical copies of the teacher's final layer)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for head in student.heads:
            for p in head.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("mask", MASK_KINDS)
@pytest.mark.parametrize("output", ["solver", "direct"])
def test_kv_cached_sampling_equals_the_full_sequence_forward(teacher, family, mask, output):
    """Invariant 2: S cached steps of L tokens reproduce the one-pass teacher-forced forward on the same states."""
    cfg = ARDConfig(num_steps=S, num_causal_layers=3, mask=mask, output=output)
    student = ARDStudent(teacher, cfg, VPSchedule()).eval()
    distinct_heads(student)  # as after training: step s must sample with its own head, the one the forward uses
    cond = make_condition(family, B)
    noise = torch.randn(B, student.in_channels, 8, 8, generator=torch.Generator().manual_seed(3))
    sampled = student.sample(noise, cond, return_states=True)  # (B, S+1, C, H, W)
    with torch.no_grad():
        teacher_forced = student.predict_next(sampled[:, :S], cond)
    assert sampled.shape == (B, S + 1, student.in_channels, 8, 8)
    assert rel_err(teacher_forced, sampled[:, 1:]) <= 1e-5
    assert torch.equal(student.sample(noise, cond), sampled[:, -1])


def test_non_square_latents_keep_invariants_2_and_3(teacher, family):
    """Aspect-ratio buckets (data.buckets) and pipeline calls at another height/width: on 8×12 latents, which every
    family but DiT (a fixed positional embedding: its own square only) takes, KV-cached sampling equals the
    teacher-forced forward, and the untrained N = 0 student the teacher's own sampler."""
    if family == "dit":
        with pytest.raises(ValueError, match="positional embedding is fixed"):
            teacher.spec.check_latent_size(teacher.model, 8, 12)
        return
    teacher.spec.check_latent_size(teacher.model, 8, 12)
    cond = make_condition(family, B)
    noise = torch.randn(B, teacher.in_channels, 8, 12, generator=torch.Generator().manual_seed(3))
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=3), VPSchedule()).eval()
    distinct_heads(student)
    sampled = student.sample(noise, cond, return_states=True)
    with torch.no_grad():
        teacher_forced = student.predict_next(sampled[:, :S], cond)
    assert sampled.shape == (B, S + 1, teacher.in_channels, 8, 12)
    assert rel_err(teacher_forced, sampled[:, 1:]) <= 1e-5
    baseline = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=0), VPSchedule()).eval()
    with torch.no_grad():
        reference = teacher_sampler(teacher, VPSchedule(), noise, cond, S)
    assert rel_err(baseline.sample(noise, cond, return_states=True), reference) <= 1e-5


@pytest.mark.parametrize(
    "schedule",
    [VPSchedule(), VPSchedule(prediction_type="v_prediction"), FlowSchedule()],
    ids=["vp-eps", "vp-v", "flow"],
)
@pytest.mark.parametrize("shared_head", [False, True])
def test_untrained_baseline_student_reproduces_the_teacher_sampler(teacher, family, schedule, shared_head):
    """Invariant 3: N = 0, `solver` outputs and teacher-copied heads give the teacher's own S-step sampler."""
    cfg = ARDConfig(num_steps=S, num_causal_layers=0, output="solver", shared_head=shared_head)
    student = ARDStudent(teacher, cfg, schedule).eval()
    cond = make_condition(family, B)
    noise = torch.randn(B, student.in_channels, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = teacher_sampler(teacher, schedule, noise, cond, S)
        teacher_forced = student.predict_next(reference[:, :S], cond)
    assert rel_err(student.sample(noise, cond, return_states=True), reference) <= 1e-5
    assert rel_err(teacher_forced, reference[:, 1:]) <= 1e-5


def test_only_new_parameters_are_the_extra_heads(teacher):
    per_step = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule())
    shared = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2, shared_head=True), VPSchedule())

    def count(m):
        return sum(p.numel() for p in m.parameters())

    head = count(shared.heads[0])
    assert count(shared) == count(teacher)
    assert count(per_step) == count(teacher) + (S - 1) * head
    # Heads are independent copies of the teacher's final layer.
    heads = list(per_step.heads)
    for a, b in zip(heads[0].parameters(), heads[1].parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_training_step_reaches_every_parameter_and_checkpointing_matches(teacher, family):
    cfg = ARDConfig(num_steps=S, num_causal_layers=2)
    cond = make_condition(family, B)
    grads = []
    for ckpt in (False, True):
        student = ARDStudent(teacher, cfg, VPSchedule())
        student.activation_checkpointing = ckpt
        states = states_for(student)
        target = states_for(student, seed=9)
        loss = (student.predict_next(states, cond) - target).pow(2).mean()
        loss.backward()
        grads.append({n: p.grad for n, p in student.named_parameters()})
    missing = [n for n, g in grads[0].items() if g is None]
    # DiT's null-class row and the unused pooled-size embedders get no gradient; nor does the text stream's output of
    # Qwen-Image's last block (it updates text no later block reads, as in the teacher); everything else must.
    last_text = f"transformer_blocks.{teacher.depth - 1}." if family == "qwen_image" else None
    unused = [n for n in missing if last_text and last_text in n and ("to_add_out" in n or "txt_mlp" in n)]
    assert len(unused) == (6 if last_text else 0), unused  # to_add_out and txt_mlp's two linears, weight and bias
    assert all("class_embedder" in n or "additional_condition" in n for n in missing if n not in unused), missing
    for n, g in grads[0].items():
        if g is not None:
            torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-7)


def test_train_mode_forward_is_the_eval_mode_forward(teacher, family):
    """Training runs the student in train mode: its condition must be the one it samples with. DiT's LabelEmbedding
    drops class labels to the null class at random in train mode (class_dropout_prob 0.1), which would silently train
    the student on the wrong class for a tenth of its groups; the student reads the embedding table directly."""
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule())
    batch = 8  # 32 groups per forward, 96 in the three: with a 0.1 drop rate some are dropped (seeded: always)
    cond = make_condition(family, batch)
    states = torch.randn(batch, S, student.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with torch.no_grad():
        trained = [student.train()(states, cond) for _ in range(3)]
        sampled = student.eval()(states, cond)
    for out in trained:
        assert torch.equal(out, sampled)


def test_student_does_not_change_the_teacher(teacher):
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=1), VPSchedule())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert all(torch.equal(p, before[n]) for n, p in teacher.named_parameters())


@pytest.mark.parametrize(
    "cfg, match",
    [
        (ARDConfig(num_causal_layers=5), "larger than the teacher's depth"),
        (ARDConfig(mask="window", window=0), "window: must be >= 1"),
        (ARDConfig(mask="banana"), "mask: unknown 'banana'"),
        (ARDConfig(output="eps"), "output: unknown 'eps'"),
        (ARDConfig(num_steps=0), "num_steps: must be >= 1"),
    ],
)
def test_bad_settings_are_clear_errors(teacher, cfg, match):
    with pytest.raises(ValueError, match=match):
        ARDStudent(teacher, cfg, VPSchedule())


def test_bad_inputs_are_clear_errors(teacher, family):
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule())
    cond = make_condition(family, B)
    with pytest.raises(ValueError, match="takes S=4 states"):
        student(torch.randn(B, 3, 4, 8, 8), cond)
    with pytest.raises(ValueError, match="patch grid"):
        student(torch.randn(B, S, 4, 7, 8), cond)
    with pytest.raises(ValueError, match="patch grid"):
        student(torch.randn(B, S, 3, 8, 8), cond)
    with pytest.raises(ValueError, match="patch grid"):
        student.sample(torch.randn(B, 4, 9, 9), cond)
    other = make_condition("pixart" if family == "dit" else "dit", B)
    with pytest.raises(ValueError, match="needs"):
        student(torch.randn(B, S, 4, 8, 8), other)


@pytest.mark.parametrize("mask", MASK_KINDS)
def test_prefix_forward_matches_the_full_forward(teacher, family, mask):
    """Recomputing the history without a cache (a forward over the first G states) gives the same predictions."""
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2, mask=mask), VPSchedule()).eval()
    cond = make_condition(family, B)
    states = states_for(student)
    with torch.no_grad():
        full = student(states, cond)
        for g in range(1, S + 1):
            assert rel_err(student(states[:, :g], cond, prefix=True), full[:, :g]) <= 1e-6
    with pytest.raises(ValueError, match="takes S=4 states"):
        student(states[:, :0], cond, prefix=True)


def test_deepcopy_is_an_independent_student(teacher, family):
    """An EMA copy must run its own blocks: the installed block forwards rebind to the copy."""
    import copy

    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule()).eval()
    twin = copy.deepcopy(student)
    cond, states = make_condition(family, B), states_for(student)
    with torch.no_grad():
        before = student(states, cond)
        assert torch.equal(twin(states, cond), before)
        for p in twin.backbone.transformer_blocks.parameters():
            p.add_(0.1)
        assert torch.equal(student(states, cond), before)
        assert not torch.equal(twin(states, cond), before)


def test_bf16_weights_take_fp32_states_and_return_fp32_close_to_the_fp32_model(teacher, family):
    """A bf16 engine keeps bf16 weights; states, solver steps and losses stay fp32 outside the network."""
    cfg = ARDConfig(num_steps=S, num_causal_layers=2)
    student = ARDStudent(teacher, cfg, VPSchedule()).eval()
    low = copy.deepcopy(student).to(torch.bfloat16)
    side = small_side(teacher)
    states = torch.randn(2, S, teacher.in_channels, side, side)
    cond = make_condition(family, 2)
    with torch.no_grad():
        ref, out = student(states, cond), low(states, cond)
        teacher_low = copy.deepcopy(teacher).to(torch.bfloat16)
        t_out = teacher_low(states[:, 0], torch.full((2,), 500.0), cond)
        sample = low.sample(states[:, 0], cond)
    assert out.dtype == t_out.dtype == sample.dtype == torch.float32
    assert (out - ref).norm() < 0.05 * ref.norm()


def test_features_after_a_checkpointed_backward_are_the_teachers_one_group_pass(teacher, family):
    """The GAN's discriminator phase reads the student's features after the generator's backward, which recomputes
    the checkpointed blocks (the lowest, masked one last): they must still be one group per sample, as before it —
    not the samples of the batch attending to each other as one sample's S groups (B = S here)."""
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule())
    student.activation_checkpointing = True
    cond = make_condition(family, S)
    side = small_side(teacher, want=8)
    g = torch.Generator().manual_seed(6)
    x_t = torch.randn(S, teacher.in_channels, side, side, generator=g)
    t = torch.tensor([900.0, 600.0, 300.0, 100.0])
    with torch.no_grad():
        before = student.features(x_t, t, cond, [0, 1])
    states = torch.randn(S, S, teacher.in_channels, side, side, generator=g)
    student.predict_next(states, cond).square().mean().backward()
    with torch.no_grad():
        after = student.features(x_t, t, cond, [0, 1])
    for a, b in zip(after, before, strict=True):
        assert torch.equal(a, b)


def test_a_condition_batch_other_than_the_sample_batch_is_a_clear_error(teacher, family):
    """4 samples under 2 conditions: PixArt's cross-attention folded the extra samples into the sequence and paired
    them with the wrong captions without a word, the other families failed inside a layer on a size mismatch."""
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule()).eval()
    cond = make_condition(family, 2)
    x = torch.randn(4, teacher.in_channels, 8, 8)
    calls = {
        "student forward": lambda: student(x[:, None].expand(-1, S, -1, -1, -1), cond),
        "student sample": lambda: student.sample(x, cond),
        "student features": lambda: student.features(x, torch.full((4,), 500.0), cond, [0]),
        "teacher forward": lambda: teacher(x, torch.full((4,), 500.0), cond),
        "teacher features": lambda: teacher.features(x, torch.full((4,), 500.0), cond, [0]),
    }
    for what, call in calls.items():
        with torch.no_grad(), pytest.raises(ValueError, match=f"the {what.split()[0]} got 4 samples but 2 conditions"):
            call()
