"""The HTTP endpoints (records, verify, MTA-STS policy), ``gateway dns records|check``, and
the accept policy for unverified domains, against NSD serving the test zones."""

from __future__ import annotations

import json
import logging
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.clock import FakeClock
from gateway.dkim_keys import keygen
from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import GatewayThread, make_config
from tests.dns import zones
from tests.dnsserver import start_dns_server

ADMIN = generate_api_key()
OTHER = generate_api_key()
OTHER_ADMIN = generate_api_key()
OPERATOR = generate_api_key()

CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]
[http]
enabled = true
port = 0
[dns]
resolvers = ["{resolver}"]
timeout = 3.0
unverified_sending = "{mode}"
[tenants.acme]
sending_domains = ["good.test", "missing.test", "spfptr.test", "spfport.test", "spfmx.test"]
smtp_networks = ["127.0.0.1/32"]
[[tenants.acme.api_keys]]
name = "ops"
key_hash = "{admin_hash}"
scopes = ["send", "read"]
[tenants.globex]
[[tenants.globex.api_keys]]
name = "other"
key_hash = "{other_hash}"
scopes = ["send", "read"]
[[tenants.globex.api_keys]]
name = "other-admin"
key_hash = "{other_admin_hash}"
scopes = ["admin"]
[[tenants.globex.api_keys]]
name = "operator"
key_hash = "{operator_hash}"
scopes = ["read", "operator"]
[delivery]
providers = ["capture"]
[ips."192.0.2.10"]
provider = "capture"
[domains."good.test"]
spf_ip = ["198.51.100.0/24"]
spf_include = ["esp.test"]
mta_sts_mode = "testing"
mta_sts_mx = ["mx1.good.test", "*.mx.good.test"]
mta_sts_cname = "gw.example.net"
[domains."missing.test"]
[domains."spfptr.test"]
[domains."spfport.test"]
[domains."spfmx.test"]
[plugins.dkim]
key_dir = "{key_dir}"
"""


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.key_dir = root / "keys"
        keys = zones.make_keys(self.key_dir)
        other = keygen(root / "other", "wrongkey.test", zones.SELECTOR, "ed25519")[0]
        self.server = start_dns_server(
            zones.zones(keys, other), root / "nsd", servfail=["servfail.test"]
        )

    def toml(self, mode: str) -> str:
        return CONFIG.format(
            resolver=f"{self.server.host}:{self.server.port}",
            mode=mode,
            admin_hash=hash_api_key(ADMIN),
            other_hash=hash_api_key(OTHER),
            other_admin_hash=hash_api_key(OTHER_ADMIN),
            operator_hash=hash_api_key(OPERATOR),
            key_dir=self.key_dir,
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    built = Env(tmp_path_factory.mktemp("dnsapi"))
    with built.server:
        yield built


def start(
    env: Env, tmp_path: Path, gateway_factory: Callable[..., GatewayThread], mode: str
) -> tuple[GatewayThread, FakeClock, httpx.Client]:
    clock = FakeClock()
    gw = gateway_factory(make_config(tmp_path, env.toml(mode)), clock=clock, deliver=False)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{gw.gateway.http_port}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    return gw, clock, client


def smtp_send(gw: GatewayThread, sender: str, author: str = "") -> tuple[int, bytes]:
    """Envelope sender ``sender``; header ``From: <author>`` (default: the sender)."""
    author = author or sender
    body = f"From: {author}\r\nTo: ann@example.org\r\nSubject: hi\r\n\r\nhello\r\n".encode()
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.ehlo()
        client.mail(sender)
        client.rcpt("ann@example.org")
        return client.data(body)


def http_send(client: httpx.Client, sender: str) -> httpx.Response:
    return client.post(
        "/v1/messages", json={"from": sender, "to": ["a@example.org"], "subject": "s", "text": "x"}
    )


def test_refuse_mode_sends_only_after_verification(
    env: Env, tmp_path: Path, gateway_factory: Callable[..., GatewayThread]
) -> None:
    gw, clock, client = start(env, tmp_path, gateway_factory, "refuse")
    with client:
        refused = http_send(client, "news@good.test")
        assert refused.status_code == 422, refused.text
        assert "Sender domain good.test is not verified" in refused.json()["detail"]
        code, reply = smtp_send(gw, "news@good.test")
        assert (code, reply.split()[0]) == (550, b"5.7.1")

        report = client.post("/v1/domains/good.test/verify")
        assert report.status_code == 200, report.text
        assert report.json()["status"] == "verified"
        assert {r["purpose"]: r["status"] for r in report.json()["records"]}["dmarc"] == "found"

        clock.advance(11)  # past the policy's cache of the verified set
        assert http_send(client, "news@good.test").status_code == 202
        assert smtp_send(gw, "alerts@eu.good.test")[0] == 250, "a subdomain of a verified one"
        # Every author counts, not the first: a group hiding an unverified domain is refused.
        code, reply = smtp_send(gw, "news@good.test", "team: news@good.test, x@missing.test;")
        assert (code, reply.split()[0]) == (550, b"5.7.1")
        assert b"missing.test is not verified" in reply

        missing = client.post("/v1/domains/missing.test/verify").json()
        assert missing["status"] == "unverified"
        clock.advance(11)
        assert http_send(client, "news@missing.test").status_code == 422


def test_allow_mode_accepts_and_says_so(
    env: Env,
    tmp_path: Path,
    gateway_factory: Callable[..., GatewayThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, _, client = start(env, tmp_path, gateway_factory, "allow")
    with client, caplog.at_level(logging.INFO, "gateway.plugins.domain_verification"):
        assert http_send(client, "news@missing.test").status_code == 202
        assert smtp_send(gw, "news@missing.test")[0] == 250
    lines = [r.getMessage() for r in caplog.records if "unverified domain" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("accepting mail from unverified domain missing.test (tenant acme")


def test_records_endpoint_and_mta_sts_policy(
    env: Env, tmp_path: Path, gateway_factory: Callable[..., GatewayThread]
) -> None:
    _gw, _, client = start(env, tmp_path, gateway_factory, "allow")
    with client:
        found = client.get("/v1/domains/good.test/dns")
        assert found.status_code == 200, found.text
        body = found.json()
        by_purpose = {}
        for record in body["records"]:
            by_purpose.setdefault(record["purpose"], []).append(record)
        assert by_purpose["spf"][0]["value"] == (
            "v=spf1 ip4:192.0.2.10 ip4:198.51.100.0/24 include:esp.test ~all"
        )
        assert sorted(r["selector"] for r in by_purpose["dkim"]) == ["r1", "s1"]
        assert by_purpose["dmarc"][0]["value"].startswith("v=DMARC1; p=none; rua=mailto:")
        assert by_purpose["mta_sts"][0]["name"] == "_mta-sts.good.test"
        assert by_purpose["mta_sts_host"][0]["value"] == "gw.example.net"
        assert by_purpose["tls_rpt"][0]["value"] == "v=TLSRPTv1; rua=mailto:tls-reports@good.test"
        assert "s1._domainkey.good.test. 3600 IN TXT" in body["zone"]

        assert client.get("/v1/domains/nowhere.test/dns").status_code == 404
        with httpx.Client(
            base_url=str(client.base_url), headers={"Authorization": f"Bearer {OTHER}"}
        ) as other:
            assert other.get("/v1/domains/good.test/dns").status_code == 404, "not its domain"
            assert other.post("/v1/domains/good.test/verify").status_code == 404
        for key in (OTHER_ADMIN, OPERATOR):
            with httpx.Client(
                base_url=str(client.base_url), headers={"Authorization": f"Bearer {key}"}
            ) as other:
                # admin is its own tenant's; only the separate operator scope spans tenants.
                expected = 200 if key == OPERATOR else 404
                assert other.get("/v1/domains/good.test/dns").status_code == expected

        policy = httpx.get(
            f"{client.base_url}/.well-known/mta-sts.txt", headers={"Host": "mta-sts.good.test"}
        )
        assert policy.status_code == 200
        assert policy.headers["content-type"].startswith("text/plain")
        assert policy.text == (
            "version: STSv1\r\nmode: testing\r\nmx: mx1.good.test\r\nmx: *.mx.good.test\r\n"
            "max_age: 604800\r\n"
        )
        none = httpx.get(
            f"{client.base_url}/.well-known/mta-sts.txt", headers={"Host": "mta-sts.missing.test"}
        )
        assert none.status_code == 404


def test_cli_dns_records_and_check(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n' + env.toml("allow"))
    monkeypatch.chdir(tmp_path)

    assert main(["-c", str(config), "dns", "records", "good.test", "--write"]) == 0
    out, err = capsys.readouterr()
    snippet = (tmp_path / "dns" / "zones" / "good.test.zone").read_text()
    assert snippet == out
    assert '_dmarc.good.test. 3600 IN TXT "v=DMARC1; p=none;' in snippet
    assert "wrote dns/zones/good.test.zone" in err

    assert main(["-c", str(config), "dns", "check", "good.test"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("good.test: verified\n")
    assert "found            dkim (s1)" in out

    assert main(["-c", str(config), "dns", "check", "missing.test"]) == 1
    out, _ = capsys.readouterr()
    assert "missing          spf" in out
    assert "expected: v=spf1 ip4:192.0.2.10 ~all" in out

    assert main(["-c", str(config), "dns", "check", "good.test", "--json"]) == 0
    report = json.loads(capsys.readouterr()[0])
    assert report["status"] == "verified"
    assert {c["name"] for c in report["readiness"]} >= {"spf_pass", "ptr"}
    assert main(["-c", str(config), "dns", "records", "good.test", "--json"]) == 0
    purposes = [r["purpose"] for r in json.loads(capsys.readouterr()[0])]
    assert purposes[:4] == ["spf", "dkim", "dkim", "dmarc"]

    assert main(["-c", str(config), "dns", "check", "servfail.test"]) == 3
    out, _ = capsys.readouterr()
    assert out.startswith("servfail.test: could_not_check\n")
    assert "missing" not in out


def test_spf_is_judged_by_rfc_7208_in_the_api_and_the_cli(
    env: Env,
    tmp_path: Path,
    gateway_factory: Callable[..., GatewayThread],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The verification endpoint and ``gateway dns check`` report each sending address's
    ``check_host()`` result: ``ptr`` matches, a port in a term and 11 MX names are permerrors."""
    _gw, _, client = start(env, tmp_path, gateway_factory, "allow")
    with client:
        checks = {}
        for domain in zones.SPF_EDGES:
            report = client.post(f"/v1/domains/{domain}/verify")
            assert report.status_code == 200, report.text
            (checks[domain],) = [r for r in report.json()["records"] if r["purpose"] == "spf"]
    assert (checks["spfptr.test"]["status"], checks["spfptr.test"]["detail"]) == (
        "found",
        "RFC 7208 check_host(): 192.0.2.10 pass; 1 of 10 DNS lookups",
    )
    assert (checks["spfport.test"]["status"], checks["spfport.test"]["detail"]) == (
        "wrong",
        "permerror: Invalid domain found (use FQDN): mail.spfport.test:80",
    )
    assert (checks["spfmx.test"]["status"], checks["spfmx.test"]["detail"]) == (
        "wrong",
        "permerror: More than 10 MX records returned",
    )

    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n' + env.toml("allow"))
    assert main(["-c", str(config), "dns", "check", "spfptr.test"]) == 1  # no DKIM key
    out, _ = capsys.readouterr()
    assert "found            spf" in out
    assert "RFC 7208 check_host(): 192.0.2.10 pass; 1 of 10 DNS lookups" in out


def test_bad_dns_config_is_refused_with_the_key_path(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    cases = {
        '[dns]\nresolvers = ["resolver.example"]\n': "dns.resolvers[0]",
        "[dns]\ntimeout = 0\n": "dns.timeout",
        '[dns]\nunverified_sending = "maybe"\n': "unverified_sending",
        '[domains."a.test"]\nspf_ip = ["300.1.1.1"]\n': "spf_ip[0]: not an IP address",
        '[domains."a.test"]\nreturn_path = "bounces.other.test"\n': "must be a subdomain of",
        '[domains."a.test"]\nmta_sts_mode = "enforce"\n': "needs MX",
        '[domains."a.test"]\ndmarc_rua = "dmarc@a.test"\n': "give mailto:address",
        '[domains."a.test"]\nreturn_path_mx = "mx.a.test"\n': "name the bounce domain",
    }
    for toml, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            make_config(tmp_path, toml)


def test_could_not_check_keeps_the_last_verdict(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from gateway.config import load_config
    from gateway.dnsauth.state import states
    from gateway.server import operator_store
    from tests.dnsserver import BlackHole

    config = tmp_path / "gateway.toml"
    data = f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
    config.write_text(data + env.toml("allow"))
    assert main(["-c", str(config), "dns", "check", "good.test"]) == 0
    with BlackHole() as hole:
        resolver = f"{env.server.host}:{env.server.port}"
        config.write_text(
            data
            + env.toml("allow")
            .replace(resolver, f"{hole.host}:{hole.port}")
            .replace("timeout = 3.0", "timeout = 0.5")
        )
        assert main(["-c", str(config), "dns", "check", "good.test"]) == 3
    out, _ = capsys.readouterr()
    assert "good.test: could_not_check" in out

    async def read() -> dict[str, str]:
        store = operator_store(load_config(config))
        await store.open()
        try:
            return {d: s.status for d, s in (await states(store)).items()}
        finally:
            await store.close()

    assert asyncio.run(read()) == {"good.test": "verified"}
