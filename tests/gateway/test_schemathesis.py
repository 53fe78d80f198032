"""Property-based tests from our own OpenAPI document (schemathesis): valid and invalid requests for
every operation against the running gateway and control plane; no 5xx, and answers conform to the
document. Examples per operation are bounded to keep the suite fast (SCHEMATHESIS_EXAMPLES)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import hypothesis
import hypothesis.errors
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.control.env import ControlPlane, RunningGateway

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "10"))


def _fuzz(doc: dict[str, Any], base_url: str, key: str) -> list[str]:
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    session = requests.Session()
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    for result in schema.get_all_operations():
        if not hasattr(result, "ok"):
            failures.append(f"schema error: {result.err()}")
            continue
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run_operation(operation, mode, base_url, session, key, checks, failures)
    return failures


def _run_operation(  # noqa: PLR0917
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    key: str,
    checks: list[Any],
    failures: list[str],
) -> None:
    label = f"{operation.label} [{mode.value}]"

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers={"X-API-Key": key})
        try:
            case.validate_response(response, checks=checks)
        except Exception as exc:
            failures.append(f"{label} -> {response.status_code}: {exc}"[:2000])

    # Unsatisfiable: nothing to make invalid (GET /health takes no input).
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()


async def test_openapi_properties_hold(cp: ControlPlane, gw: RunningGateway) -> None:
    _, key = await cp.tenant("Fuzz", platform_admin=True)
    doc = await asyncio.to_thread(lambda: requests.get(f"{gw.url}/openapi.json", timeout=10).json())
    failures = await asyncio.to_thread(_fuzz, doc, gw.url, key)
    assert not failures, "\n\n".join(failures[:10])
