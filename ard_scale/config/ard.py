"""The ARD student's own settings (DESIGN.md §1): a keyword-only dataclass the model receives as its sub-config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ard_scale.config.loader import Range
from ard_scale.errors import UserError

MaskKind = Literal["diagonal", "window", "first", "causal"]
MASK_KINDS: tuple[str, ...] = ("diagonal", "window", "first", "causal")
OutputKind = Literal["solver", "direct"]
OUTPUT_KINDS: tuple[str, ...] = ("solver", "direct")
AttentionKind = Literal["flex", "sdpa", "auto"]
ATTENTION_KINDS: tuple[str, ...] = ("flex", "sdpa", "auto")


@dataclass(kw_only=True)
class LoRAConfig:
    """A LoRA student (`rank` > 0): the backbone's base weights stay the teacher's, frozen; low-rank adapters on the
    target projections, the S heads (and any `train_also` parameters) train. With `share_teacher` the student and the
    teacher hold one copy of the base weights (ard_scale/models/lora.py)."""

    rank: int = 0
    """r of every adapter; 0 = no LoRA (the full student: every backbone weight trains)."""
    alpha: float | None = None
    """Adapter scale numerator (scale = alpha / rank); null = rank (scale 1)."""
    dropout: float = 0.0
    """Dropout on the adapters' input (training only)."""
    targets: list[str] | None = None
    """Module-name suffixes inside the transformer blocks that get adapters (e.g. attn.to_q, ff.net.2); null = the
    family's default (its attention and MLP projections)."""
    train_also: list[str] = field(default_factory=list)
    """Backbone parameter-name substrings that train in full as well (e.g. 'norm' for norms and modulation)."""
    share_teacher: bool = True
    """One copy of the base weights serves teacher and student (the teacher runs them without the adapters, as its
    own diffusers module); false = a separate teacher copy (same numbers, more memory)."""

    BOUNDS: ClassVar[dict[str, Range]] = {"rank": Range(0, 65536), "dropout": Range(0, 1, hi_open=True)}

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / max(self.rank, 1)

    def problems(self) -> list[str]:
        out = []
        if self.rank < 0:
            out.append(f"lora.rank: must be >= 0 (0 = no LoRA), got {self.rank}")
        if not 0 <= self.dropout < 1:
            out.append(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if self.targets is not None and not self.targets:
            out.append("lora.targets: an empty list adapts nothing; give module-name suffixes or null for the default")
        return out


@dataclass(kw_only=True)
class ARDConfig:
    """How the teacher's network becomes an autoregressive student."""

    num_steps: int = 4
    """S: student steps; the student sees S teacher states and predicts S next states in one forward pass."""
    num_causal_layers: int = 6
    """N: lowest blocks with the history mask; blocks above are block-diagonal. 0 = step distillation baseline."""
    mask: MaskKind = "causal"
    """History mask in the lowest N blocks: M1 'diagonal', M2 'window' (last `window` groups), M3 'first'
    (itself plus the x_{τ_S} group), M4 'causal' (itself and every earlier group; the paper's default)."""
    window: int = 2
    """W for mask='window': a group sees itself and the W-1 groups before it."""
    shared_head: bool = False
    """One output head for all steps instead of one per step (each initialised from the teacher's final layer)."""
    output: OutputKind = "solver"
    """'solver': heads predict the teacher's native target and the next state is one DDIM/Euler step;
    'direct': heads output the next state itself."""
    attention: AttentionKind = "auto"
    """Kernel of the history attention in the lowest N blocks: 'flex' (FlexAttention with a block-sparse mask: skips
    the blocks the mask rules out; CUDA for training, it has no backward on CPU), 'sdpa' (dense boolean mask, the
    reference) or 'auto' (flex on CUDA, sdpa elsewhere). The same numbers either way: not part of the config hash."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """A LoRA student sharing the teacher's frozen weights (rank 0 = off; see LoRAConfig)."""

    # read by the recipe loader (problems() below also serves models built from code)
    BOUNDS: ClassVar[dict[str, Range]] = {
        "num_steps": Range(1, 1000),
        "num_causal_layers": Range(0, 1000),
        "window": Range(1, 1000),
    }

    def __post_init__(self):
        if isinstance(self.lora, dict):  # from an export's ard_config.json
            self.lora = LoRAConfig(**self.lora)

    def problems(self) -> list[str]:
        """Every inconsistency in this section, as 'key: what is wrong (valid choices)' lines."""
        out = list(self.lora.problems())
        if self.num_steps < 1:
            out.append(f"num_steps: must be >= 1, got {self.num_steps}")
        if self.num_causal_layers < 0:
            out.append(f"num_causal_layers: must be >= 0, got {self.num_causal_layers}")
        if self.mask not in MASK_KINDS:
            out.append(f"mask: unknown {self.mask!r} (choose one of {', '.join(MASK_KINDS)})")
        if self.window < 1:
            out.append(f"window: must be >= 1 (a group always sees itself), got {self.window}")
        if self.attention not in ATTENTION_KINDS:
            out.append(f"attention: unknown {self.attention!r} (choose one of {', '.join(ATTENTION_KINDS)})")
        if self.output not in OUTPUT_KINDS:
            out.append(f"output: unknown {self.output!r} (choose one of {', '.join(OUTPUT_KINDS)})")
        return out

    def depth_problem(self, depth: int) -> str | None:
        """What is wrong with num_causal_layers for a teacher of `depth` blocks, None if nothing."""
        if self.num_causal_layers <= depth:
            return None
        return (
            f"num_causal_layers: N={self.num_causal_layers} is larger than the teacher's depth ({depth} blocks); "
            f"use 0 <= N <= {depth}"
        )

    def validate(self, *, depth: int | None = None) -> None:
        problems = self.problems()
        if depth is not None and self.depth_problem(depth) is not None:
            problems.append(self.depth_problem(depth))
        if problems:
            raise UserError("invalid ARD settings:\n  " + "\n  ".join(problems), every_rank=True)
