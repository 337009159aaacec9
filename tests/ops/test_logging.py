"""Structured logs: JSON and logfmt lines, message and delivery ids on every delivery line,
never a message body or a credential."""

from __future__ import annotations

import io
import json
import logging
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ops import logging as ops_logging
from gateway.ops.logging import configure_logging, redact
from tests.conftest import Sink, make_config, wait_until
from tests.ops.conftest import ADMIN_KEY, OPS_CONFIG, ops_config_args


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    ops_logging._installed = None


@pytest.mark.parametrize("log_format", ["json", "logfmt"])
def test_delivery_lines_name_message_and_delivery_and_never_the_body(
    tmp_path: Path, sink: Sink, gateway_factory, captured: io.StringIO, log_format: str
) -> None:
    configure_logging("info", log_format, captured)  # type: ignore[arg-type]
    gateway = gateway_factory(make_config(tmp_path, OPS_CONFIG, **ops_config_args(sink.port)))
    sink.script("later@example.org", "RCPT", ["451 4.3.0 try later"])
    body_marker = "Confidential-body-3b9f"
    with smtplib.SMTP("127.0.0.1", gateway.port("dev"), timeout=20) as client:
        client.sendmail(
            "app@acme.test",
            ["ann@example.org", "later@example.org"],
            f"From: app@acme.test\r\nSubject: s\r\n\r\n{body_marker}\r\n",
        )
    wait_until(lambda: captured.getvalue().count("delivery status=") >= 2, 20, "two outcomes")
    text = captured.getvalue()
    assert body_marker not in text and ADMIN_KEY not in text
    lines = [line for line in text.splitlines() if line]
    if log_format == "json":
        records = [json.loads(line) for line in lines]
    else:
        records = [dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)) for line in lines]
    delivery_lines = [r for r in records if r["logger"] == "gateway.delivery"]
    assert len(delivery_lines) >= 2
    for record in delivery_lines:
        assert record["message_id"] and str(record["delivery_id"]).isdigit(), record
    statuses = {re.search(r"status=(\w+)", r["msg"]).group(1) for r in delivery_lines}  # type: ignore[union-attr]
    assert statuses == {"delivered", "deferred"}


def test_credentials_are_redacted() -> None:
    assert redact("Authorization: Bearer gwk_abc.def") == "Authorization: Bearer [redacted]"
    assert redact("password=hunter2 user=bob") == "password=[redacted] user=bob"
    assert redact("secret whsec_AAAA== in a message") == "secret whsec_[redacted] in a message"
    assert redact("key gwk_Zm9vYmFy used") == "key gwk_[redacted] used"
    assert redact("delivered to ann@example.org") == "delivered to ann@example.org"
