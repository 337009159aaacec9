"""``require_tls`` per listener: on a STARTTLS listener that requires it, a trusted network
gets nothing done before STARTTLS; it is on by default for a STARTTLS listener that is not on
loopback. ``check-config`` refuses trusted networks wider than the configured prefix unless the
tenant opts in explicitly."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import Certificates, GatewayThread, Sink, make_config
from tests.integration.smtp_client import RawSession, code
from tests.integration.test_cli import gateway_cli, write_config

REQUIRE_TLS = """
[smtp]
listeners = [
    {{ name = "sub", port = 0, tls = "starttls", require_tls = true }},
    {{ name = "open", port = 0, tls = "starttls" }},
]

[smtp.tls]
cert_file = "{cert}"
key_file = "{key}"

[tenants.default]
smtp_networks = ["127.0.0.1/32"]

[delivery]
providers = ["relay"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""


@pytest.fixture
def gw(tmp_path, sink: Sink, certificates: Certificates, gateway_factory) -> GatewayThread:
    config = make_config(
        tmp_path,
        REQUIRE_TLS,
        port=sink.port,
        cert=certificates.cert_file,
        key=certificates.key_file,
    )
    return gateway_factory(config)


def test_a_trusted_network_must_starttls_first(
    gw: GatewayThread, certificates: Certificates
) -> None:
    with RawSession(gw.port("sub")) as session:
        assert session.reply().startswith("220")
        assert "STARTTLS" in session.command("EHLO client.test")
        for command in ("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.org>", "DATA", "VRFY x"):
            reply = session.command(command)
            assert code(reply) == (530, "5.7.0"), f"{command}: {reply}"
    with smtplib.SMTP("127.0.0.1", gw.port("sub"), timeout=10) as client:
        client.starttls(context=certificates.client_context())
        client.ehlo("client.test")
        assert client.mail("a@example.com")[0] == 250


def test_a_loopback_starttls_listener_does_not_require_tls_by_default(gw: GatewayThread) -> None:
    with smtplib.SMTP("127.0.0.1", gw.port("open"), timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("a@example.com")[0] == 250


def test_require_tls_defaults() -> None:
    """On for a STARTTLS listener not bound to loopback; off on loopback and without TLS;
    an explicit value wins."""
    from gateway.config import ListenerSection

    assert ListenerSection(name="a", port=587, address="0.0.0.0").requires_tls()
    assert ListenerSection(name="a", port=587, address="192.0.2.1").requires_tls()
    assert not ListenerSection(name="a", port=587, address="127.0.0.1").requires_tls()
    assert not ListenerSection(name="a", port=587, address="::1").requires_tls()
    assert not ListenerSection(name="a", port=465, address="0.0.0.0", tls="implicit").requires_tls()
    assert not ListenerSection(
        name="a", port=587, address="0.0.0.0", require_tls=False
    ).requires_tls()
    with pytest.raises(ConfigError, match="require_tls: needs tls"):
        parse_config(
            '[smtp]\nlisteners = [{ name = "l", port = 25, tls = "none", require_tls = true }]\n'
        )


@pytest.mark.parametrize(
    ("network", "refused"),
    [
        ("0.0.0.0/0", True),
        ("10.0.0.0/8", True),
        ("10.1.0.0/16", False),
        ("::/0", True),
        ("2001:db8::/32", True),
        ("2001:db8:1::/48", False),
    ],
)
def test_check_config_refuses_wide_trusted_networks(
    tmp_path: Path, network: str, refused: bool
) -> None:
    body = f'[tenants.acme]\nsmtp_networks = ["{network}"]\n'
    result = gateway_cli("check-config", str(write_config(tmp_path, body)), cwd=tmp_path)
    if refused:
        assert result.returncode == 2
        assert "tenants.acme.smtp_networks[0]" in result.stderr
        assert "allow_wide_smtp_networks" in result.stderr
        opted_in = write_config(tmp_path, body + "allow_wide_smtp_networks = true\n")
        assert gateway_cli("check-config", str(opted_in), cwd=tmp_path).returncode == 0
    else:
        assert result.returncode == 0, result.stderr
