import pytest
import torch
from model_helpers import FAMILIES

from ard_scale.models.teachers import build_teacher


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
