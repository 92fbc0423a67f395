"""The LoRA student: one copy of the teacher's weights serves teacher and student.

An ARD student differs from its teacher by weight-free structure (the history mask, the per-group time
embedding) and S heads. A LoRA student keeps the backbone's base weights the teacher's, frozen, adds low-rank
adapters (peft) on the blocks' projections, and trains the adapters and the heads (and any `train_also` parameters).

With `share_teacher` the base weights exist once: the student's backbone is a structural copy of the teacher's
module whose parameters *are* the teacher's `Parameter` objects (a deep copy with the teacher's tensors in its
memo); the adapters wrap those layers in the backbone only, and `train_also` parameters become the backbone's
own copies. The teacher role is the teacher's own, unmodified diffusers module — no adapter toggling, no prepared
attention processors, its own final layer — so its output is the plain teacher's bit for bit, whatever the
student has learned. The student registers the teacher module as a
submodule (`ARDStudent.teacher_model`), so a ZeRO-3 engine partitions every shared parameter once and fetches it
for either role through the same hooks.

The student's `state_dict` holds its trainable parameters only (`trainable_state_only`): checkpoints, EMA and
exports of the trainable state never carry the 12B frozen base, which is rebuilt from the recipe's teacher.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ard_scale.config.ard import LoRAConfig
from ard_scale.errors import UserError

ADAPTER = "default"  # peft's adapter name; exports use diffusers' key layout without it


def target_names(blocks: Iterable[tuple[str, nn.Module]], suffixes: Iterable[str]) -> list[str]:
    """Full names (relative to the backbone) of the nn.Linear modules inside `blocks` ((prefix, block) pairs) whose
    name within the block is one of `suffixes` or ends with '.' + one of them."""
    suffixes = tuple(suffixes)
    out = []
    for prefix, block in blocks:
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes):
                out.append(f"{prefix}.{name}")
    return out


def add_adapters(
    backbone: nn.Module, cfg: LoRAConfig, names: list[str], frozen: Iterable[nn.Parameter] | None = None
) -> None:
    """LoRA adapters (A random, B zero: the student starts as the full-copy student) on the Linear modules `names`
    of `backbone`, in place. Everything else in the backbone is frozen except parameters whose name contains a
    `cfg.train_also` substring; those of them that are among `frozen` (the shared teacher's own parameters) are
    replaced by trainable copies (`untie_trained`)."""
    from peft import LoraConfig, inject_adapter_in_model

    if not names:
        raise UserError(
            f"student.lora.targets {cfg.targets!r} match no Linear layer in the teacher's blocks; give suffixes of "
            "module names inside a block (e.g. attn.to_q, ff.net.2) or null for the family's default"
        )
    layers = dict(backbone.named_modules())
    full = [n for n in names if cfg.rank >= min(layers[n].in_features, layers[n].out_features)]
    if full:
        warnings.warn(
            f"student.lora.rank={cfg.rank} is at least the width of {len(full)} of the {len(names)} adapted layers "
            f"(e.g. {full[0]}: {layers[full[0]].in_features} -> {layers[full[0]].out_features}): there an adapter "
            "holds more numbers than the layer and can express nothing more. Lower student.lora.rank, or train a "
            "full student (student.lora.rank=0)",
            stacklevel=2,
        )
    config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
        lora_dropout=cfg.dropout,
        target_modules=names,
        init_lora_weights=True,
    )
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
    for name, p in backbone.named_parameters():
        p.requires_grad_(".lora_" in name or any(s in name for s in cfg.train_also))
    untie_trained(backbone, frozen or ())


def untie_trained(backbone: nn.Module, frozen: Iterable[nn.Parameter]) -> None:
    """Give `backbone` its own copy of every trainable parameter that is one of the `frozen` ones (the shared
    teacher's: `train_also` matches some of them), and freeze the originals again: training them would change the
    teacher role too, which must stay the plain teacher. Parameters tied within the backbone stay tied."""
    frozen_ids = {id(p) for p in frozen}
    copies: dict[int, nn.Parameter] = {}
    for module in backbone.modules():
        for key, p in list(module._parameters.items()):
            if p is None or not p.requires_grad or id(p) not in frozen_ids:
                continue
            if id(p) not in copies:
                copies[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=True)
            module._parameters[key] = copies[id(p)]
    for p in frozen:
        if id(p) in copies:
            p.requires_grad_(False)


def is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def trainable_state_only(student: nn.Module) -> None:
    """Make `student.state_dict()` hold its trainable parameters only, and `load_state_dict` accept exactly those
    (a missing trainable key stays an error; frozen ones are rebuilt from the recipe's teacher)."""

    def trainable() -> set[str]:
        return {n for n, p in student.named_parameters(remove_duplicate=False) if p.requires_grad}

    def drop_frozen(module, state, prefix, local_metadata):
        keep = {prefix + n for n in trainable()}
        for key in [k for k in state if k.startswith(prefix) and k not in keep]:
            del state[key]
        return state

    def allow_frozen_missing(module, incompatible):
        keep = trainable()
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k in keep]

    student._register_state_dict_hook(drop_frozen)
    student.register_load_state_dict_post_hook(allow_frozen_missing)


@torch.no_grad()
def merged_backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights with every adapter merged in (W + scale·B·A), keyed as the plain diffusers module
    (no `base_layer.`, no adapter keys). The backbone itself is left unchanged."""
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in backbone.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            delta = module.get_delta_weight(ADAPTER)
            merged[f"{name}.weight"] = (base.weight + delta.to(base.weight.dtype)).detach().clone()
    out = {}
    for key, value in backbone.state_dict().items():
        if is_adapter_key(key):
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, value)
    return out


def adapter_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights in diffusers' LoRA layout (`<module>.lora_A.weight`, no adapter name)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(backbone, adapter_name=ADAPTER)
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def adapted_names(model: nn.Module) -> list[str]:
    """Full names of the modules of `model` that carry LoRA adapters."""
    from peft.tuners.lora import LoraLayer

    return sorted(name for name, module in model.named_modules() if isinstance(module, LoraLayer))


def adapter_config(backbone: nn.Module) -> dict:
    """The adapters' peft LoraConfig as a JSON-able dict (diffusers' `lora_adapter_metadata` layout).

    Its `target_modules` are the adapted layers' full names. peft keeps the shortest name suffixes that single them
    out in the student's backbone, which has no final layer of its own (the heads replace it): there `proj_out` names
    the single-stream blocks' projections only, but in the plain teacher it names the final layer too, and
    `load_lora_adapter` warns that the config names a target the file has no weights for."""
    config = backbone.peft_config[ADAPTER].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    config["target_modules"] = adapted_names(backbone)
    return config
