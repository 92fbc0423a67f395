"""The family plug-in contract: every registered family is complete, and nothing outside
`ard_scale/models/families/` branches on a family's name (DESIGN.md §2)."""

import ast
from pathlib import Path

import pytest

from ard_scale.models.families import FAMILIES, family_of_class, get_family
from ard_scale.models.teachers import build_teacher

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_complete_and_its_debug_size_builds(name):
    spec = get_family(name)
    assert spec.name == name and family_of_class(spec.model_class.__name__) is spec
    assert spec.condition_kind in ("labels", "text") and "debug" in spec.sizes
    teacher = build_teacher(name, "debug")
    assert teacher.spec is spec and teacher.depth == len(spec.blocks(teacher.model)) > 0
    assert (teacher.text_dim is None) == (spec.condition_kind == "labels")


def _name_comparisons(path: Path) -> list[str]:
    """`x == 'flux'`, `x != "dit"`, `x in ("dit", ...)` and `match`-free equivalents against a family name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            consts = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            for c in consts:
                if isinstance(c, ast.Constant) and c.value in FAMILIES:
                    found.append(f"{path}:{node.lineno} compares with {c.value!r}")
    return found


def test_no_code_outside_the_families_branches_on_a_family_name(tmp_path):
    files = [p for d in ("ard_scale", "launchers", "bench") for p in (ROOT / d).rglob("*.py")]
    families_dir = ROOT / "ard_scale" / "models" / "families"
    offenders = [hit for p in files if families_dir not in p.parents for hit in _name_comparisons(p)]
    assert offenders == []
    # the scan can fail: a planted branch of each kind is found
    planted = tmp_path / "planted.py"
    planted.write_text("if family == 'flux':\n    pass\nif 'dit' != name or kind in ('pixart', 'x'):\n    pass\n")
    assert len(_name_comparisons(planted)) == 3


def test_model_code_never_imports_deepspeed_or_torch_distributed():
    for p in (ROOT / "ard_scale" / "models").rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert not n.startswith(("deepspeed", "torch.distributed")), f"{p}: imports {n}"


def test_the_registry_refuses_a_family_that_leaves_an_encoders_pipeline_folder_unnamed():
    from ard_scale.models.families import Family, register

    toy = type("ToyFamily", (Family,), {"name": "toy", "text_encoders": ("t5", "clip"), "encoder_folders": {"t5": "x"}})
    with pytest.raises(TypeError, match="family 'toy': encoder_folders must name the pipeline folder of every"):
        register(toy)
    assert "toy" not in FAMILIES
    for family in FAMILIES.values():  # and every registered one names them all
        assert set(family.encoder_folders) == set(family.text_encoders), family.name
