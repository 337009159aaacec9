"""``/metrics`` moves with real traffic: SMTP submissions to the gateway, relayed to the sink."""

from __future__ import annotations

import smtplib
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Sink, make_config, wait_until
from tests.ops.conftest import OPS_CONFIG, ops_config_args


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_gauges_follow_real_traffic(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    config = make_config(tmp_path, OPS_CONFIG, **ops_config_args(sink.port))
    gateway = gateway_factory(config)
    http = gateway.gateway.http_port
    before = scrape(http)
    assert (
        value(
            before,
            "gateway_messages_accepted_total",
            tenant="acme",
            stream="transactional",
            source="smtp",
        )
        == 0
    )
    assert value(before, "gateway_provider_breaker_state", provider="relay", state="closed") == 1
    sink.script("gone@example.org", "RCPT", ["550 5.1.1 no such user"])
    sink.script("later@example.org", "RCPT", ["451 4.3.0 try later"])
    with smtplib.SMTP("127.0.0.1", gateway.port("dev"), timeout=20) as client:
        for n in range(5):
            client.sendmail(
                "app@acme.test",
                [f"r{n}@example.org"],
                f"From: app@acme.test\r\nSubject: {n}\r\n\r\nx\r\n",
            )
        client.sendmail(
            "app@acme.test",
            ["gone@example.org", "later@example.org"],
            "From: app@acme.test\r\nSubject: mixed\r\n\r\nx\r\n",
        )
    with smtplib.SMTP("127.0.0.1", gateway.port("dev"), timeout=20) as client:
        client.noop()
    wait_until(lambda: len(sink.messages) == 5, 20, "five messages at the sink")

    def settled() -> bool:
        samples = scrape(http)
        return (
            value(
                samples,
                "gateway_deliveries_total",
                tenant="acme",
                stream="transactional",
                route="relay",
                status="delivered",
            )
            == 5
            and value(
                samples,
                "gateway_deliveries_total",
                tenant="acme",
                stream="transactional",
                route="relay",
                status="bounced",
            )
            == 1
            and value(
                samples,
                "gateway_deliveries_total",
                tenant="acme",
                stream="transactional",
                route="relay",
                status="deferred",
            )
            == 1
        )

    wait_until(settled, 20, "delivery counters to settle")
    after = scrape(http)
    assert (
        value(
            after,
            "gateway_messages_accepted_total",
            tenant="acme",
            stream="transactional",
            source="smtp",
        )
        == 6
    )
    assert value(after, "gateway_recipients_accepted_total", tenant="acme") == 7
    assert value(after, "gateway_smtp_sessions_total", listener="dev") == 2
    assert (
        value(
            after,
            "gateway_delivery_latency_seconds_count",
            tenant="acme",
            route="relay",
        )
        == 5
    )
    assert (
        value(
            after, "gateway_events_total", tenant="acme", stream="transactional", type="delivered"
        )
        == 5
    )
    assert value(after, "gateway_queue_deliveries", status="delivered") == 5
    assert value(after, "gateway_queue_deliveries", status="bounced") == 1
    assert value(after, "gateway_queue_deliveries", status="deferred") == 1
    assert value(after, "gateway_queue_oldest_age_seconds") >= 0
    assert value(after, "gateway_store_up") == 1
    wait_until(
        lambda: value(scrape(http), "gateway_smtp_sessions_open", listener="dev") == 0,
        10,
        "sessions to close",
    )
