"""The package imports only what `pip install tragwerk` installs.

The test environment also has the `[test]` extras (httpx among them), so an import of
one of those in src/ passes every other test and fails only for a user: the alert
notifier once imported httpx, and `tragwerk up` from a plain install crashed.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def runtime_distributions() -> set[str]:
    """tragwerk's runtime requirements and everything they require, by name."""
    wanted = [
        Requirement(r).name.lower()
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name.lower())
    return {name.replace("_", "-") for name in seen}


def test_src_imports_only_runtime_dependencies() -> None:
    allowed = runtime_distributions()
    owners = packages_distributions()
    missing: dict[str, str] = {}
    for path in (ROOT / "src" / "tragwerk").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "tragwerk" or top in sys.stdlib_module_names:
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [])}
                if not dists:
                    pytest.fail(f"{path}: {top} belongs to no installed distribution")
                if not dists & allowed:
                    missing[f"{path.relative_to(ROOT)}: {name}"] = ", ".join(sorted(dists))
    assert missing == {}, "imports of packages tragwerk does not depend on"
