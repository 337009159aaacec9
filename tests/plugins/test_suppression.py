"""plugins/suppression.py: a suppressed recipient is skipped at delivery time with its reason,
over SMTP and HTTP alike, while the other recipients reach the real sink."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from gateway.clock import FakeClock
from gateway.config import ConfigError
from gateway.message import DeliveryStatus
from gateway.server import Gateway
from gateway.store.base import DeliveryFilter, Suppression, suppression_key
from tests.api.conftest import Api, api_config
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config

RELAY = (
    RELAY_TO_SINK
    + """{extra}
"""
)

BODY = b"From: app@example.com\r\nSubject: News\r\n\r\nHello\r\n"


def suppress(gw: GatewayThread, tenant: str, entries: dict[str, str]) -> None:
    now = gw.gateway.clock.now()
    gw.call(
        gw.gateway.store.add_suppressions(
            [
                Suppression(tenant=tenant, address=address, reason=reason, created_at=now)  # type: ignore[arg-type]
                for address, reason in entries.items()
            ]
        )
    )


def statuses(gw: GatewayThread) -> dict[str, tuple[DeliveryStatus, str]]:
    deliveries = gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))
    return {d.recipient: (d.status, d.last_error) for d in deliveries}


def test_the_key_folds_case_and_whitespace() -> None:
    assert suppression_key("  Ann.Lee@Example.ORG \t") == "ann.lee@example.org"


def test_smtp_mail_to_suppressed_recipients_is_skipped_with_the_reason(
    tmp_path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> None:
    config = make_config(tmp_path, RELAY, port=sink.port, extra="")
    gw = gateway_factory(config, clock=FakeClock(), deliver=False)
    assert "suppression" in dict(gw.gateway.pm.list_name_plugin()), "on by default"
    # Stored in another spelling than the one the application uses later.
    suppress(
        gw,
        "default",
        {
            " Quit@Example.ORG": "unsubscribe",
            "bounced@example.org": "bounce",
            "angry@example.org": "complaint",
            "blocked@example.org": "manual",
        },
    )
    suppress(gw, "other-tenant", {"ok@example.org": "manual"})
    recipients = [
        "quit@example.org",
        "BOUNCED@example.org",
        "angry@EXAMPLE.org",
        "blocked@example.org",
        "ok@example.org",
    ]
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("app@example.com", recipients, BODY)
    assert gw.call(gw.gateway.dispatcher.run_once()) == 5
    assert statuses(gw) == {
        "quit@example.org": (DeliveryStatus.SKIPPED, "unsubscribed"),
        "BOUNCED@example.org": (DeliveryStatus.SKIPPED, "bounced"),
        "angry@EXAMPLE.org": (DeliveryStatus.SKIPPED, "complained"),
        "blocked@example.org": (DeliveryStatus.SKIPPED, "suppressed"),
        "ok@example.org": (DeliveryStatus.DELIVERED, ""),
    }, "another tenant's list does not apply"
    assert [m.rcpt_tos for m in sink.messages] == [["ok@example.org"]]


def test_ignored_reasons_are_delivered_and_bad_reasons_are_config_errors(
    tmp_path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> None:
    extra = '[plugins.suppression]\nignore_reasons = ["bounce"]\n'
    gw = gateway_factory(
        make_config(tmp_path, RELAY, port=sink.port, extra=extra), clock=FakeClock(), deliver=False
    )
    suppress(gw, "default", {"bounced@example.org": "bounce", "quit@example.org": "unsubscribe"})
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("app@example.com", ["bounced@example.org", "quit@example.org"], BODY)
    gw.call(gw.gateway.dispatcher.run_once())
    assert statuses(gw) == {
        "bounced@example.org": (DeliveryStatus.DELIVERED, ""),
        "quit@example.org": (DeliveryStatus.SKIPPED, "unsubscribed"),
    }
    bad = '[plugins.suppression]\nignore_reasons = ["dislike"]\n'
    with pytest.raises(ConfigError, match=r"plugins\.suppression\.ignore_reasons\[0\]"):
        Gateway(make_config(tmp_path / "bad", RELAY, port=sink.port, extra=bad))


def test_http_mail_is_skipped_when_suppressed_after_it_was_accepted(
    tmp_path, sink: Sink, gateway_factory: Callable[..., GatewayThread]
) -> None:
    # The API refuses already-suppressed recipients at accept time; this is the other case:
    # the unsubscribe arrives while the message waits in the queue.
    clock = FakeClock()
    gw = gateway_factory(api_config(tmp_path, sink.port), clock=clock, deliver=False)
    api = Api(gw, clock, sink)
    try:
        admin = api.client(key="admin")
        sent = admin.post(
            "/v1/messages",
            json={
                "from": "app@acme.test",
                "to": ["ann@example.org", "bob@example.org"],
                "subject": "Hi",
                "text": "Hi",
            },
        )
        assert sent.status_code == 202
        added = admin.post(
            "/v1/suppressions",
            json={"entries": [{"email": "Bob@Example.org", "reason": "unsubscribe"}]},
        )
        assert added.status_code == 200
        gw.call(gw.gateway.dispatcher.run_once())
        assert statuses(gw) == {
            "ann@example.org": (DeliveryStatus.DELIVERED, ""),
            "bob@example.org": (DeliveryStatus.SKIPPED, "unsubscribed"),
        }
        assert [m.rcpt_tos for m in sink.messages] == [["ann@example.org"]]
        timeline = admin.get(f"/v1/messages/{sent.json()['id']}").json()
        assert {(r["email"], r["status"]) for r in timeline["recipients"]} >= {
            ("bob@example.org", "skipped")
        }
    finally:
        api.close()
