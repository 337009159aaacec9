"""Submission with TLS and AUTH: smtplib and aiosmtplib against STARTTLS and implicit-TLS
listeners, relayed to a real sink; and the refusals that keep the gateway from being a relay.

The only tenant trusts no network, so every message here needs a successful AUTH.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from gateway.config import Config
from gateway.passwords import hash_password
from tests.conftest import Certificates, GatewayThread, Sink, make_config, wait_until

USERNAME = "app@acme.test"
PASSWORD = "c0rrect horse:battery staple"
SENDER = "app@example.com"
RECIPIENT = "user@example.org"
BODY = (
    b"From: App <app@example.com>\r\nTo: <user@example.org>\r\nSubject: TLS and AUTH\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <tls-auth-test@example.com>\r\n\r\n"
    b"Line one\r\n.leading dot survives\r\n\xc3\xa9 8-bit body\r\n"
)

SUBMISSION = """
[smtp]
listeners = [
    {{ name = "sub", port = 0, tls = "starttls" }},
    {{ name = "smtps", port = 0, tls = "implicit" }},
]

[smtp.tls]
cert_file = "{cert}"
key_file = "{key}"

[tenants.acme]
smtp_networks = []

[[tenants.acme.smtp_users]]
username = "{username}"
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


def submission_config(
    tmp_path: Path, certificates: Certificates, sink: Sink, password_hash: str
) -> Config:
    """Listeners ``sub`` (STARTTLS) and ``smtps`` (implicit TLS); one user; relay to ``sink``."""
    return make_config(
        tmp_path,
        SUBMISSION,
        cert=certificates.cert_file,
        key=certificates.key_file,
        username=USERNAME,
        password_hash=password_hash,
        port=sink.port,
    )


@pytest.fixture
def gw(tmp_path, certificates, sink, password_hash, gateway_factory) -> GatewayThread:
    return gateway_factory(submission_config(tmp_path, certificates, sink, password_hash))


def assert_reply(code: int, text: bytes | str, expected_code: int, enhanced: str) -> None:
    if isinstance(text, bytes):
        text = text.decode()
    assert (code, text.split(" ", 1)[0]) == (expected_code, enhanced), f"{code} {text}"


def assert_nothing_queued(gw: GatewayThread, sink: Sink) -> None:
    assert sum(gw.call(gw.gateway.store.counts()).values()) == 0
    assert sink.messages == []


def connect(gw: GatewayThread, listener: str, context: ssl.SSLContext) -> smtplib.SMTP:
    """An smtplib session that has said EHLO over TLS (after STARTTLS on ``sub``)."""
    port = gw.port(listener)
    if listener == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=10)
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        client.ehlo("client.test")
        assert_reply(*client.starttls(context=context), 220, "2.0.0")
    client.ehlo("client.test")
    return client


def submit_with_smtplib(
    gw: GatewayThread, listener: str, mechanism: str, context: ssl.SSLContext
) -> list[tuple[int, bytes]]:
    """AUTH without an initial response (the server sends the 334 challenges), then one
    message; every reply from AUTH on."""
    with connect(gw, listener, context) as client:
        client.user, client.password = USERNAME, PASSWORD
        authobject: Callable[..., str] = getattr(client, f"auth_{mechanism.lower()}")
        replies = [client.auth(mechanism, authobject, initial_response_ok=False)]
        replies.append(client.mail(SENDER))
        replies.append(client.rcpt(RECIPIENT))
        replies.append(client.data(BODY))
    return replies


def submit_with_aiosmtplib(
    gw: GatewayThread, listener: str, mechanism: str, context: ssl.SSLContext
) -> list[tuple[int, bytes]]:
    """AUTH with an initial response, then one message; every reply from AUTH on."""

    async def session() -> list[Any]:
        implicit = listener == "smtps"
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=gw.port(listener),
            local_hostname="client.test",
            use_tls=implicit,
            start_tls=not implicit,
            tls_context=context,
            timeout=10,
        )
        async with client:
            protocol = client.protocol
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            login = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            replies = [
                await login(USERNAME, PASSWORD),
                await client.mail(SENDER),
                await client.rcpt(RECIPIENT),
                await client.data(BODY),
            ]
        # Closing a TLS session ends with an exchange of close_notify; let it finish before
        # asyncio.run closes the loop, or the socket is left open.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while protocol is not None and protocol.transport is not None:
            assert loop.time() < deadline, "the client connection did not close"
            await asyncio.sleep(0.01)
        return replies

    return [(r.code, r.message.encode()) for r in asyncio.run(session())]


@pytest.mark.parametrize("listener", ["sub", "smtps"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("client", ["smtplib", "aiosmtplib"])
def test_authenticated_submission_over_tls_is_relayed_intact(
    gw: GatewayThread,
    sink: Sink,
    certificates: Certificates,
    caplog: pytest.LogCaptureFixture,
    client: str,
    mechanism: str,
    listener: str,
) -> None:
    """AUTH PLAIN/LOGIN over STARTTLS or implicit TLS: enhanced codes on every reply, no
    warning logged, the message reaches the sink with only a Received header prepended, and
    that header records the session as ESMTPSA (TLS and AUTH) on both kinds of listener."""
    submit = submit_with_smtplib if client == "smtplib" else submit_with_aiosmtplib
    with caplog.at_level(logging.INFO):
        auth, mail, rcpt, data = submit(gw, listener, mechanism, certificates.client_context())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert_reply(*auth, 235, "2.7.0")
    assert_reply(*mail, 250, "2.1.0")
    assert_reply(*rcpt, 250, "2.1.5")
    assert_reply(*data, 250, "2.0.0")
    wait_until(lambda: len(sink.messages) == 1, what="the message at the sink")
    received = sink.messages[0]
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [RECIPIENT])
    assert received.data.endswith(BODY)
    head = received.data[: -len(BODY)]
    assert head.startswith(
        b"Received: from client.test ([127.0.0.1])\r\n\tby gw.test with ESMTPSA id "
    )
    assert head.count(b"\r\n") == 3


@pytest.mark.parametrize(
    ("listener", "username", "password"),
    [
        ("sub", USERNAME, "wrong password"),
        ("smtps", USERNAME, "wrong password"),
        ("sub", "nobody@acme.test", PASSWORD),
        ("sub", USERNAME, PASSWORD.upper()),
    ],
    ids=["wrong-password-starttls", "wrong-password-implicit", "unknown-user", "case-changed"],
)
def test_bad_credentials_are_refused(
    gw: GatewayThread,
    sink: Sink,
    certificates: Certificates,
    listener: str,
    username: str,
    password: str,
) -> None:
    """A wrong password or unknown user is 535 5.7.8 for both mechanisms, and the session
    stays unauthenticated: MAIL is then 530 5.7.0."""
    with connect(gw, listener, certificates.client_context()) as client:
        client.user, client.password = username, password
        for mechanism in ("PLAIN", "LOGIN"):
            authobject = getattr(client, f"auth_{mechanism.lower()}")
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.auth(mechanism, authobject)
            assert_reply(refused.value.smtp_code, refused.value.smtp_error, 535, "5.7.8")
        assert_reply(*client.mail(SENDER), 530, "5.7.0")
        assert_reply(*client.rcpt(RECIPIENT), 503, "5.5.1")
    assert_nothing_queued(gw, sink)


def test_auth_before_starttls_is_refused(
    gw: GatewayThread, sink: Sink, certificates: Certificates
) -> None:
    """On the STARTTLS listener, EHLO offers no AUTH before TLS, AUTH there is 538 5.7.11
    (the credentials are not checked), and AUTH appears once the session is encrypted."""
    plain = base64.b64encode(f"\0{USERNAME}\0{PASSWORD}".encode()).decode()
    with smtplib.SMTP("127.0.0.1", gw.port("sub"), timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")
        assert_reply(*client.docmd("AUTH", f"PLAIN {plain}"), 538, "5.7.11")
        assert_reply(*client.docmd("AUTH", "LOGIN"), 538, "5.7.11")
        assert_reply(*client.mail(SENDER), 530, "5.7.0")
        assert_reply(*client.starttls(context=certificates.client_context()), 220, "2.0.0")
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    assert_nothing_queued(gw, sink)


def test_tls_without_auth_is_not_enough(
    gw: GatewayThread, sink: Sink, certificates: Certificates
) -> None:
    """Encryption alone grants nothing: with no trusted network, MAIL needs AUTH (530 5.7.0)."""
    for listener in ("sub", "smtps"):
        with connect(gw, listener, certificates.client_context()) as client:
            assert_reply(*client.mail(SENDER), 530, "5.7.0")
    assert_nothing_queued(gw, sink)


def test_aborted_auth_gets_exactly_one_reply(
    gw: GatewayThread, sink: Sink, certificates: Certificates
) -> None:
    """RFC 4954: a client that answers a challenge with "*" gets one 501 and the session stays
    in step (the next command's reply is its own)."""
    with connect(gw, "sub", certificates.client_context()) as client:
        assert client.docmd("AUTH", "PLAIN")[0] == 334
        assert_reply(*client.docmd("*"), 501, "5.7.0")
        assert_reply(*client.noop(), 250, "2.0.0")
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert_reply(*client.docmd("not base64!"), 501, "5.5.2")
        assert_reply(*client.noop(), 250, "2.0.0")
        assert_reply(*client.mail(SENDER), 530, "5.7.0")
    assert_nothing_queued(gw, sink)


def _ehlo_keywords(client: smtplib.SMTP) -> list[str]:
    code, text = client.ehlo("client.test")
    assert code == 250
    return text.decode().split("\n")[1:]


def test_ehlo_advertises_extensions(gw: GatewayThread, certificates: Certificates) -> None:
    """STARTTLS listener: STARTTLS but no AUTH before TLS, AUTH but no STARTTLS after.
    Implicit-TLS listener: AUTH from the start, never STARTTLS. Both: the rest of the set."""
    common = ["PIPELINING", "ENHANCEDSTATUSCODES", "SIZE 26214400", "8BITMIME", "SMTPUTF8"]
    with smtplib.SMTP("127.0.0.1", gw.port("sub"), timeout=10) as client:
        before = _ehlo_keywords(client)
        assert_reply(*client.starttls(context=certificates.client_context()), 220, "2.0.0")
        after = _ehlo_keywords(client)
    with smtplib.SMTP_SSL(
        "127.0.0.1", gw.port("smtps"), context=certificates.client_context(), timeout=10
    ) as client:
        implicit = _ehlo_keywords(client)
    for keywords in (before, after, implicit):
        assert set(common) <= set(keywords), keywords
    assert "STARTTLS" in before and not any(k.startswith("AUTH") for k in before)
    assert "STARTTLS" not in after and "AUTH LOGIN PLAIN" in after
    assert "STARTTLS" not in implicit and "AUTH LOGIN PLAIN" in implicit
