"""The install extras match the deployment (pyproject.toml): ``.[service]`` (API and dashboard) pulls in
no torch, not even through a dependency of a dependency; ``.[engine]`` has what the worker imports;
``.[dev]`` is both. Resolved through the metadata of the packages installed here (no new virtual
environment): each requirement's installed distribution, its own requirements whose markers hold
(with the extras asked for), and so on down.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
OWN_PACKAGES = {"backend", "dashboard", "worker", "velora_core", "tests"}
MODEL_PACKAGES = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "galore-torch"}


def requirements(extra: str | None) -> list[Requirement]:
    """The project's own requirements: the base list, plus one extra's."""
    listed = PROJECT["dependencies"] + (PROJECT["optional-dependencies"][extra] if extra else [])
    return [Requirement(text) for text in listed]


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, transitively (canonical names)."""
    seen: dict[str, set[str]] = {}  # name -> extras already followed
    pending = [(req, "") for req in roots]
    while pending:
        req, parent_extra = pending.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(req.name)
        if name == canonicalize_name(PROJECT["name"]):  # the project itself: `velora-bench[service,engine]`
            pending += [(r, "") for extra in sorted(req.extras) for r in requirements(extra)]
            continue
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} (required through {req}) is not installed")
        for text in dist.requires or []:
            for extra in ["", *sorted(extras)]:
                pending.append((Requirement(text), extra))
    return set(seen)


def imported_distributions(*paths: str) -> set[str]:
    """The installed distributions whose modules the code under ``paths`` imports (every ``import``
    statement, at the top or in a function; the standard library and the project left out)."""
    owners = packages_distributions()
    found = set()
    for path in paths:
        root = REPO_ROOT / path
        for file in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.partition(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.partition(".")[0])
    found -= sys.stdlib_module_names | OWN_PACKAGES | {"__future__"}
    missing = sorted(module for module in found if module not in owners)
    assert not missing, f"imported but not installed: {missing}"
    return {canonicalize_name(dist) for module in found for dist in owners[module]}


def modules_loaded_by_importing(*modules: str) -> set[str]:
    """The top-level modules a fresh interpreter loads to import ``modules``."""
    code = (
        f"import importlib, sys\nfor m in {list(modules)!r}: importlib.import_module(m)\nprint(*sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=300
    )
    return {name.partition(".")[0] for name in out.stdout.split()}


def test_the_service_extra_pulls_in_no_model_package() -> None:
    service = closure(requirements("service"))
    assert {"fastapi", "streamlit", "celery", "sqlalchemy"} <= service
    assert not (service & MODEL_PACKAGES), sorted(service & MODEL_PACKAGES)


def test_the_base_install_is_the_torch_free_contract() -> None:
    assert {canonicalize_name(r.name) for r in requirements(None)} == {"pydantic", "pyyaml", "google-re2"}
    assert imported_distributions("velora_core/contract") <= closure(requirements(None))


def test_the_engine_extra_has_the_model_packages_and_what_the_worker_imports() -> None:
    engine = closure(requirements("engine"))
    assert engine >= MODEL_PACKAGES
    # lm-evaluation-harness is the `eval` extra: imported only when a spec names eval.harness_tasks.
    optional = {canonicalize_name(r.name) for r in requirements("eval")}
    assert imported_distributions("worker", "velora_core") - optional <= engine


def test_the_api_and_the_dashboard_import_only_what_the_service_extra_installs() -> None:
    service = ["backend", "dashboard", "velora_core/contract", "velora_core/cli"]
    assert imported_distributions(*service) <= closure(requirements("service"))
    loaded = modules_loaded_by_importing(
        "backend.api.main", "backend.cli", "dashboard.api", "dashboard.charts"
    )
    assert not loaded & {"torch", "transformers", "peft"}


def test_dev_is_everything_plus_the_tools() -> None:
    dev = closure(requirements("dev"))
    assert closure(requirements("service")) | closure(requirements("engine")) <= dev
    assert {"pytest", "ruff", "mypy"} <= dev
