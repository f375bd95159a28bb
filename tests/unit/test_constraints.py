"""constraints.txt: a fresh machine installs the versions the suite last passed on.

`make run`, `make test` and the container image install with the pins, so every
package pyproject.toml asks for must be pinned, and pinned inside the range
pyproject.toml gives it (a pin outside it makes pip refuse the install).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, equals, version = line.partition("==")
        assert equals, f"not an exact pin: {line!r}"
        found[canonicalize_name(name)] = Version(version)
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        listed.extend(extra)
    return [Requirement(text) for text in listed]


@pytest.mark.parametrize("requirement", requirements(), ids=str)
def test_every_dependency_is_pinned_inside_its_range(requirement: Requirement) -> None:
    pinned = pins().get(canonicalize_name(requirement.name))
    assert pinned is not None, f"{requirement.name} has no pin in constraints.txt"
    assert requirement.specifier.contains(pinned, prereleases=True), (
        f"{requirement.name}=={pinned} is outside {requirement.specifier}"
    )


def test_every_install_of_the_project_reads_the_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"^\t(\S+) -m pip install [^\n]*-e '\.\[dev\]'", makefile, re.M)
    pinned = re.findall(r"pip install [^\n]*-c constraints.txt -e '\.\[dev\]'", makefile)
    # The stamp's install pins; `make lock` alone installs unpinned, in a venv of its
    # own, to write new pins.
    assert pinned and set(installs) == {"$(BIN)/python", "$(LOCK_VENV)/bin/python"}
    assert makefile.count("$(BIN)/python -m pip install --quiet -e") == 0
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -c constraints.txt ." in dockerfile
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()
