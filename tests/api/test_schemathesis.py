"""Property-based requests generated from the served OpenAPI document (schemathesis): whatever
the input, the API never answers with a server error (5xx), and the schemathesis CLI with every
check finds the API and its document in agreement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.api.conftest import KEYS, Api

EXAMPLES = 12


def test_no_generated_request_causes_a_server_error(idle_api: Api) -> None:
    document = httpx.get(f"{idle_api.url}/docs/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {KEYS[('acme', 'admin')][0]}"}
    tested = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            # Derandomized: CI sees the same examples every run; explore with a larger
            # EXAMPLES (120 ran clean) rather than by chance in CI.
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                case.call_and_validate(
                    base_url=idle_api.url,
                    session=session,
                    headers=headers,
                    checks=[not_a_server_error],
                )

            check()
            tested.append(operation.label)
    assert len(tested) == 22, tested


def test_the_served_schema_is_the_contract_schemathesis_checks_all(
    idle_api: Api, tmp_path: Path
) -> None:
    """``st run --checks all`` (status codes, headers, content types, response schemas,
    ``Allow``, auth, stateful links) finds nothing; the data-acceptance checks are left out
    until the schema carries every semantic rule. The key is
    globex's admin key: globex lists no sending domains, so any schema-valid sender is one."""
    key = KEYS[("globex", "admin")][0]
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{idle_api.url}/docs/openapi.json",
            "--checks",
            "all",
            # Not yet exact (docs/api.md, "OpenAPI"): semantic rules a JSON Schema cannot carry
            # (reserved header names, send_at at most 30 days ahead, RFC 3339 corner cases).
            "--exclude-checks",
            "positive_data_acceptance,negative_data_rejection,missing_required_header",
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            "10",
            "--seed",
            "20",
            "--workers",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=540,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
        cwd=tmp_path,  # its cache directory lands here, not in the checkout
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout or " passed" in run.stdout, run.stdout[-3000:]
