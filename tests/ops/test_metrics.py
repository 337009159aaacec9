"""``/metrics`` moves with real traffic: SMTP submissions to the gateway, relayed to the sink."""

from __future__ import annotations

import smtplib
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Sink, make_config, wait_until
from tests.ops.conftest import ADMIN_KEY, OPS_CONFIG, ops_config_args


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


def test_operator_metrics_http_smtp_refusals_process_and_queue_depth(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    config = make_config(tmp_path, OPS_CONFIG, **ops_config_args(sink.port))
    gateway = gateway_factory(config, deliver=False)
    http = gateway.gateway.http_port
    base = f"http://127.0.0.1:{http}"
    key = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.get(f"{base}/v1/messages/nope", headers=key).status_code == 404
    assert httpx.get(f"{base}/v1/messages", headers=key).status_code == 200
    assert httpx.get(f"{base}/v1/messages").status_code == 401
    with smtplib.SMTP("127.0.0.1", gateway.port("dev"), timeout=20) as client:
        client.ehlo()
        assert client.mail("app@acme.test")[0] == 250
        assert client.rcpt("bad\x01@example.org")[0] >= 500
        assert client.docmd("BOGUS")[0] == 500
        client.rset()
        client.sendmail("app@acme.test", ["q@example.org"], "From: app@acme.test\r\n\r\nx\r\n")
    answer = httpx.get(f"{base}/metrics")
    samples = scrape(http)
    names = {name for name, _ in samples}
    assert not any(n.endswith("_created") for n in names), "no _created series"
    assert "\n# TYPE gateway_http_requests_created" not in answer.text
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    route = "/v1/messages/{message_id}"  # the template, not the id: bounded label values
    assert (
        value(samples, "gateway_http_requests_total", method="GET", route=route, status="404") == 1
    )
    assert (
        value(
            samples, "gateway_http_requests_total", method="GET", route="/v1/messages", status="401"
        )
        == 1
    )
    assert (
        value(samples, "gateway_http_request_duration_seconds_count", method="GET", route=route)
        == 1
    )
    refusals = {
        dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == "gateway_smtp_refusals_total"
    }
    assert refusals.get("500 5.5.2") == 1 and sum(refusals.values()) == 2, refusals
    # One queued delivery, none final: the depth counts only what is unfinished.
    assert value(samples, "gateway_queue_depth") == 1
    gateway.call(gateway.gateway.dispatcher.run_once())
    wait_until(lambda: value(scrape(http), "gateway_queue_depth") == 0, 20, "depth to drop")
    assert value(scrape(http), "gateway_queue_deliveries", status="delivered") == 1


def test_metrics_token_and_rate_limit_counter(tmp_path: Path, sink: Sink, gateway_factory) -> None:
    token = "metrics-" + ADMIN_KEY[-12:]
    toml = OPS_CONFIG.replace(
        "rate_limit = 0", f'rate_limit = 1\nrate_burst = 1\nmetrics_token = "{token}"'
    )
    gateway = gateway_factory(make_config(tmp_path, toml, **ops_config_args(sink.port)))
    base = f"http://127.0.0.1:{gateway.gateway.http_port}"
    refused = httpx.get(f"{base}/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert (
        httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    key = {"Authorization": f"Bearer {ADMIN_KEY}"}
    statuses = [httpx.get(f"{base}/v1/webhooks", headers=key).status_code for _ in range(3)]
    assert 429 in statuses
    scraped = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    assert value(samples, "gateway_http_rate_limited_total", tenant="acme") == statuses.count(429)
    assert value(
        samples, "gateway_http_requests_total", method="GET", route="/v1/webhooks", status="429"
    ) == statuses.count(429)
