"""Sender authorization: a tenant's SMTP user sends only as its own domains, in the envelope
(``553 5.7.1`` at MAIL) and in every author of the header (at DATA), whatever the trick: a
second ``From:``, a group, a display name without an address, an encoded word, a ``Sender:``.
Duplicate ``From:``/``Sender:``/``Date:`` are refused ``550 5.6.0``; ``MAIL FROM:<>`` only for a
tenant that allows it. The HTTP API applies the same policy (tests/api/test_auth.py)."""

from __future__ import annotations

import base64

import pytest

from gateway.passwords import hash_password
from tests.conftest import GatewayThread, Sink, make_config
from tests.integration.smtp_client import RawSession, code

PASSWORD = "s3cret pass"
POLICY = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[tenants.acme]
sending_domains = ["acme.test"]

[[tenants.acme.smtp_users]]
username = "acme-app"
password_hash = "{password_hash}"

[tenants.globex]
sending_domains = ["globex.test"]
allow_null_sender = true

[[tenants.globex.smtp_users]]
username = "globex-app"
password_hash = "{password_hash}"

[tenants.open]

[[tenants.open.smtp_users]]
username = "open-app"
password_hash = "{password_hash}"

[delivery]
providers = ["relay"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD, log2_n=10)


@pytest.fixture
def gw(tmp_path, sink: Sink, gateway_factory, password_hash: str) -> GatewayThread:
    return gateway_factory(
        make_config(tmp_path, POLICY, port=sink.port, password_hash=password_hash)
    )


def logged_in(gw: GatewayThread, user: str) -> RawSession:
    session = RawSession(gw.port("dev"))
    assert session.reply().startswith("220")
    assert session.command("EHLO client.test").startswith("250")
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    assert session.command(f"AUTH PLAIN {token}").startswith("235")
    return session


def mail_from(gw: GatewayThread, user: str, sender: str) -> str:
    with logged_in(gw, user) as session:
        return session.command(f"MAIL FROM:<{sender}>")


@pytest.mark.parametrize(
    ("user", "sender", "expected"),
    [
        ("acme-app", "app@acme.test", (250, "2.1.0")),
        ("acme-app", "app@mail.acme.test", (250, "2.1.0")),
        ("acme-app", "APP@ACME.TEST", (250, "2.1.0")),
        ("acme-app", "ceo@globex.test", (553, "5.7.1")),
        ("acme-app", "ceo@bank.example", (553, "5.7.1")),
        ("acme-app", "ceo@acme.test.bank.example", (553, "5.7.1")),
        ("acme-app", "", (553, "5.7.1")),
        ("globex-app", "", (250, "2.1.0")),
        ("open-app", "ceo@bank.example", (250, "2.1.0")),
        ("open-app", "ceo@globex.test", (553, "5.7.1")),
        ("open-app", "ceo@sub.acme.test", (553, "5.7.1")),
    ],
)
def test_envelope_sender_must_be_the_tenants(
    gw: GatewayThread, user: str, sender: str, expected: tuple[int, str]
) -> None:
    """A tenant with ``sending_domains`` sends from them (and subdomains) only; one without may
    use any domain that no other tenant lists; ``<>`` only where allowed."""
    reply = mail_from(gw, user, sender)
    assert code(reply) == expected, reply
    if expected[0] == 553:
        assert "Sender address rejected" in reply


def send(gw: GatewayThread, user: str, sender: str, header: str) -> str:
    with logged_in(gw, user) as session:
        assert session.command(f"MAIL FROM:<{sender}>").startswith("250")
        assert session.command("RCPT TO:<user@example.org>").startswith("250")
        assert session.command("DATA").startswith("354")
        return session.command(f"{header}To: user@example.org\r\nSubject: hi\r\n\r\nhi\r\n.")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("From: App <app@acme.test>\r\n", (250, "2.0.0")),
        ("From: =?utf-8?q?App_=C3=A9?= <app@acme.test>\r\n", (250, "2.0.0")),
        ("From: app@acme.test\r\nFrom: ceo@bank.example\r\n", (550, "5.6.0")),
        ("From: app@acme.test\r\nfrom: app@acme.test\r\n", (550, "5.6.0")),
        ("From: team: app@acme.test, ceo@bank.example;\r\n", (550, "5.7.1")),
        ("From: undisclosed:;\r\n", (550, "5.6.0")),
        ("From: Bank of Example\r\n", (550, "5.6.0")),
        ("From: root (Cron Daemon)\r\n", (250, "2.0.0")),
        ("From: =?utf-8?q?ceo=40bank=2Eexample?=\r\n", (550, "5.6.0")),
        ("From: ceo@bank.example <app@acme.test>\r\n", (550, "5.6.0")),
        ('From: "ceo@bank.example" <app@acme.test>\r\n', (250, "2.0.0")),
        ("From: Bank\r\n <ceo@bank.example>\r\n", (550, "5.7.1")),
        ("From: ceo@globex.test\r\n", (550, "5.7.1")),
        ("From: app@acme.test\r\nSender: ceo@bank.example\r\n", (550, "5.7.1")),
        ("From: app@acme.test\r\nSender: a@acme.test\r\nSender: a@acme.test\r\n", (550, "5.6.0")),
        (
            "From: app@acme.test\r\nDate: Fri, 4 Dec 2026 10:00:00 +0000\r\nDate: x\r\n",
            (550, "5.6.0"),
        ),
    ],
    ids=[
        "own",
        "encoded-display-name",
        "second-from",
        "second-from-lowercase",
        "group-with-foreign-member",
        "empty-group",
        "display-name-only",
        "unqualified-local-sender",
        "encoded-word-address",
        "unquoted-address-as-name",
        "quoted-address-as-name",
        "folded-foreign",
        "other-tenant",
        "foreign-sender",
        "second-sender",
        "second-date",
    ],
)
def test_every_author_in_the_header_must_be_the_tenants(
    gw: GatewayThread, sink: Sink, header: str, expected: tuple[int, str]
) -> None:
    reply = send(gw, "acme-app", "app@acme.test", header)
    assert code(reply) == expected, reply
    if expected[0] != 250:
        assert sink.messages == []
        assert sum(gw.call(gw.gateway.store.counts()).values()) == 0
