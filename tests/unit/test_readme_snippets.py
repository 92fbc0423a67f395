"""The Python snippets README.md gives a user to call an exported pipeline run as pasted: every name they use is
imported or assigned in the snippet itself (the walkthrough's own snippet also runs, in tests/e2e/test_walkthrough.py;
the others' paths are placeholders for a user's run, so they are checked for names, not run)."""

from __future__ import annotations

import ast
import builtins
import re

from ard_scale.utils.launch import ROOT

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def undefined_names(code: str) -> list[str]:
    """Names `code` reads at module level that it neither imports nor assigns (nor Python builtins)."""
    tree = ast.parse(code)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    loads = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return sorted({name for name in loads if name not in defined})


def test_a_snippet_that_uses_an_undefined_name_is_found():
    assert undefined_names("from x import y\nz = y(torch.zeros(1))\n") == ["torch"]


def test_every_pipeline_snippet_of_the_readme_defines_what_it_uses():
    snippets = [code for code in PYTHON_BLOCK.findall((ROOT / "README.md").read_text()) if "ARDPipeline" in code]
    assert len(snippets) >= 2  # the walkthrough's and "From a run to a pipeline you call with a prompt"
    for code in snippets:
        assert undefined_names(code) == [], code
