"""Property-based fuzzing of the live API against its own OpenAPI document (schemathesis).

A real uvicorn process (embedded SQLite database and broker, no worker) is driven with requests that
schemathesis derives from ``/api/v1/openapi.json``, with a valid token. Every answer must be documented:
no 5xx, a documented status code, content type, headers and body schema. Bounded and derandomized, so
a run is repeatable and takes seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.worker.conftest import stack

EXAMPLES_PER_OPERATION = 20

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    failures: dict[str, str] = {}
    with stack("sqlite", tmp_path) as services:
        schema = schemathesis.openapi.from_url(f"{services.client.base_url}/api/v1/openapi.json")
        headers = {"Authorization": f"Bearer {services.token}"}
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10, [op.label for op in operations]
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def conforms(case: Any) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

            try:
                conforms()
            except (Exception, FailureGroup) as exc:  # one operation's failure must not hide another's
                failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert not failures, "\n\n".join(f"== {label}\n{text}" for label, text in failures.items())
