"""The ``mx`` provider end to end on loopback: a real DNS server (NSD) serves MX, A and
``_mta-sts`` records; MX hosts are real sink SMTP servers on 127.0.0.2 and 127.0.0.3 (one
port: MX records carry none); the MTA-STS policy is served over HTTPS with trustme
certificates.

Fixtures are listed so that the gateway stops before the servers it talks to.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from tests.conftest import Sink, make_config
from tests.routing.support import attempts_of, delivery_of, run_once, submit

ZONES = {
    "plain.test": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.2", "mx2 A 127.0.0.3"],
    "backwards.test": ["@ MX 20 mx1.plain.test.", "@ MX 10 mx2.plain.test."],
    "nomx.test": ["@ A 127.0.0.3"],
    "nullmx.test": ["@ MX 0 ."],
    "sts-bad.test": [
        "@ MX 10 mx1.plain.test.",
        "mta-sts A 127.0.0.1",
        '_mta-sts TXT "v=STSv1; id=20260101"',
    ],
    "sts-good.test": [
        "@ MX 10 mx1",
        "mx1 A 127.0.0.2",
        "mta-sts A 127.0.0.1",
        '_mta-sts TXT "v=STSv1; id=20260101"',
    ],
}

POLICIES = {
    "mta-sts.sts-bad.test": "version: STSv1\nmode: enforce\nmx: *.elsewhere.test\nmax_age: 86400\n",
    "mta-sts.sts-good.test": "version: STSv1\nmode: enforce\nmx: *.sts-good.test\nmax_age: 86400\n",
}

CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[delivery]
providers = ["direct"]
retry_schedule = ["5m"]

[providers.direct]
type = "mx"
nameservers = ["127.0.0.1"]
dns_port = {dns_port}
port = {smtp_port}
timeout = 10
mta_sts_port = {https_port}
ca_file = "{ca_file}"
source_address = "127.0.0.9"
"""


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert(
            "mx1.sts-good.test", "mta-sts.sts-good.test", "mta-sts.sts-bad.test"
        )
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.server)


class PolicyServer:
    """HTTPS on loopback answering /.well-known/mta-sts.txt by the Host header."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host", "").partition(":")[0]
                outer.requests.append(f"{host}{self.path}")
                policy = POLICIES.get(host)
                if self.path != "/.well-known/mta-sts.txt" or policy is None:
                    self.send_error(404)
                    return
                body = policy.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def policy_server(pki: Pki) -> Iterator[PolicyServer]:
    server = PolicyServer(pki.server)
    yield server
    server.stop()


@pytest.fixture
def mx_hosts(pki: Pki) -> Iterator[Callable[[bool], tuple[Sink | None, Sink]]]:
    """``factory(first_up)``: mx2 on 127.0.0.3, and mx1 on 127.0.0.2 (same port) if up."""
    started: list[Sink] = []

    def factory(first_up: bool) -> tuple[Sink | None, Sink]:
        mx2 = Sink(host="127.0.0.3", tls_context=pki.server)
        mx2.start()
        started.append(mx2)
        mx1 = None
        if first_up:
            mx1 = Sink(host="127.0.0.2", port=mx2.port, tls_context=pki.server)
            mx1.start()
            started.append(mx1)
        return mx1, mx2

    yield factory
    for sink in started:
        sink.stop()


def start(tmp_path: Path, dns_server, gateway_factory, pki: Pki, https_port: int, smtp_port: int):  # type: ignore[no-untyped-def]
    dns = dns_server(ZONES)
    config = make_config(
        tmp_path,
        CONFIG,
        dns_port=dns.port,
        smtp_port=smtp_port,
        https_port=https_port,
        ca_file=pki.ca_file,
    )
    return gateway_factory(config, clock=FakeClock(), deliver=False)


def test_delivery_follows_mx_preference(
    tmp_path: Path, pki: Pki, policy_server: PolicyServer, mx_hosts, dns_server, gateway_factory
) -> None:
    mx1, mx2 = mx_hosts(True)
    gw = start(tmp_path, dns_server, gateway_factory, pki, policy_server.port, mx2.port)
    submit(gw, "a@plain.test", "b@backwards.test")
    assert run_once(gw) == 2
    assert len(mx1.to("a@plain.test")) == 1 and mx2.to("a@plain.test") == []
    assert len(mx2.to("b@backwards.test")) == 1 and mx1.to("b@backwards.test") == []
    delivered = delivery_of(gw, "a@plain.test")
    assert (delivered.status, delivered.provider) == (DeliveryStatus.DELIVERED, "direct")
    assert delivered.provider_message_id.startswith("SINK")
    # opportunistic STARTTLS: the sinks offer it, so it was used (certificate unchecked)
    assert mx1.to("a@plain.test")[0].tls
    assert mx1.to("a@plain.test")[0].peer == "127.0.0.9"  # sent from source_address


def test_falls_back_to_the_next_mx_when_the_first_refuses(
    tmp_path: Path, pki: Pki, policy_server: PolicyServer, mx_hosts, dns_server, gateway_factory
) -> None:
    mx1, mx2 = mx_hosts(True)
    assert mx1 is not None
    mx1.script("a@plain.test", "RCPT", ["451 4.7.1 greylisted, try later"])
    gw = start(tmp_path, dns_server, gateway_factory, pki, policy_server.port, mx2.port)
    submit(gw, "a@plain.test")
    assert run_once(gw) == 1
    assert mx1.to("a@plain.test") == [] and len(mx2.to("a@plain.test")) == 1
    assert delivery_of(gw, "a@plain.test").status is DeliveryStatus.DELIVERED


def test_falls_back_when_the_first_mx_is_down_and_uses_the_implicit_mx(
    tmp_path: Path, pki: Pki, policy_server: PolicyServer, mx_hosts, dns_server, gateway_factory
) -> None:
    _, mx2 = mx_hosts(False)  # nothing listens on 127.0.0.2
    gw = start(tmp_path, dns_server, gateway_factory, pki, policy_server.port, mx2.port)
    submit(gw, "a@plain.test", "c@nomx.test")
    assert run_once(gw) == 2
    assert len(mx2.to("a@plain.test")) == 1
    assert len(mx2.to("c@nomx.test")) == 1  # no MX record: the domain's own A record


def test_permanent_and_temporary_dns_answers(
    tmp_path: Path, pki: Pki, policy_server: PolicyServer, mx_hosts, dns_server, gateway_factory
) -> None:
    mx1, mx2 = mx_hosts(True)
    assert mx1 is not None
    mx1.script("x@plain.test", "RCPT", ["550 5.1.1 no such user"])
    gw = start(tmp_path, dns_server, gateway_factory, pki, policy_server.port, mx2.port)
    submit(gw, "n@nullmx.test", "g@ghost.plain.test", "x@plain.test", "u@unserved.test")
    assert run_once(gw) == 4
    null = delivery_of(gw, "n@nullmx.test")
    assert null.status is DeliveryStatus.BOUNCED and "null MX" in null.last_error
    assert null.last_error.startswith("5.1.10 ")  # RFC 7505, what the DSN reports
    ghost = delivery_of(gw, "g@ghost.plain.test")
    assert ghost.status is DeliveryStatus.BOUNCED and "no such domain" in ghost.last_error
    assert ghost.last_error.startswith("5.1.2 ")
    refused = delivery_of(gw, "x@plain.test")  # a 5xx is final: mx2 is not asked
    assert refused.status is DeliveryStatus.BOUNCED and "5.1.1" in refused.last_error
    assert mx2.to("x@plain.test") == []
    unserved = delivery_of(gw, "u@unserved.test")  # the server refuses the query: try later
    assert unserved.status is DeliveryStatus.DEFERRED
    assert "MX look-up failed" in unserved.last_error


def test_mta_sts_enforce_refuses_an_mx_the_policy_does_not_name(
    tmp_path: Path, pki: Pki, policy_server: PolicyServer, mx_hosts, dns_server, gateway_factory
) -> None:
    mx1, mx2 = mx_hosts(True)
    assert mx1 is not None
    gw = start(tmp_path, dns_server, gateway_factory, pki, policy_server.port, mx2.port)
    submit(gw, "a@sts-bad.test")
    assert run_once(gw) == 1
    deferred = delivery_of(gw, "a@sts-bad.test")
    assert deferred.status is DeliveryStatus.DEFERRED
    assert "MTA-STS: no MX host of sts-bad.test matches its policy" in deferred.last_error
    assert mx1.messages == [] and mx2.messages == []
    assert policy_server.requests == ["mta-sts.sts-bad.test/.well-known/mta-sts.txt"]
    (attempt,) = attempts_of(gw, "a@sts-bad.test")
    assert attempt.outcome == "soft_fail"


def test_mta_sts_enforce_delivers_over_verified_tls_to_a_matching_mx(
    tmp_path: Path, pki: Pki, policy_server: PolicyServer, mx_hosts, dns_server, gateway_factory
) -> None:
    mx1, mx2 = mx_hosts(True)
    assert mx1 is not None
    gw = start(tmp_path, dns_server, gateway_factory, pki, policy_server.port, mx2.port)
    submit(gw, "a@sts-good.test")
    assert run_once(gw) == 1
    assert delivery_of(gw, "a@sts-good.test").status is DeliveryStatus.DELIVERED
    (received,) = mx1.to("a@sts-good.test")
    assert received.tls
    submit(gw, "b@sts-good.test")  # the cached policy serves the next message
    assert run_once(gw) == 1
    assert len(mx1.to("b@sts-good.test")) == 1
    assert policy_server.requests == ["mta-sts.sts-good.test/.well-known/mta-sts.txt"]


def test_mta_sts_enforce_refuses_a_certificate_it_cannot_verify(
    tmp_path: Path, pki: Pki, policy_server: PolicyServer, mx_hosts, dns_server, gateway_factory
) -> None:
    """mx1 presents a certificate from a CA the gateway does not trust: no delivery."""
    other = trustme.CA().issue_cert("mx1.sts-good.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other.configure_cert(context)
    mx2 = Sink(host="127.0.0.3")
    mx2.start()
    mx1 = Sink(host="127.0.0.2", port=mx2.port, tls_context=context)
    mx1.start()
    try:
        gw = start(tmp_path, dns_server, gateway_factory, pki, policy_server.port, mx2.port)
        submit(gw, "a@sts-good.test")
        assert run_once(gw) == 1
        deferred = delivery_of(gw, "a@sts-good.test")
        assert deferred.status is DeliveryStatus.DEFERRED
        assert "TLS failed" in deferred.last_error
        assert mx1.messages == []
    finally:
        mx1.stop()
        mx2.stop()
