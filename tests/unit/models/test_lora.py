"""The LoRA student: sharing the teacher's weights changes memory, never numbers."""

import copy
import warnings

import pytest
import torch
from model_helpers import make_condition

from ard_scale.config.ard import ARDConfig, LoRAConfig
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.models.lora import adapted_names, merged_backbone_state
from ard_scale.models.student import ARDStudent

S, B = 3, 2


def lora_student(teacher, share=True, rank=4, **lora):
    cfg = ARDConfig(num_steps=S, num_causal_layers=1, lora=LoRAConfig(rank=rank, share_teacher=share, **lora))
    torch.manual_seed(0)  # the adapters' A matrices are random: the same draws for every copy
    return ARDStudent(teacher, cfg, VPSchedule())


def states_for(student, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, student.in_channels, 8, 8, generator=g)


def train_steps(student, family, steps=2):
    """A few Adam steps of the student on a stand-in loss with a large step size, so every adapter moves."""
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    cond, losses = make_condition(family, B), []
    for i in range(steps):
        out = student(states_for(student, i), cond)
        loss = (out - 1).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_the_teacher_role_is_the_plain_teacher_bit_for_bit_after_training(teacher, family):
    plain = copy.deepcopy(teacher)
    student = lora_student(teacher)
    assert student.shares_teacher and student.teacher_model is teacher.model
    train_steps(student, family)
    moved = [n for n, p in student.named_parameters() if ".lora_B." in n and p.abs().sum() > 0]
    assert moved, "the adapters did not train: the test would not see a leak into the teacher"
    cond = make_condition(family, B)
    x = states_for(student)[:, 0]
    t = torch.full((B,), 0.4 if teacher.spec.name in ("flux", "sd3") else 400.0)
    with torch.no_grad():
        assert torch.equal(teacher(x, t, cond), plain(x, t, cond))
    for (name, p), q in zip(teacher.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_shared_weights_are_one_tensor_and_only_adapters_and_heads_train(teacher):
    student = lora_student(teacher)
    teacher_ids = {id(p) for p in teacher.model.parameters()}
    named = dict(student.named_parameters())  # shared parameters appear once, under the backbone's name
    assert teacher_ids <= {id(p) for p in named.values()}
    in_backbone = {n.replace(".base_layer.", ".") for n, _ in student.backbone.named_parameters()}
    own = [n.removeprefix("teacher_model.") for n in named if n.startswith("teacher_model.")]
    assert own and not set(own) & in_backbone  # only the teacher's final layer, which the student's heads replace
    # The shared student holds the separate student's tensors plus the teacher's final layer, and no second base.
    separate = sum(p.numel() for p in lora_student(teacher, share=False).parameters())
    final_layer = sum(named["teacher_model." + n].numel() for n in own)
    assert sum(p.numel() for p in named.values()) == separate + final_layer
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("heads.") for n in trainable)
    assert any(n.startswith("heads.") for n in trainable)
    assert set(student.state_dict()) == trainable  # checkpoints and exports carry the trainable state only


def test_a_zero_initialised_lora_student_is_the_full_copy_student(teacher, family):
    full = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=1), VPSchedule()).eval()
    student = lora_student(teacher).eval()
    cond, states = make_condition(family, B), states_for(full)
    with torch.no_grad():
        assert torch.equal(student(states, cond), full(states, cond))


def test_shared_and_separate_lora_students_train_to_the_same_numbers(teacher, family):
    a, b = lora_student(teacher, share=True), lora_student(copy.deepcopy(teacher), share=False)
    la, lb = train_steps(a, family), train_steps(b, family)
    assert la == lb
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_train_also_trains_a_copy_never_the_shared_teachers_own_weights(teacher, family):
    """`train_also` parameters of a shared student are the backbone's own copies: training them leaves the teacher
    role the plain teacher, and the shared student trains to the separate one's numbers."""
    plain = copy.deepcopy(teacher)
    also = ["transformer_blocks.0."]  # every family's first block: norms, modulation, the adapted layers' base
    a, b = lora_student(teacher, train_also=also), lora_student(copy.deepcopy(teacher), share=False, train_also=also)
    trained = {n: p.detach().clone() for n, p in a.named_parameters() if n.startswith("backbone.") and p.requires_grad
               and ".lora_" not in n}  # fmt: skip
    assert trained, "train_also matched nothing: the test would not see a leak into the teacher"
    assert not any(p.requires_grad for p in teacher.model.parameters())
    la, lb = train_steps(a, family), train_steps(b, family)
    assert la == lb
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and set(trained) <= set(sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert any(not torch.equal(sa[n], before) for n, before in trained.items()), "train_also did not train"
    for (name, p), q in zip(teacher.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_the_merged_backbone_is_the_adapted_backbone(teacher, family):
    student = lora_student(teacher, alpha=8.0)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.1)
    merged = merged_backbone_state(student.backbone)
    assert not any(".lora_" in k or ".base_layer." in k for k in merged)
    plain = copy.deepcopy(student)
    plain.cfg = ARDConfig(num_steps=S, num_causal_layers=1)
    from ard_scale.models.teachers import Teacher

    rebuilt = ARDStudent(Teacher(copy.deepcopy(teacher.model)), plain.cfg, VPSchedule())
    missing, unexpected = rebuilt.backbone.load_state_dict(merged, strict=False)
    assert not unexpected and not missing
    rebuilt.heads.load_state_dict(student.heads.state_dict())
    cond, states = make_condition(family, B), states_for(student)
    with torch.no_grad():
        want, got = student.eval()(states, cond), rebuilt.eval()(states, cond)
        assert ((got - want).norm() / want.norm()) < 1e-5
        delta = (student(states, cond) - lora_student(teacher).eval()(states, cond)).norm()
        assert delta > 1e-3 * want.norm()  # the adapters matter: a merge that dropped them would fail above


def test_loading_requires_every_trainable_key(teacher):
    student = lora_student(teacher)
    state = student.state_dict()
    student.load_state_dict(state)  # frozen base keys are not required
    key = next(k for k in state if ".lora_A." in k)
    del state[key]
    with pytest.raises(RuntimeError, match="Missing key"):
        student.load_state_dict(state)


def test_the_shared_teacher_stays_in_eval_mode(teacher):
    student = lora_student(teacher).train()
    assert student.backbone.training and not teacher.model.training


def test_bad_lora_settings_are_named():
    assert any("lora.rank" in p for p in ARDConfig(lora=LoRAConfig(rank=-1)).problems())
    assert any("lora.targets" in p for p in ARDConfig(lora=LoRAConfig(rank=2, targets=[])).problems())


def test_targets_that_match_nothing_are_an_error(teacher):
    with pytest.raises(ValueError, match="match no Linear layer"):
        lora_student(teacher, targets=["no_such_layer"])


def test_a_rank_as_wide_as_the_layers_it_adapts_is_said_to_gain_nothing(teacher):
    widths = [min(m.in_features, m.out_features) for m in teacher.modules() if isinstance(m, torch.nn.Linear)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rank below every adapted layer's width: nothing to say
        lora_student(teacher, rank=min(widths) - 1)
    with pytest.warns(UserWarning, match=rf"student.lora.rank={max(widths)} is at least the width of \d+ of the \d+"):
        lora_student(teacher, rank=max(widths))


@pytest.mark.parametrize("family", ["flux", "sd3", "qwen_image"])
def test_the_adapter_file_loads_into_the_diffusers_model_as_the_merged_weights(family, tmp_path):
    """The adapter-only export is diffusers' LoRA layout: `load_lora_adapter(prefix="transformer")` on the plain
    teacher class gives the merged backbone."""
    from ard_scale.checkpoint.export import LORA_FILE, write_adapters
    from ard_scale.models.teachers import build_teacher

    teacher = build_teacher(family, "debug", seed=1)
    student = lora_student(teacher, alpha=8.0)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.1)
    write_adapters(student, tmp_path)
    loaded = copy.deepcopy(teacher.model)
    # the folder, as pipelines load it (given the file itself, diffusers 0.38 skips the metadata and so the alpha)
    with warnings.catch_warnings():  # peft warns when the config names layers the file has no weights for
        warnings.simplefilter("error", RuntimeWarning)
        loaded.load_lora_adapter(str(tmp_path), weight_name=LORA_FILE, prefix="transformer", adapter_name="ard")
    assert adapted_names(loaded) == adapted_names(student.backbone)
    merged = copy.deepcopy(teacher.model)
    merged_state = merged_backbone_state(student.backbone)
    merged.load_state_dict({**merged.state_dict(), **merged_state})
    cond = make_condition(family, B)
    x = states_for(student)[:, 0]
    t = torch.full((B,), 0.6)
    with torch.no_grad():
        want, got = teacher.spec.denoise(merged, x, t, cond), teacher.spec.denoise(loaded, x, t, cond)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert (want - teacher(x, t, cond)).abs().max() > 1e-3  # the adapters change the network


def test_a_lora_checkpoint_is_refused_for_a_full_recipe_and_vice_versa(teacher):
    from ard_scale.checkpoint.student_meta import check_student_kind, student_architecture

    full = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=1), VPSchedule())
    lora, separate = lora_student(teacher), lora_student(teacher, share=False)
    check_student_kind(student_architecture(lora), separate, "ckpt")  # share_teacher moves memory only
    with pytest.raises(ValueError, match=r"holds a LoRA student \(rank=4.*builds a full student.*lora keys: .*rank"):
        check_student_kind(student_architecture(lora), full, "ckpt")
    with pytest.raises(ValueError, match="holds a full student, but this recipe builds a LoRA student"):
        check_student_kind(student_architecture(full), lora, "ckpt")
    with pytest.raises(ValueError, match="lora keys: rank. Use"):
        check_student_kind(student_architecture(lora), lora_student(teacher, rank=2), "ckpt")
