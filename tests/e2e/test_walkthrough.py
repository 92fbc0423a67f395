"""The README's "Distil your own text-to-image teacher" walkthrough, run as written: its fenced commands, recipe and
Python are read out of README.md and run in order (`my_t2i` moved to a temporary folder), so the README cannot
drift from what works. Debug sizes, 2 ranks (real DeepSpeed ZeRO-3 on gloo).

The GAN stage there runs on the defaults (only the warm-up shortened): the regression loss 30 GAN steps after the
GAN term switched on must stay under 2× its value then, and the divergence watchdog must stay quiet."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ard_scale.utils.launch import ROOT, launch_env

README = ROOT / "README.md"
SECTION = "## Distil your own text-to-image teacher"
PLACEHOLDER = re.compile(r"\bmy_t2i\b")  # the walkthrough's folder, moved to a temporary one


def section_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block between SECTION and the next heading, in order."""
    start = text.index(SECTION) + len(SECTION)
    blocks, lang, body = [], None, []
    for line in text[start:].splitlines():
        if lang is None:
            if line.startswith("#"):
                break  # the next heading ends the walkthrough
            if line.startswith("```"):
                lang, body = line[3:].strip(), []
        elif line.startswith("```"):
            blocks.append((lang, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    assert lang is None, "an unclosed fenced block in the walkthrough"
    return blocks


def commands(bash: str) -> list[str]:
    """The commands of a bash block: `\\` continuations joined, comments and blank lines dropped."""
    return [c.strip() for c in bash.replace("\\\n", " ").splitlines() if c.strip() and not c.strip().startswith("#")]


def test_the_walkthrough_has_every_stage_in_order():
    blocks = section_blocks(README.read_text())
    text = "\n".join(body for _, body in blocks)
    stages = [
        "ard_scale.assets", "build_shards.py", "my_t2i/recipe.yaml", "ard_scale.plan", "precompute_text.py",
        "launchers/train.py", "gan.enabled=true", "export.py", "sample.py", "--prompt", "ARDPipeline.from_pretrained",
    ]  # fmt: skip
    positions = [text.find(stage) for stage in stages]
    assert -1 not in positions, dict(zip(stages, positions, strict=True))
    assert positions == sorted(positions), dict(zip(stages, positions, strict=True))
    assert [lang for lang, _ in blocks].count("yaml") == 1 and blocks[-1][0] == "python"


def test_no_readme_link_points_outside_the_repository():
    for readme in (README, ROOT / "docker" / "README.md"):
        text = readme.read_text()
        for target in re.findall(r"\]\(([^)\s]+)", text):
            path = target.split("#")[0]
            assert path == "" or (readme.parent / path).resolve().is_relative_to(ROOT), (readme, target)
            assert path == "" or (readme.parent / path).exists(), (readme, target)
        assert not re.search(r"(?<![\w.])/work/", text), f"{readme} names a path of this machine"


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Runs every block; returns the folder and {command: CompletedProcess}."""
    tmp = tmp_path_factory.mktemp("walk")
    env = launch_env()  # the worktree's package first on PYTHONPATH, this venv's python/torchrun first on PATH
    done: dict[str, subprocess.CompletedProcess] = {}
    for lang, body in section_blocks(README.read_text()):
        body = PLACEHOLDER.sub(str(tmp), body)
        if lang == "yaml":
            target, _, rest = body.partition("\n")
            assert target.startswith("# "), f"a recipe block starts with '# PATH', not {target!r}"
            Path(target[2:].strip()).write_text(rest)
            continue
        if lang == "python":
            runs = [[sys.executable, "-c", body]]
        else:
            assert lang == "bash", lang
            runs = [["bash", "-e", "-o", "pipefail", "-c", command] for command in commands(body)]
        for argv in runs:
            proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, (
                f"{argv[-1]}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
            done[argv[-1]] = proc
    return tmp, done


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.distributed
def test_the_walkthrough_runs_and_writes_what_it_says(walkthrough):
    tmp, done = walkthrough
    assert {"t5", "vae", "pixart", "images"} <= {p.name for p in tmp.iterdir()}
    recipe = yaml.safe_load((tmp / "recipe.yaml").read_text())
    regression = metrics(tmp / "run")
    assert len(regression) == recipe["train"]["max_steps"] and regression[-1]["loss"] < 0.5 * regression[0]["loss"]
    plan = next(proc.stdout for command, proc in done.items() if "ard_scale.plan" in command)
    assert "peak" in plan and "fits" in plan
    index = json.loads((tmp / "pipeline" / "model_index.json").read_text())
    assert {"transformer", "text_encoder", "vae", "scheduler"} <= index.keys()
    from PIL import Image

    assert {p.name for p in (tmp / "samples").iterdir()} >= {"sample_000.png", "sample_001.png", "grid.png"}
    assert Image.open(tmp / "seven.png").size == (32, 32)


@pytest.mark.slow
@pytest.mark.distributed
def test_the_gan_stage_on_the_defaults_keeps_the_regression_loss(walkthrough):
    tmp, done = walkthrough
    gan = next(proc for command, proc in done.items() if "gan.enabled=true" in command)
    logged = metrics(tmp / "run_gan")
    start = next(i for i, m in enumerate(logged) if m["gan_weight"] > 0)  # the GAN term's first step
    assert start == 5 and len(logged) >= start + 31
    ratio = logged[start + 30]["loss"] / logged[start]["loss"]  # after 30 GAN updates
    print(f"regression loss after 30 GAN steps / when the GAN term switched on: {ratio:.3f}")
    assert ratio < 2.0, [round(m["loss"], 4) for m in logged]
    assert "pulling the student off its teacher" not in gan.stderr + gan.stdout  # the watchdog stays quiet
