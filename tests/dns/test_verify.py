"""Verification against a real authoritative DNS server (NSD) serving one zone per case:
correct, missing records, a wrong DKIM key, SPF over 10 lookups, DMARC p=none and malformed,
SERVFAIL and a server that never answers."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gateway.clock import FakeClock
from gateway.dkim_keys import keygen, list_keys
from gateway.dnsauth.lookup import Lookup
from gateway.dnsauth.records import domain_section, mta_sts_policy
from gateway.dnsauth.verify import DomainReport, RecordCheck, verify_domain
from gateway.mta_sts import MtaSts
from gateway.mx_lookup import DnsResolver
from tests.dns import zones
from tests.dnsserver import BlackHole, DnsServer, start_dns_server


class Setup:
    def __init__(self, root: Path) -> None:
        self.key_dir = root / "keys"
        keys = zones.make_keys(self.key_dir)
        other = keygen(root / "other-keys", "wrongkey.test", zones.SELECTOR, "ed25519")[0]
        self.server = start_dns_server(
            zones.zones(keys, other), root / "nsd", servfail=["servfail.test"]
        )
        self.resolver = f"{self.server.host}:{self.server.port}"
        self.config = zones.config_for(self.key_dir, [self.resolver])

    async def verify(self, domain: str, lookup: Lookup | None = None) -> DomainReport:
        lookup = lookup or Lookup([self.resolver], timeout=5)
        return await verify_domain(lookup, self.config, domain, list_keys(self.key_dir), 0.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    built = Setup(tmp_path_factory.mktemp("dnsverify"))
    with built.server:
        yield built


def by_purpose(report: DomainReport, purpose: str) -> list[RecordCheck]:
    return [c for c in report.records if c.purpose == purpose]


def one(report: DomainReport, purpose: str) -> RecordCheck:
    (check,) = by_purpose(report, purpose)
    return check


async def test_correct_domain_is_verified(setup: Setup) -> None:
    report = await setup.verify("good.test")
    assert report.status == "verified"
    spf = one(report, "spf")
    assert spf.status == "found"
    assert spf.seen == ["v=spf1 ip4:192.0.2.10 include:esp.test ~all"]
    # Evaluated, not string-matched: 198.51.100.0/24 passes through include:esp.test.
    assert spf.expected == "v=spf1 ip4:192.0.2.10 ip4:198.51.100.0/24 include:esp.test ~all"
    assert spf.detail == "1 of 10 DNS lookups"
    dkim = by_purpose(report, "dkim")
    assert sorted((c.selector, c.status) for c in dkim) == [("r1", "found"), ("s1", "found")]
    dmarc = one(report, "dmarc")
    assert dmarc.status == "found"
    assert dmarc.seen == ["v=DMARC1; p=quarantine; rua=mailto:dmarc@good.test"]
    readiness = {c.name: c.status for c in report.readiness}
    assert readiness == {
        "spf_pass": "pass",
        "dkim_pass": "pass",
        "dmarc_published": "pass",
        "alignment": "pass",
        "one_click_unsubscribe": "pass",
        "from_domain_mx": "pass",
        "ptr": "pass",
    }


async def test_missing_records_are_missing_with_the_expected_values(setup: Setup) -> None:
    report = await setup.verify("missing.test")
    assert report.status == "unverified"
    for purpose in ("spf", "dkim", "dmarc"):
        check = one(report, purpose)
        assert check.status == "missing", check
        assert check.seen == []
        assert check.expected
    assert one(report, "dmarc").expected == (
        "v=DMARC1; p=none; rua=mailto:dmarc@missing.test; adkim=r; aspf=r"
    )
    assert one(report, "tls_rpt").status == "missing"


async def test_wrong_dkim_key_is_wrong_not_found(setup: Setup) -> None:
    report = await setup.verify("wrongkey.test")
    dkim = one(report, "dkim")
    assert dkim.status == "wrong"
    assert dkim.detail == "a different public key than our private key's"
    assert dkim.seen and dkim.seen[0] != dkim.expected
    assert one(report, "spf").status == "found"
    assert report.status == "unverified"


async def test_spf_over_ten_lookups_is_a_permerror(setup: Setup) -> None:
    report = await setup.verify("spf11.test")
    spf = one(report, "spf")
    assert spf.status == "wrong"
    assert spf.detail == "permerror: more than 10 DNS lookups (RFC 7208 4.6.4)"
    assert report.status == "unverified"
    assert {c.name: c.status for c in report.readiness}["spf_pass"] == "fail"


async def test_dmarc_p_none_passes_with_a_note(setup: Setup) -> None:
    report = await setup.verify("dmarcnone.test")
    dmarc = one(report, "dmarc")
    assert dmarc.status == "found"
    assert "p=none only monitors" in dmarc.detail
    assert report.status == "verified"


async def test_malformed_dmarc_is_wrong(setup: Setup) -> None:
    report = await setup.verify("dmarcbad.test")
    dmarc = one(report, "dmarc")
    assert dmarc.status == "wrong"
    assert dmarc.seen == ["v=DMARC1; p=maybe"]
    assert dmarc.detail == "malformed: p=maybe: give none, quarantine or reject"
    assert report.status == "unverified"


async def test_servfail_could_not_check_never_missing(setup: Setup) -> None:
    report = await setup.verify("servfail.test")
    assert report.status == "could_not_check"
    for check in report.records:
        assert check.status == "could_not_check", check
        assert check.detail.startswith("could not check:")
        assert "SERVFAIL" in check.detail


@pytest.mark.serial
async def test_timeout_could_not_check_never_missing(setup: Setup) -> None:
    with BlackHole() as hole:
        lookup = Lookup([f"{hole.host}:{hole.port}"], timeout=1.5)
        started = time.monotonic()
        report = await setup.verify("good.test", lookup)
        elapsed = time.monotonic() - started
    # One timeout for the whole verification, not one per sequential step (readiness, PTR).
    assert 1.5 <= elapsed < 2.9, elapsed
    assert report.status == "could_not_check"
    for check in report.records:
        assert check.status == "could_not_check", check
        assert "timed out" in check.detail
    assert {c.name: c.status for c in report.readiness}["spf_pass"] == "could_not_check"


def test_server_serves_long_dkim_records(setup: Setup) -> None:
    server: DnsServer = setup.server
    answer = server.resolver().resolve("r1._domainkey.good.test", "TXT")
    assert b"".join(answer[0].strings).decode().startswith("v=DKIM1; k=rsa; p=")


async def test_any_valid_mta_sts_id_is_found(setup: Setup) -> None:
    check = one(await setup.verify("sts.test"), "mta_sts")
    assert check.status == "found", check
    assert check.seen == ["v=STSv1; id=20260101T000000"]
    assert "change it whenever the policy changes" in check.detail


async def test_a_from_domain_with_a_null_mx_is_flagged(setup: Setup) -> None:
    readiness = {c.name: c for c in (await setup.verify("nullmx.test")).readiness}
    assert readiness["from_domain_mx"].status == "fail"
    assert "null MX" in readiness["from_domain_mx"].detail
    good = {c.name: c for c in (await setup.verify("sts.test")).readiness}
    assert good["from_domain_mx"].status == "pass"


class PolicyHost:
    """HTTPS on loopback with a certificate for ``mta-sts.sts.test`` (a test CA), serving
    ``body`` at ``/.well-known/mta-sts.txt`` (404 when ``None``)."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("mta-sts.sts.test").configure_cert(context)
        self.body: str | None = None
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/mta-sts.txt" or outer.body is None:
                    self.send_error(404)
                    return
                body = outer.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


async def test_mta_sts_check_compares_the_served_policy_with_ours(
    setup: Setup, tmp_path: Path
) -> None:
    host = PolicyHost(tmp_path)
    server: DnsServer = setup.server
    fetcher = MtaSts(
        DnsResolver([server.host], port=server.port, timeout=5),
        FakeClock(),
        port=host.port,
        ca_file=str(host.ca_file),
        timeout=5,
    )
    ours = mta_sts_policy(domain_section(setup.config, "sts.test"))

    async def check() -> RecordCheck:
        report = await verify_domain(
            Lookup([setup.resolver], timeout=5),
            setup.config,
            "sts.test",
            list_keys(setup.key_dir),
            0.0,
            fetch_policy=fetcher.fetch,
        )
        return one(report, "mta_sts")

    try:
        host.body = ours.replace("\r\n", "\n")  # line endings are not content
        same = await check()
        assert same.status == "found", same
        assert "the policy served at https://mta-sts.sts.test/" in same.detail

        host.body = ours.replace("mx: mx.sts.test", "mx: mx.elsewhere.test")
        other = await check()
        assert other.status == "wrong", other
        assert "mx.elsewhere.test" in other.detail and "mx.sts.test" in other.detail

        host.body = ours.replace("mode: testing", "mode: enforce")
        assert "mode enforce, ours testing" in (await check()).detail

        host.body = None
        missing = await check()
        assert missing.status == "wrong", missing
        assert "HTTP 404" in missing.detail
    finally:
        await fetcher.close()
        host.stop()
