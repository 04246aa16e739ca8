"""The packaging files agree with each other."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name, where they differ


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower()


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    return {CONDA_NAMES.get(_name(r), _name(r)): r for r in requirements}


def conda_requirements() -> dict[str, str]:
    """Entries of the ``dependencies:`` list (two-space items), without python and pip."""
    names = {}
    section = None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if re.match(r"^\w", stripped):
            section = stripped.split(":", 1)[0]
        match = re.match(r"^  - (\S+)\s*$", stripped)
        if section == "dependencies" and match:
            names[_name(match.group(1))] = match.group(1)
    return {n: r for n, r in names.items() if n not in ("python", "pip", "pip:")}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    assert set(conda_requirements()) == set(pyproject_requirements())


def test_lower_bounds_agree():
    conda, pypi = conda_requirements(), pyproject_requirements()
    for name, requirement in pypi.items():
        bound = re.search(r">=\s*([\w.]+)", requirement)
        if bound:
            assert f">={bound.group(1)}" in conda[name], (name, requirement, conda[name])


def test_machine_pins_live_in_constraints_not_in_pyproject():
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==" in pins and "torchvision==" in pins
    assert "==" not in "".join(pyproject_requirements().values())


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make demo" in (ROOT / "README.md").read_text()
