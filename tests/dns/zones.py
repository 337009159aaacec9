"""Zones for the verification tests: one correct domain and one per way to get it wrong.

Each domain gets a DKIM key made by ``gateway.dkim_keys.keygen`` in the test's key folder;
``zones(keys)`` serves the right key for every domain except ``wrongkey.test``.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import Config, parse_config
from gateway.dkim_keys import DkimKey, keygen
from tests.dnsserver import txt

SELECTOR = "s1"
GOOD_SPF = '@ TXT "v=spf1 ip4:192.0.2.10 include:esp.test ~all"'
GOOD_DMARC = '_dmarc TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain}"'
DOMAINS = ("good.test", "missing.test", "wrongkey.test", "spf11.test", "dmarcnone.test")
DOMAINS += ("dmarcbad.test", "servfail.test", "sts.test", "nullmx.test")
STS_TABLE = 'mta_sts_mode = "testing"\nmta_sts_mx = ["mx.sts.test"]\n'
SPF_EDGES = {
    # RFC 7208 edges an evaluator of our own got wrong: ptr matches (5.5), a term with a port
    # is a syntax error anywhere in the record (4.6), more than 10 MX names is a permerror (4.6.4).
    "spfptr.test": ['@ TXT "v=spf1 ptr:good.test -all"'],
    "spfport.test": ['@ TXT "v=spf1 ip4:192.0.2.10 a:mail.spfport.test:80 -all"'],
    "spfmx.test": [
        '@ TXT "v=spf1 mx ip4:192.0.2.10 -all"',
        *(f"@ MX {n} mx{n}.spfmx.test." for n in range(11)),
    ],
}
"""Zones whose SPF only an RFC 7208 evaluation judges right (``test_api_and_policy``)."""


def config_for(key_dir: Path, resolvers: list[str], extra: str = "") -> Config:
    tables = "".join(
        f"""
[domains."{domain}"]
spf_ip = ["198.51.100.0/24"]
spf_include = ["esp.test"]
{STS_TABLE if domain == "sts.test" else ""}"""
        for domain in DOMAINS
    )
    return parse_config(
        f"""
[dns]
resolvers = {resolvers!r}
timeout = 3.0
[ips."192.0.2.10"]
provider = "capture"
[plugins.dkim]
key_dir = "{key_dir}"
[plugins.list_unsubscribe]
{tables}
{extra}
""".replace("'", '"')
    )


def make_keys(key_dir: Path) -> list[DkimKey]:
    """An ed25519 key per domain; good.test dual-signs with an RSA key as well."""
    keys = [keygen(key_dir, d, SELECTOR, "ed25519")[0] for d in DOMAINS]
    keys.append(keygen(key_dir, "good.test", "r1", "rsa", 1024, keep_signing=True)[0])
    return keys


def zones(keys: list[DkimKey], other_key: DkimKey) -> dict[str, list[str]]:
    def dkim(domain: str) -> list[str]:
        return [k.bind() for k in keys if k.domain == domain]

    def correct(domain: str) -> list[str]:
        return [GOOD_SPF, GOOD_DMARC.format(domain=domain), *dkim(domain)]

    return {
        "2.0.192.in-addr.arpa": ["10 PTR mail.good.test."],
        "esp.test": ['@ TXT "v=spf1 ip4:198.51.100.0/24 -all"'],
        "good.test": [*correct("good.test"), "mail A 192.0.2.10"],
        "missing.test": ["www A 192.0.2.80"],
        "wrongkey.test": [
            GOOD_SPF,
            GOOD_DMARC.format(domain="wrongkey.test"),
            other_key.bind().replace(other_key.record_name, f"{SELECTOR}._domainkey.wrongkey.test"),
        ],
        "spf11.test": [
            # Over 255 bytes: served as two strings, joined by the reader (RFC 7208 3.3).
            "@ TXT "
            + txt(
                "v=spf1 ip4:192.0.2.10 "
                + " ".join(f"include:i{n}.spf11.test" for n in range(11))
                + " include:esp.test ~all"
            ),
            *(f'i{n} TXT "v=spf1 ip4:203.0.113.{n} -all"' for n in range(11)),
            GOOD_DMARC.format(domain="spf11.test"),
            *dkim("spf11.test"),
        ],
        "dmarcnone.test": [
            GOOD_SPF,
            '_dmarc TXT "v=DMARC1; p=none; rua=mailto:dmarc@dmarcnone.test"',
            *dkim("dmarcnone.test"),
        ],
        "dmarcbad.test": [GOOD_SPF, '_dmarc TXT "v=DMARC1; p=maybe"', *dkim("dmarcbad.test")],
        # RFC 8461: any 1-32 character alphanumeric id is valid, not only the one we suggest.
        "sts.test": [
            *correct("sts.test"),
            '_mta-sts TXT "v=STSv1; id=20260101T000000"',
            "mta-sts A 127.0.0.1",
            "@ MX 10 mx.sts.test.",
        ],
        # RFC 7505 null MX: the domain receives no mail, so it must not be a From domain.
        "nullmx.test": [*correct("nullmx.test"), "@ MX 0 ."],
        **SPF_EDGES,
    }
