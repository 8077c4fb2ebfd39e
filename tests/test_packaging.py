"""pyproject.toml declares version ranges; the exact tested set lives in constraints.txt, which make installs."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from conftest import REPO


def test_dependencies_are_ranges_and_the_pins_satisfy_them() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *(line for extra in project["optional-dependencies"].values() for line in extra)]
    requirements = [Requirement(line) for line in lines]
    assert not [str(r) for r in requirements if any(spec.operator in ("==", "===") for spec in r.specifier)]
    declared = {r.name: r.specifier for r in requirements}
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if line and not line.startswith("#"))
    assert {"torch", "torchvision", "lightning", "timm"} <= set(pins)
    for name, version in pins.items():
        assert declared[name].contains(version), f"constraints.txt pins {name}=={version}, outside pyproject's {declared[name]}"


def test_make_installs_the_pinned_set() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\):.*\bconstraints\.txt\b", makefile, re.M)  # a changed pin reinstalls
    assert "pip install --quiet -c constraints.txt -e '.[test]'" in makefile
