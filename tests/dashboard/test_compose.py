"""``docker compose up`` without Docker: every service's exact command line from docker-compose.yml,
with the file's environment, .env.example's values and the Dockerfile's ENV, started as processes
against the local Redis and PostgreSQL (a fresh database) — then a comparison runs through them and
the dashboard shows it. So the compose file, the image and the code cannot drift apart.

Compose interpolation (``${VAR:-default}``, ``${VAR:?error}``, ``$$``) is applied as Compose does;
service host names (``postgres``, ``redis``, ``api``) become 127.0.0.1 and container paths a
temporary directory. Needs Redis and PostgreSQL: skips without them, fails when ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import streamlit as st
import yaml
from streamlit.testing.v1 import AppTest

from tests.backend.harness import (
    REPO_ROOT,
    ServiceProcess,
    cpu_smoke_overrides,
    free_port,
    redis_prefix,
    service_env,
    unavailable,
    wait_until,
)
from tests.dashboard.conftest import APP, FINISHED

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERFILE = REPO_ROOT / "Dockerfile"
STARTED = ("api", "worker", "dashboard")  # in depends_on order; redis and postgres are the local ones

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]+)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


# --- reading the files as Compose and Docker do ----------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (comments and blank lines ignored), as Compose reads ``.env``."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``$$`` -> ``$``; ``${VAR}``, ``$VAR``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        expression = match.group("braced") or match.group("plain")
        for operator in (":-", "-", ":?", "?"):
            name, found, argument = expression.partition(operator)
            if found:
                break
        else:
            name, operator, argument = expression, "", ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and operator.startswith(":"))
        if operator in (":-", "-") and (value is None if operator == "-" else unset_or_empty):
            return interpolate(argument, env)
        if operator in (":?", "?") and (value is None if operator == "?" else unset_or_empty):
            pytest.fail(f"docker-compose.yml needs {name}: {argument} (missing from .env.example?)")
        return value or ""

    return _VARIABLE.sub(replace, text)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], set[str], dict[str, list[str]]]:
    """The Dockerfile's ENV (as the images' environment), its ARG names and each stage's RUN commands
    (by the stage's ``AS`` name)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    args: set[str] = set()
    runs: dict[str, list[str]] = {}
    stage = ""
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else rest.strip()
            runs[stage] = []
        elif instruction == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(rest))
        elif instruction == "ARG":
            args.add(rest.split("=", 1)[0].strip())
        elif instruction == "RUN":
            runs[stage].append(rest.strip())
    return env, args, runs


def compose(env: dict[str, str]) -> dict[str, Any]:
    return resolve(yaml.safe_load(COMPOSE_FILE.read_text()), env)


def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


# --- the file's shape -----------------------------------------------------------------------------


def test_compose_file_has_the_services_healthchecks_volumes_and_gpu_workers() -> None:
    services = compose(example_env())["services"]
    assert {"redis", "postgres", "api", "worker", "dashboard"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
    volumes = compose(example_env())["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert {"postgres-data", "artifacts"} <= set(volumes)

    workers = {name: s for name, s in services.items() if name == "worker" or name.startswith("worker-")}
    gpus = []
    for name, service in workers.items():
        assert service["command"] == services["worker"]["command"], name
        assert "artifacts:/artifacts" in service["volumes"]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus += device["device_ids"]
    assert sorted(gpus, key=int) == [str(i) for i in range(len(workers))]  # one worker per GPU
    assert "profiles" not in services["worker"]  # GPU 0's worker starts by default


def test_the_dashboard_image_has_no_torch_and_the_api_runs_the_workers_image_without_a_gpu() -> None:
    """The dashboard installs the service extra (no torch); the workers and the API the engine
    image, torch with both extras, so that POST /fit predicts on the API's CPU (with the service
    image it would answer 503). The API reserves no GPU."""
    _, args, runs = dockerfile()
    services = compose(example_env())["services"]
    targets = {}
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert build["context"] == "."
            assert set(build.get("args", {})) <= args, f"{name} passes build args the Dockerfile lacks"
            assert service["image"].startswith("velora-bench:")
            targets[name] = build["target"]
    assert targets.pop("dashboard") == "service"
    assert set(targets.values()) == {"engine"}  # every worker, and the API
    assert (services["api"]["image"], services["api"]["build"]) == (
        services["worker"]["image"],
        services["worker"]["build"],
    )  # one image, defined once (x-engine-image)
    assert "deploy" not in services["api"]  # no GPU reservation: fit runs on the CPU
    assert runs["service"] == ['pip install "/app[service]"']  # no torch
    assert not any("torch" in run for run in runs["base"])
    torch_first, package = runs["engine"]
    assert torch_first.startswith('pip install "torch==${TORCH_VERSION}"')
    assert package == 'pip install "/app[service,engine]"'  # the API's FastAPI and uvicorn too
    assert ".venv" in (REPO_ROOT / ".dockerignore").read_text().split()


# --- the services, for real -----------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database on 127.0.0.1:5432 (user postgres), dropped afterwards."""
    import psycopg

    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
    name = f"vb_compose_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL on 127.0.0.1:5432 ({exc})")
    try:
        yield name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def host_env(
    service: dict[str, Any], services: dict[str, Any], image_env: dict[str, str], root: Path
) -> dict[str, str]:
    """The environment a container would have (image ENV, then the service's), with the other
    services' host names pointing at 127.0.0.1 and container paths under ``root``."""
    env = dict(image_env) | {key: str(value) for key, value in (service.get("environment") or {}).items()}
    for key, value in env.items():
        for host in services:  # ...@postgres:5432/..., redis://redis:6379/0, http://api:8000
            value = re.sub(rf"(@|//){re.escape(host)}(:\d+)", r"\g<1>127.0.0.1\g<2>", value)
        env[key] = f"{root}{value}" if value.startswith("/") else value
    return env


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    kind, *rest = service["healthcheck"]["test"]
    return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest


def local_argv(command: list[str]) -> list[str]:
    return ["127.0.0.1" if part == "0.0.0.0" else part for part in command]


class ComposeStack:
    def __init__(self, tmp: Path, database: str, prefix: str) -> None:
        self.ports = {"VELORA_API_PORT": str(free_port()), "VELORA_DASHBOARD_PORT": str(free_port())}
        # What a person puts in .env, for this machine: its PostgreSQL (trust auth), free ports.
        self.variables = (
            example_env()
            | self.ports
            | {
                "POSTGRES_USER": "postgres",
                "POSTGRES_PASSWORD": "unused-with-trust-auth",
                "POSTGRES_DB": database,
            }
        )
        self.services = compose(self.variables)["services"]
        image_env, _, _ = dockerfile()
        venv_bin = str(Path(sys.executable).parent)
        self.tmp, self.processes = tmp, []
        self.envs = {}
        for name in STARTED:
            env = service_env() | host_env(self.services[name], self.services, image_env, tmp / "container")
            env |= {
                "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
                "HOSTNAME": socket.gethostname(),  # what `%h` and $HOSTNAME are in a container
                "VELORA_REDIS_KEY_PREFIX": prefix,  # the only addition: isolation on the shared Redis
            }
            self.envs[name] = env

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['VELORA_API_PORT']}"

    def start(self, name: str) -> ServiceProcess:
        service = self.services[name]
        process = ServiceProcess(
            name, local_argv(service["command"]), self.envs[name], self.tmp / f"{name}.log"
        )
        self.processes.append(process)

        def healthy() -> bool:
            if not process.alive():
                pytest.fail(f"{name} exited:\n{process.log_tail()}")
            check = subprocess.run(
                healthcheck_argv(service), env=self.envs[name], cwd=REPO_ROOT, capture_output=True, timeout=60
            )
            return check.returncode == 0

        wait_until(
            healthy,
            timeout=120,
            interval=1.0,
            message=lambda: f"{name}'s healthcheck never passed:\n{self.logs()}",
        )
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(3000)}" for p in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=20)


@pytest.fixture
def compose_stack(tmp_path: Path) -> Iterator[ComposeStack]:
    with redis_prefix() as prefix, fresh_database() as database:
        stack = ComposeStack(tmp_path, database, prefix)
        try:
            for name in STARTED:
                stack.start(name)
            yield stack
        finally:
            stack.stop()


@pytest.mark.slow
def test_compose_services_run_a_comparison_and_the_dashboard_shows_it(
    compose_stack: ComposeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = compose_stack.variables["VELORA_API_TOKEN"]
    client = httpx.Client(
        base_url=f"{compose_stack.api_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    health = client.get("/health").json()
    assert health["status"] == "ok", health
    assert health["database"]["backend"] == "postgresql"
    assert health["broker"]["url"].startswith("redis://127.0.0.1:6379")
    assert [w["name"] for w in health["workers"]["list"]] == [f"gpu@{socket.gethostname()}"]

    # "Will it fit?" is answered by the API itself (its image has torch; it was a 503 on the service image).
    fit = {"model": "tiny", "methods": ["lora"], "micro_batch": 1, "seq_len": 16, "dtype": "fp32"}
    response = client.post("/fit", json=fit, timeout=120)
    assert response.status_code == 200, response.text
    assert [e["method"] for e in response.json()["estimates"]] == ["lora"]

    body = {"preset": "cpu-smoke", "overrides": cpu_smoke_overrides(methods=["full", "velora+lora"])}
    response = client.post("/comparisons", json=body)  # with the token from .env: it was provisioned
    assert response.status_code == 201, response.text
    comparison_id = response.json()["id"]

    def finished() -> dict[str, Any] | None:
        detail = client.get(f"/comparisons/{comparison_id}").json()
        return detail if all(run["status"] in FINISHED for run in detail["runs"]) else None

    detail = wait_until(
        finished,
        timeout=240,
        interval=1.0,
        message=lambda: f"the comparison did not finish:\n{compose_stack.logs()}",
    )
    assert detail["status_counts"] == {"completed": 3}, detail["runs"]  # the base run and two methods
    assert all(row["total_bytes"] and row["eval_metric"] == "mc_accuracy" for row in detail["summary"])
    artifacts = Path(detail["runs"][0]["artifact_path"])
    assert artifacts.is_relative_to(compose_stack.tmp / "container" / "artifacts")  # the artifacts volume

    # The dashboard, configured as its service is (API address and token), shows the comparison.
    for key in ("VELORA_API_URL", "VELORA_API_TOKEN"):
        monkeypatch.setenv(key, compose_stack.envs["dashboard"][key])
    st.cache_data.clear()
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["comparison"] = str(comparison_id)
    at.switch_page("views/compare.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert list(at.table[0].value["Method"]) == ["full", "velora+lora"]
    client.close()
