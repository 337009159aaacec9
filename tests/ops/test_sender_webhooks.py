"""Event webhooks to senders: signed per Standard Webhooks, retried, failed, replayed."""

from __future__ import annotations

import io
import json
import re
import smtplib
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.cli import main
from gateway.clock import FakeClock
from gateway.config import ConfigError
from gateway.events import Event, publish
from tests.conftest import GatewayThread, Sink, make_config, wait_until
from tests.ops.conftest import ADMIN_KEY, OPS_CONFIG, Receiver, new_secret, ops_config_args


def endpoint_table(url: str, secret: str, events: list[str] | None = None) -> str:
    listed = json.dumps(events or [])
    return f'[tenants.acme.webhooks.crm]\nurl = "{url}"\nsecret = "{secret}"\nevents = {listed}\n'


def test_real_receiver_gets_events_a_standard_webhooks_verifier_accepts(
    tmp_path: Path, sink: Sink, receiver: Receiver, gateway_factory
) -> None:
    secret = new_secret()
    config = make_config(
        tmp_path,
        OPS_CONFIG,
        **ops_config_args(
            sink.port, endpoint_table(receiver.url, secret, ["delivered", "bounced"])
        ),
    )
    sink.script("gone@example.org", "RCPT", ["550 5.1.1 no such user"])
    gateway = gateway_factory(config)
    with smtplib.SMTP("127.0.0.1", gateway.port("dev"), timeout=20) as client:
        client.sendmail(
            "app@acme.test",
            ["ann@example.org", "gone@example.org"],
            "From: app@acme.test\r\nSubject: hi\r\n\r\nbody\r\n",
        )
    wait_until(lambda: len(receiver.received()) >= 2, 20, "two webhook requests")
    verifier = Webhook(secret)
    by_type = {}
    for request in receiver.received():
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"].startswith("msg_")
        payload = verifier.verify(request.body, request.headers)
        by_type[payload["type"]] = payload
    assert set(by_type) == {"email.delivered", "email.bounced"}
    delivered = by_type["email.delivered"]["data"]
    assert delivered["recipient"] == "ann@example.org"
    assert delivered["tenant"] == "acme" and delivered["provider"] == "relay"
    assert len(delivered["message_id"]) == 22
    bounced = by_type["email.bounced"]["data"]
    assert bounced["recipient"] == "gone@example.org" and bounced["bounce"] == "hard"
    # A signature made with another secret, or over other bytes, is refused by the same verifier.
    request = receiver.received()[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(request.body.replace(b"example.org", b"example.com"), request.headers)
    # The delivery log is visible to the tenant through the API.
    url = f"http://127.0.0.1:{gateway.gateway.http_port}"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    wait_until(
        lambda: (
            len(httpx.get(f"{url}/v1/webhooks/events?status=delivered", headers=headers).json())
            == 2
        ),
        15,
        "both events recorded as delivered",
    )
    endpoints = httpx.get(f"{url}/v1/webhooks", headers=headers).json()
    assert endpoints == [
        {"name": "crm", "url": receiver.url, "events": ["delivered", "bounced"], "enabled": True}
    ]
    assert "secret" not in json.dumps(endpoints)


def test_a_failing_receiver_gets_retries_then_the_event_fails_and_can_be_replayed(
    tmp_path: Path, sink: Sink, receiver: Receiver
) -> None:
    clock = FakeClock(1_900_000_000.0)
    toml = (
        OPS_CONFIG
        + '\n[webhooks]\nretry_schedule = ["5s", "5m", "30m", "2h", "5h", "10h"]\nmax_age = "1d"\n'
    )
    config_file = tmp_path / "gateway.toml"
    config = make_config(
        tmp_path, toml, **ops_config_args(sink.port, endpoint_table(receiver.url, new_secret()))
    )
    gateway = GatewayThread(config, clock=clock, deliver=False).start()
    try:
        sender = gateway.gateway.webhooks
        receiver.statuses = [500] * 100
        gateway.call(
            publish(
                gateway.gateway,
                Event(
                    type="clicked",
                    tenant="acme",
                    recipient="ann@example.org",
                    at=clock.now(),
                    message_id="m-1",
                    detail="https://example.com/offer",
                ),
                record=False,
            )
        )
        waits = []
        sent_at = []
        while True:
            assert gateway.call(sender.run_once()) == 1
            sent_at.append(clock.now())
            events = gateway.call(gateway.gateway.store.list_webhook_events("acme"))
            assert len(events) == 1
            event = events[0]
            if event.status == "failed":
                break
            assert event.status == "pending"
            # Nothing is due before the scheduled time, then exactly this event is.
            assert gateway.call(sender.run_once()) == 0
            waits.append(event.next_attempt_at - clock.now())
            clock.advance(event.next_attempt_at - clock.now())
        # The next wait (10h again) would pass max_age (1 day): the 7th failure is the last.
        assert waits == [5, 300, 1800, 7200, 18000, 36000]
        assert sent_at[-1] - sent_at[0] <= 86400
        assert len(receiver.received()) == len(sent_at) == 7
        ids = {r.headers["webhook-id"] for r in receiver.received()}
        assert ids == {event.id}, "every retry carries the same webhook-id"
        _, log = gateway.call(gateway.gateway.store.webhook_event(event.id))
        assert [a.status_code for a in log] == [500] * 7
        assert [a.outcome for a in log] == ["pending"] * 6 + ["failed"]

        url = f"http://127.0.0.1:{gateway.gateway.http_port}"
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        failed = httpx.get(f"{url}/v1/webhooks/events?status=failed", headers=headers).json()
        assert [e["id"] for e in failed] == [event.id]
        assert failed[0]["payload"]["type"] == "email.clicked"
        shown = httpx.get(f"{url}/v1/webhooks/events/{event.id}", headers=headers).json()
        assert len(shown["log"]) == 7 and shown["last_error"] == "HTTP 500"

        config_file.write_text(_file_config(tmp_path, sink.port, receiver.url))
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["-c", str(config_file), "webhooks", "list", "--status", "failed"]) == 0
        assert event.id in out.getvalue()

        receiver.statuses = []
        missing = httpx.post(f"{url}/v1/webhooks/msg_nope/replay", headers=headers)
        assert missing.status_code == 404
        replayed = httpx.post(f"{url}/v1/webhooks/{event.id}/replay", headers=headers)
        assert replayed.status_code == 202 and replayed.json()["status"] == "pending"
        assert gateway.call(sender.run_once()) == 1
        final, log = gateway.call(gateway.gateway.store.webhook_event(event.id))
        assert final.status == "delivered" and len(log) == 8
        assert log[-1].status_code == 200 and log[-1].outcome == "delivered"
        assert receiver.received()[-1].headers["webhook-id"] == event.id
    finally:
        gateway.stop()


def _file_config(tmp_path: Path, port: int, url: str) -> str:
    body = OPS_CONFIG.format(**ops_config_args(port, endpoint_table(url, new_secret())))
    return f'[gateway]\nhostname = "gw.test"\ndata_dir = "{tmp_path / "data"}"\n' + body


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            '[tenants.acme.webhooks.crm]\nurl = "ftp://x"\nsecret = "{secret}"\n',
            "tenants.acme.webhooks.crm.url: give an absolute http(s) URL",
        ),
        (
            '[tenants.acme.webhooks.crm]\nurl = "https://x.test/h"\nsecret = "hunter2"\n',
            "tenants.acme.webhooks.crm.secret: give 'whsec_' + base64",
        ),
        (
            '[tenants.acme.webhooks.crm]\nurl = "https://x.test/h"\nsecret = "{secret}"\n'
            'events = ["delivered", "exploded"]\n',
            "tenants.acme.webhooks.crm.events[1]: unknown event type 'exploded'",
        ),
        ('[webhooks]\nretry_schedule = ["soon"]\n', "webhooks.retry_schedule[0]: not a duration"),
        ("[webhooks]\nconcurrency = 0\n", "webhooks.concurrency: must be at least 1"),
    ],
)
def test_bad_webhook_settings_are_refused_naming_the_key(
    tmp_path: Path, table: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        make_config(tmp_path, "[tenants.acme]\n" + table.replace("{secret}", new_secret()))
