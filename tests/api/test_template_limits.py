"""Hostile batch templates: each is refused with 422 naming the limit it broke, in the render
worker processes, and nothing is queued; a template is compiled once per batch."""

from __future__ import annotations

import io
from typing import Any

import msgspec
import pytest

from gateway.templates.limits import RenderLimits
from gateway.templates.protocol import HEADER, Rendered, RenderJob, TemplateSource
from gateway.templates.worker import Renderer
from tests.api.conftest import Api

HOSTILE = [
    # 10^10 loop iterations: only the CPU timer stops it.
    (
        "text",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "cpu_time",
    ),
    ("text", "{{ 'a' * 200000000 }}", "output_size"),
    ("html", "{{ 2 ** 100000000 }}", "output_size"),
    ("text", "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "output_size"),
    ("subject", "{{ 'a'.ljust(400000000) }}", "memory"),
]


@pytest.mark.parametrize(("field", "source", "limit"), HOSTILE)
def test_a_hostile_template_gets_422_naming_the_limit(
    idle_api: Api, field: str, source: str, limit: str
) -> None:
    body = {
        "from": "news@acme.test",
        "subject": "Hi",
        "text": "Hello",
        field: source,
        "recipients": [{"to": f"r{i}@example.org"} for i in range(3)],
    }
    with idle_api.client(key="sender") as client:
        response = client.post("/v1/messages/batch", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == "urn:gateway:problem:template-limit"
    assert problem["limit"] == limit
    assert problem["field"] == field
    assert limit in problem["detail"]
    assert idle_api.deliveries() == []


def _run(renderer: Renderer, job: RenderJob) -> list[Rendered]:
    out = io.BytesIO()
    renderer.run(job, out)  # type: ignore[arg-type]
    data, results = out.getvalue(), []
    while data:
        size = int.from_bytes(data[:HEADER], "big")
        results += msgspec.msgpack.decode(data[HEADER : HEADER + size], type=list[Rendered])
        data = data[HEADER + size :]
    return results


def test_templates_are_compiled_once_per_batch_not_per_recipient() -> None:
    renderer = Renderer(RenderLimits())
    templates = (
        TemplateSource("subject", "Hi {{ n }}"),
        TemplateSource("html", "<b>{{ n }}</b>", True),
    )
    variables: list[dict[str, Any]] = [{"n": i} for i in range(50)]
    first = _run(renderer, RenderJob(templates=templates, variables=variables[:25]))
    (compiled,) = renderer.compiled.values()
    second = _run(renderer, RenderJob(templates=templates, variables=variables[25:]))
    assert list(renderer.compiled.values()) == [compiled]
    assert [r.fields for r in first + second] == [
        {"subject": f"Hi {i}", "html": f"<b>{i}</b>"} for i in range(50)
    ]


def test_a_recipients_own_mistake_fails_only_that_recipient() -> None:
    renderer = Renderer(RenderLimits())
    job = RenderJob(
        templates=(TemplateSource("text", "{{ 10 // n }}"),),
        variables=[{"n": 5}, {"n": 0}, {"n": 2}],
    )
    results = _run(renderer, job)
    assert [r.fields for r in results] == [{"text": "2"}, None, {"text": "5"}]
    failure = results[1].failure
    assert (
        failure is not None and failure.kind == "render" and "ZeroDivisionError" in failure.detail
    )
