"""environment.yml (conda) and pyproject.toml (pip) must install the same packages with the same pins.

Python 3.10 has no tomllib, and the test must not add dependencies, so pyproject's two lists are read
with a small parser of their own; when ``tomli`` happens to be installed (jupyter pulls it in on 3.10)
the parser is checked against it. PyYAML is a dependency of jupyter (through jupyter-events).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
ENVIRONMENT = REPO / "environment.yml"


def _array(text: str, section: str, key: str) -> list[str]:
    """The strings of ``key = [ ... ]`` inside ``[section]`` of a TOML document.

    Scans character by character so that comments and brackets inside strings ("pkg[extra]") are
    handled; enough TOML for a requirements list, not a general parser.
    """
    match = re.search(rf"^\[{re.escape(section)}\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert match, f"pyproject.toml has no [{section}] table"
    body = match.group(1)
    opening = re.search(rf"^{re.escape(key)}\s*=\s*\[", body, re.M)
    assert opening, f"[{section}] has no {key} = [...]"
    items, i = [], opening.end()
    while True:
        ch = body[i]
        if ch in "\"'":
            close = body.index(ch, i + 1)
            items.append(body[i + 1:close])
            i = close + 1
        elif ch == "#":
            i = body.index("\n", i)
        elif ch == "]":
            return items
        else:
            i += 1


def pyproject_requirements() -> dict[str, list[str]]:
    text = PYPROJECT.read_text()
    return {
        "runtime": _array(text, "project", "dependencies"),
        "dev": _array(text, "project.optional-dependencies", "dev"),
        "requires-python": re.search(r'^requires-python\s*=\s*"([^"]+)"', text, re.M).group(1),
    }


def environment() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(ENVIRONMENT.read_text())


def normalise(requirement: str) -> str:
    """'Foo_Bar >= 1.0, <2' -> 'foo-bar>=1.0,<2' (PEP 503 name, no spaces)."""
    requirement = re.sub(r"\s+", "", requirement)
    name, rest = re.match(r"([A-Za-z0-9._-]+)(.*)", requirement).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + rest


def test_hand_parser_agrees_with_tomli_when_available():
    tomli = pytest.importorskip("tomli")
    data = tomli.loads(PYPROJECT.read_text())
    parsed = pyproject_requirements()
    assert parsed["runtime"] == data["project"]["dependencies"]
    assert parsed["dev"] == data["project"]["optional-dependencies"]["dev"]
    assert parsed["requires-python"] == data["project"]["requires-python"]


def test_parser_handles_comments_and_inline_arrays():
    text = ('[project]\nname = "x"\ndependencies = [\n  # why [not] "this"\n  "a==1",  # pinned ]\n'
            '  \'b[x]<2\',\n]\n[project.optional-dependencies]\ndev = ["c", "d>=3"]\n')
    assert _array(text, "project", "dependencies") == ["a==1", "b[x]<2"]
    assert _array(text, "project.optional-dependencies", "dev") == ["c", "d>=3"]


def test_environment_yml_lists_the_same_packages_and_pins_as_pyproject():
    env = environment()
    py = pyproject_requirements()
    assert env["name"] == "bertlib"
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert "pip" in conda and len(pip_lists) == 1
    pip = [r for r in pip_lists[0] if not r.startswith("-e")]  # the package itself, not a dependency
    expected = [normalise(r) for r in py["runtime"] + py["dev"]]
    got = [normalise(r) for r in pip]
    assert len(got) == len(set(got)), "duplicate entries in environment.yml"
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, f"only in pyproject: {missing}; only in environment.yml: {extra}"


def test_environment_python_matches_requires_python():
    env = environment()
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert pythons == ["python=3.10"]
    assert pyproject_requirements()["requires-python"] == ">=3.10,<3.11"


def test_oneflow_and_its_cuda_wheels_are_pinned_exactly():
    pins = {re.match(r"[a-z0-9-]+", normalise(r)).group(0): normalise(r)
            for r in pyproject_requirements()["runtime"]}
    assert pins["oneflow"] == "oneflow==0.9.0"
    assert pins["nvidia-cublas-cu11"] == "nvidia-cublas-cu11==11.10.3.66"
    assert pins["nvidia-cudnn-cu11"] == "nvidia-cudnn-cu11==8.5.0.96"
    assert pins["numpy"] == "numpy<2"   # OneFlow 0.9's core was compiled against NumPy 1.x
