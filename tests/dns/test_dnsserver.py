"""The test DNS server itself: real answers over UDP and TCP, reloads, SERVFAIL and timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.rcode
import dns.resolver
import pytest

from tests.dnsserver import BlackHole, DnsServer, txt

LONG_KEY = "v=DKIM1; k=rsa; p=" + "A" * 400


def test_dnspython_resolves_records_through_the_server(
    dns_server: Callable[..., DnsServer],
) -> None:
    server = dns_server(
        {
            "example.test": ['@ TXT "v=spf1 -all"', f"sel._domainkey TXT {txt(LONG_KEY)}"],
            "other.test": ["@ MX 10 mx.other.test.", "mx A 192.0.2.25"],
        }
    )
    resolver = server.resolver()
    assert [r.to_text() for r in resolver.resolve("example.test", "TXT")] == ['"v=spf1 -all"']
    key = resolver.resolve("sel._domainkey.example.test", "TXT")
    assert b"".join(key[0].strings).decode() == LONG_KEY
    mx = resolver.resolve("other.test", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mx.other.test.")]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nothing.example.test", "TXT")
    assert server.query("example.test", "TXT", tcp=True).rcode() == dns.rcode.NOERROR


def test_update_serves_the_new_records(dns_server: Callable[..., DnsServer]) -> None:
    server = dns_server({"example.test": ['@ TXT "v=spf1 -all"']})
    server.update("example.test", ['@ TXT "v=spf1 ~all"'])
    answer = server.resolver().resolve("example.test", "TXT")
    assert [r.to_text() for r in answer] == ['"v=spf1 ~all"']


def test_servfail_zone_answers_servfail(dns_server: Callable[..., DnsServer]) -> None:
    server = dns_server({"example.test": ["@ A 192.0.2.1"]}, servfail=["broken.test"])
    assert server.query("broken.test", "TXT").rcode() == dns.rcode.SERVFAIL
    with pytest.raises(dns.resolver.NoNameservers):
        server.resolver().resolve("broken.test", "TXT")


async def test_black_hole_times_out(black_hole: BlackHole) -> None:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [black_hole.host]
    resolver.port = black_hole.port
    resolver.lifetime = 0.5
    with pytest.raises(dns.exception.Timeout):
        await asyncio.wait_for(resolver.resolve("example.test", "TXT"), 10)


def test_server_is_stopped_by_its_process(dns_server: Callable[..., DnsServer]) -> None:
    server = dns_server({"example.test": ["@ A 192.0.2.1"]})
    server.stop()
    assert server.process.poll() is not None
