"""One event path: nothing but :func:`gateway.events.publish` writes events to the store, so
no consumer (sender webhooks, metrics, reputation, ``gateway_event`` plugins) can be bypassed."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from gateway.events import SCHEMA_VERSION, Event, EventKind
from gateway.ops.sender_webhooks import event_body

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {ROOT / "gateway" / "events.py"}
"""The one writer; the store engines define ``record_event`` and are not callers."""


def record_event_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "record_event"
    ]


def test_no_plugin_or_module_writes_events_around_publish() -> None:
    offenders = []
    for folder in ("plugins", "gateway"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in ALLOWED or path.parent == ROOT / "gateway" / "store":
                continue
            offenders += [f"{path.relative_to(ROOT)}:{n}" for n in record_event_calls(path)]
    assert offenders == [], "call gateway.events.publish, not store.record_event: " + ", ".join(
        offenders
    )


def test_the_meta_test_sees_a_direct_write(tmp_path: Path) -> None:
    sample = tmp_path / "sneaky.py"
    sample.write_text("async def f(gateway, e):\n    await gateway.store.record_event(e)\n")
    assert record_event_calls(sample) == [2]


def test_the_event_schema_is_documented_with_its_version() -> None:
    page = (ROOT / "docs" / "events.md").read_text()
    assert f"Schema version: {SCHEMA_VERSION}" in page
    for kind in EventKind.__args__:
        assert f"`{kind}`" in page, kind
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", page, re.M))
    body = event_body(Event(type="clicked", tenant="t", recipient="r@example.com", at=0.0))
    parsed = json.loads(body)
    assert {"type", "version", "id", "timestamp", "data"} <= documented
    for field in Event.__struct_fields__:
        assert field in documented, f"Event.{field} is not in docs/events.md"
    for field in parsed["data"]:
        assert field in documented, field
