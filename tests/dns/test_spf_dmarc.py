"""SPF evaluation (RFC 7208, pyspf over our resolver) and DMARC parsing/alignment, against NSD:
redirect, mx, exists with a macro, the void-lookup limit, an include without a record, two
records, strict SPF alignment of the Return-Path. ``test_rfc7208.py`` runs the RFC's suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.config import parse_config
from gateway.dnsauth import dmarc, spf
from gateway.dnsauth.lookup import Lookup
from gateway.dnsauth.records import expected_records
from gateway.dnsauth.verify import check_dmarc
from tests.dnsserver import DnsServer, start_dns_server

ZONES = {
    "redirect.test": [
        '@ TXT "v=spf1 redirect=_spf.redirect.test"',
        '_spf TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    ],
    "mx.test": ['@ TXT "v=spf1 mx -all"', "@ MX 10 mail.mx.test.", "mail A 192.0.2.7"],
    "macro.test": ['@ TXT "v=spf1 exists:%{i}._spf.%{d} -all"', "192.0.2.7._spf A 127.0.0.2"],
    "void.test": ['@ TXT "v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test -all"'],
    "noinc.test": ['@ TXT "v=spf1 include:nothing.noinc.test -all"'],
    "two.test": ['@ TXT "v=spf1 -all"', '@ TXT "v=spf1 ~all"'],
    "aspfs.test": ['_dmarc TXT "v=DMARC1; p=reject; aspf=s; rua=mailto:d@aspfs.test"'],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with start_dns_server(ZONES, tmp_path_factory.mktemp("spf")) as running:
        yield running


@pytest.fixture
def lookup(server: DnsServer) -> Lookup:
    return Lookup([f"{server.host}:{server.port}"], timeout=5)


@pytest.mark.parametrize(
    ("domain", "ip", "result", "reason"),
    [
        ("redirect.test", "192.0.2.5", "pass", ""),
        ("redirect.test", "198.51.100.1", "fail", ""),
        ("mx.test", "192.0.2.7", "pass", ""),
        ("mx.test", "192.0.2.8", "fail", ""),
        ("macro.test", "192.0.2.7", "pass", ""),
        ("macro.test", "192.0.2.8", "fail", ""),
        ("void.test", "192.0.2.1", "permerror", "Void lookup limit of 2 exceeded"),
        (
            "noinc.test",
            "192.0.2.1",
            "permerror",
            "No valid SPF record for included domain: nothing.noinc.test: "
            "include:nothing.noinc.test",
        ),
        ("two.test", "192.0.2.1", "permerror", "Two or more type TXT spf records found."),
        ("nothing.redirect.test", "192.0.2.1", "none", "no SPF record"),
    ],
)
async def test_check_host(lookup: Lookup, domain: str, ip: str, result: str, reason: str) -> None:
    evaluated = await spf.evaluate(lookup, domain, ip)
    assert (evaluated.result, evaluated.reason) == (result, reason)


async def test_redirect_counts_as_a_lookup_and_is_followed(lookup: Lookup) -> None:
    evaluated = await spf.evaluate(lookup, "redirect.test", "192.0.2.5")
    assert evaluated.includes == ["_spf.redirect.test"]
    assert evaluated.lookups == 1


async def test_strict_spf_alignment_alone_does_not_fail_dmarc_when_dkim_aligns(
    lookup: Lookup,
) -> None:
    config = parse_config('[domains."aspfs.test"]\nreturn_path = "bounces.aspfs.test"\n')
    record = next(r for r in expected_records(config, "aspfs.test", []) if r.purpose == "dmarc")
    check = await check_dmarc(lookup, config, "aspfs.test", record, ["aspfs.test"])
    assert check.status == "found", check.detail
    assert "DKIM aligns (d=aspfs.test)" in check.detail
    assert "SPF does not align (aspf=s: the Return-Path domain bounces.aspfs.test" in check.detail

    # Neither aligns (no key signs for the domain): DMARC cannot pass, and says why.
    check = await check_dmarc(lookup, config, "aspfs.test", record, ["other.test"])
    assert check.status == "wrong"
    assert check.detail.startswith("neither aligns with aspfs.test: SPF does not align")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("v=DMARC1 p=reject", "the record must start with v=DMARC1"),
        ("p=reject; v=DMARC1", "the record must start with v=DMARC1"),
        ("v=DMARC1; rua=mailto:a@b.test", "p= (the policy) is required"),
        ("v=DMARC1; p=reject; adkim=x", "adkim=x: give r (relaxed) or s (strict)"),
        ("v=DMARC1; p=reject; pct=150", "pct=150: give a whole number from 0 to 100"),
        (
            "v=DMARC1; p=reject; rua=dmarc@b.test",
            "rua: 'dmarc@b.test' is not a mailto: or https: URI",
        ),
        ("v=DMARC1; p=reject; p=none", "tag p appears twice"),
    ],
)
def test_malformed_dmarc_records_name_the_problem(text: str, error: str) -> None:
    with pytest.raises(dmarc.DmarcError) as raised:
        dmarc.parse_dmarc(text)
    assert str(raised.value) == error


def test_dmarc_defaults_and_alignment() -> None:
    record = dmarc.parse_dmarc("v=DMARC1; p=quarantine")
    assert (record.subdomain_policy, record.adkim, record.aspf, record.pct) == (
        "quarantine",
        "r",
        "r",
        100,
    )
    assert dmarc.aligned("bounces.example.com", "example.com", "r")
    assert not dmarc.aligned("bounces.example.com", "example.com", "s")
    assert not dmarc.aligned("example.net", "example.com", "r")
