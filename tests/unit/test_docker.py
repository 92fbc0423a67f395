"""docker/Dockerfile installs exactly the project's pins (no Docker engine here, so the file itself is checked)."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[normalize(name)] = version
    return pins


def instructions() -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def pip_installs() -> list[list[str]]:
    """The argument lists of every `pip install` in a RUN instruction."""
    found = []
    for instruction in instructions():
        if not instruction.startswith("RUN "):
            continue
        for command in re.split(r"&&|;|\|\|", instruction[4:]):
            words = shlex.split(command)
            if "pip" in words and "install" in words:
                found.append(words[words.index("install") + 1 :])
    return found


def test_every_pip_install_uses_the_constraints_file_and_pins_exactly_its_versions():
    pins, installs = constraints(), pip_installs()
    assert installs, "the Dockerfile installs nothing with pip"
    for args in installs:
        assert "-c" in args and args[args.index("-c") + 1] == "constraints.txt", args
        skip_next = False
        for word in args:
            if skip_next or word.startswith("-"):
                skip_next = word in {"-c", "-r", "--constraint", "--requirement"}
                continue
            if word.startswith(".") or word.startswith("/"):  # the package itself: its deps follow -c
                continue
            assert "==" in word, f"{word!r} is installed unpinned; pin it as in constraints.txt"
            name, version = word.split("==")
            name = re.sub(r"\[.*\]$", "", name)
            assert pins.get(normalize(name)) == version, f"{word!r} differs from constraints.txt ({pins.get(name)})"


def test_the_base_image_carries_the_pinned_torch():
    base = next(i for i in instructions() if i.startswith("ARG BASE_IMAGE="))
    assert f"pytorch:{constraints()['torch']}-" in base, base


def test_the_entrypoint_is_the_training_launcher():
    entrypoint = next(i for i in instructions() if i.startswith("ENTRYPOINT"))
    assert "launchers/train.py" in entrypoint
    assert (ROOT / "launchers" / "train.py").is_file()
