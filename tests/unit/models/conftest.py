import pytest
import torch

from ard_scale.models.condition import Condition
from ard_scale.models.teachers import build_teacher

FAMILIES = ("dit", "pixart")


def make_condition(family: str, batch: int, seed: int = 0) -> Condition:
    g = torch.Generator().manual_seed(seed)
    if family == "dit":
        return Condition(labels=torch.randint(0, 10, (batch,), generator=g))
    mask = torch.ones(batch, 6, dtype=torch.long)
    mask[0, 4:] = 0  # padded caption: the mask must be honoured
    return Condition(text=torch.randn(batch, 6, 24, generator=g), text_mask=mask)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def teacher(family):
    t = build_teacher(family, "debug", seed=1)
    # Perturb every weight so that no gate or head sits near zero (DiT-style inits zero them) and each
    # block really changes its input and the invariants are not satisfied trivially.
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return t
