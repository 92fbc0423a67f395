"""Discriminator heads, the backbone feature paths, and the GAN step's gradient control (one process, no ZeRO)."""

import copy

import pytest
import torch
from model_helpers import make_condition, small_side

from ard_scale.config.ard import ARDConfig
from ard_scale.config.training import GANConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule, add_noise
from ard_scale.models.discriminator import Discriminator
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.gan import GANNoise, discriminator_step_loss, generator_gradient

B, S = 3, 4


def make_disc(family: str, num_heads: int, dim: int = 32) -> Discriminator:
    torch.manual_seed(5)
    kwargs = {"num_classes": 10} if family == "dit" else {"text_dim": 24}
    return Discriminator(num_heads=num_heads, dim=dim, hidden=16, cond_dim=16, **kwargs)


def sn_buffers(disc: Discriminator) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in disc.state_dict().items() if k.endswith(("_u", "_v"))}


def test_heads_give_per_token_logits_that_depend_on_the_condition(family):
    disc = make_disc(family, num_heads=2).eval()
    feats = [torch.randn(B, 16, 32), torch.randn(B, 16, 32)]
    cond = make_condition(family, B, seed=0)
    logits = disc(feats, cond)
    assert logits.shape == (B, 2 * 16)
    other = make_condition(family, B, seed=1)
    assert not torch.allclose(disc(feats, other), logits)  # projection conditioning is live
    with pytest.raises(ValueError, match="2 discriminator heads"):
        disc(feats[:1], cond)


def test_text_condition_is_the_mean_of_the_captions_real_tokens_whatever_the_padding():
    """The projection conditioning reads the caption's mean over its real tokens: dividing by all max_length tokens
    instead shrank a short caption's embedding by its padding share (T5 pads to 300 tokens), and the logits changed
    with text_encoder.max_length."""
    disc = make_disc("pixart", num_heads=1).eval()
    cond = make_condition("pixart", B)  # sample 0's caption is padded (mask 1 1 1 1 0 0)
    mask = cond.text_mask.bool()
    reference = torch.stack([cond.text[b, mask[b]].mean(0) for b in range(B)])
    torch.testing.assert_close(disc.embed(cond), disc.text_embed(reference))
    feats = [torch.randn(B, 16, 32, generator=torch.Generator().manual_seed(7))]
    longer = Condition(  # the same captions padded to 10 tokens, with other values under the padding
        text=torch.cat([cond.text, torch.randn(B, 4, cond.text.shape[2])], 1),
        text_mask=torch.cat([cond.text_mask, torch.zeros(B, 4, dtype=cond.text_mask.dtype)], 1),
    )
    torch.testing.assert_close(disc(feats, longer), disc(feats, cond))


def test_eval_mode_freezes_spectral_norm_state_and_train_mode_bounds_the_weights(family):
    disc = make_disc(family, num_heads=1)
    feats, cond = [torch.randn(B, 16, 32)], make_condition(family, B)
    before = sn_buffers(disc)
    disc.eval()(feats, cond)
    assert all(torch.equal(before[k], v) for k, v in sn_buffers(disc).items())  # the generator phase changes nothing
    disc.train()
    for _ in range(30):
        disc(feats, cond)
    assert any(not torch.equal(before[k], v) for k, v in sn_buffers(disc).items())
    conv = disc.heads[0].body[0]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, rel=1e-3)


def block_outputs(teacher, x, t, cond, layers):
    """An independent route to the teacher's hidden states: forward hooks on its blocks during its own forward."""
    found = {}
    # FLUX: double- then single-stream blocks, each returning (text, image); the features are the image stream's
    blocks = [*teacher.model.transformer_blocks, *getattr(teacher.model, "single_transformer_blocks", [])]
    hooks = [
        blocks[i].register_forward_hook(lambda m, a, o, i=i: found.__setitem__(i, o[1] if isinstance(o, tuple) else o))
        for i in layers
    ]
    try:
        teacher(x, t, cond)
    finally:
        for h in hooks:
            h.remove()
    return [found[i] for i in layers]


@pytest.mark.parametrize("schedule", [VPSchedule(), FlowSchedule()], ids=["vp", "flow"])
def test_teacher_and_student_features_equal_the_teachers_block_outputs(teacher, family, schedule):
    """The student's feature pass takes schedule times, the teacher's model times: under flow matching they differ
    (model time = 1000·σ), so a feature pass that skipped the conversion fails here."""
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), schedule).eval()
    x = torch.randn(B, teacher.in_channels, teacher.sample_size, teacher.sample_size)
    t = torch.tensor([10.0, 500.0, 990.0], dtype=torch.float64) / (1000.0 if isinstance(schedule, FlowSchedule) else 1)
    cond = make_condition(family, B)
    layers = [0, 2, 3]
    with torch.no_grad():
        hooked = block_outputs(teacher, x, student.schedule.model_time(t), cond, layers)
        direct = teacher.features(x, student.schedule.model_time(t), cond, layers)
        ours = student.features(x, t, cond, layers)
    assert len(hooked) == len(direct) == len(ours) == 3
    for a, b, c in zip(hooked, direct, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)


def test_the_student_backbone_carries_the_generator_gradient_to_its_input_only(teacher, family):
    """Gradient control: through the live student as backbone, the student's parameters receive exactly what a
    frozen snapshot of it as backbone would give — nothing from the feature pass itself."""
    torch.manual_seed(0)
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule())
    disc = make_disc(family, num_heads=2).eval().requires_grad_(False)
    cond = make_condition(family, B)
    side = small_side(teacher)
    shape = (B, teacher.in_channels, side, side)
    states = torch.randn(B, S, *shape[1:])
    noise = GANNoise.draw(0, 3, 0, shape, student.schedule.t_max, "cpu")
    layers = [1, 3]

    def x0_hat_of(model):
        out = model(states, cond)
        return model.next_state(states[:, -1], out[:, -1], S - 1)

    # ours: surrogate ⟨∂L_G/∂x̂0, x̂0⟩ through the live student as backbone
    x0 = x0_hat_of(student)
    _, g, _ = generator_gradient(
        lambda x, t, c: student.features(x, t, c, layers), disc, student.schedule, x0, cond, noise, "hinge"
    )
    assert all(p.grad is None for p in student.parameters())  # the feature pass accumulated nothing
    (g * x0).sum().backward()
    ours = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    # reference: plain autograd end to end, with a frozen copy of the student as the backbone
    student.zero_grad(set_to_none=True)
    snapshot = copy.deepcopy(student).requires_grad_(False)
    x0 = x0_hat_of(student)
    x_t = add_noise(student.schedule, x0, noise.t_fake, noise.noise_fake)
    (-disc(snapshot.features(x_t, noise.t_fake, cond, layers), cond).mean()).backward()
    reference = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    assert ours.keys() == reference.keys()
    for n in ours:
        torch.testing.assert_close(ours[n], reference[n], rtol=1e-4, atol=1e-7, msg=n)

    # and it is not what shared weights with full gradients would give (the test can tell the two apart)
    student.zero_grad(set_to_none=True)
    x0 = x0_hat_of(student)
    x_t = add_noise(student.schedule, x0, noise.t_fake, noise.noise_fake)
    (-disc(student.features(x_t, noise.t_fake, cond, layers), cond).mean()).backward()
    mlp = "img_mlp" if family == "qwen_image" else "ff"  # Qwen-Image's image-stream MLP
    shared = getattr(student.backbone.transformer_blocks[1], mlp).net[0].proj.weight.grad
    assert not torch.allclose(shared, reference[f"backbone.transformer_blocks.1.{mlp}.net.0.proj.weight"], rtol=1e-3)


def test_the_discriminator_loss_leaves_the_backbone_without_gradients(teacher, family):
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule())
    disc = make_disc(family, num_heads=1).train()
    cond = make_condition(family, B)
    shape = (B, teacher.in_channels, teacher.sample_size, teacher.sample_size)
    fake, real = torch.randn(shape, requires_grad=True), torch.randn(shape)
    noise = GANNoise.draw(0, 0, 0, shape, student.schedule.t_max, "cpu")
    loss_d, _, _ = discriminator_step_loss(
        lambda x, t, c: student.features(x, t, c, [2]),
        disc,
        student.schedule,
        fake,
        real,
        cond,
        noise,
        GANConfig(enabled=True, r1_weight=1.0),
    )
    loss_d.backward()
    assert all(p.grad is None for p in student.parameters())
    assert fake.grad is None
    trained = [(n, p) for n, p in disc.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trained)
    # The output bias's hinge gradient is P(fake active) − P(real active): exactly 0 when every logit is inside the
    # margin on both sides (SD3's 16-token debug features; FLUX's 4096 tokens left only a 6e-8 rounding residue).
    assert all(p.grad.abs().sum() > 0 for n, p in trained if not n.endswith("out.bias"))
