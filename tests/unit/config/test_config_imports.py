"""Checking a recipe (`python -m ard_scale.config`, `load_config` + `check_paths`, the teacher-fit check included) reads
the families' facts without importing diffusers, transformers or deepspeed (diffusers alone takes about 5 s to
import), and the families' model classes still resolve to diffusers' own on first use."""

import subprocess
import sys

from ard_scale.utils.launch import ROOT

CODE = """
import sys
from pathlib import Path
from ard_scale.config import ConfigError, load_config
from ard_scale.config.paths import check_paths
from ard_scale.models.families import FAMILIES, family_of_class

for recipe in sorted(Path("recipes").glob("*.yaml")):  # the tiny ones' paths are all here: the fit check runs too
    try:
        check_paths(load_config(recipe))
    except ConfigError:  # the real recipes' /models/... paths
        pass
print(sorted(FAMILIES), sorted(m for m in ("diffusers", "transformers", "deepspeed") if m in sys.modules))
import diffusers
print(all(family_of_class(f.model_class.__name__) is f and f.model_class is getattr(diffusers, f.model_class_name)
          for f in FAMILIES.values()))
"""


def test_checking_a_recipe_imports_no_model_library():
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    families_and_imported, classes_resolve = out.stdout.strip().splitlines()[-2:]
    assert families_and_imported == "['dit', 'flux', 'pixart', 'qwen_image', 'sd3'] []"
    assert classes_resolve == "True"
