"""SMTP ingress policy on a plain listener, driven by smtplib and by raw bytes on a socket.

The tenant trusts 127.0.0.1 only, so 127.0.0.2 stands in for a stranger. Every refusal is
checked for its SMTP code, its RFC 3463 enhanced code, and for leaving the spool and the sink
untouched.
"""

from __future__ import annotations

import datetime as dt
import email
import email.utils
import re
import smtplib
import socket
from collections.abc import Iterator, Sequence

import pytest

from gateway.store.base import DeliveryFilter
from tests.conftest import GatewayThread, Sink, make_config, wait_until

MAX_SIZE = 2048
MAX_RECIPIENTS = 3

INGRESS = """
[smtp]
listeners = [{{ name = "plain", port = 0, tls = "none" }}]
max_message_size = {max_size}
max_recipients = {max_recipients}

[tenants.acme]
smtp_networks = ["127.0.0.1/32"]

[delivery]
providers = ["relay"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""

SENDER = "app@example.com"
RECIPIENT = "user@example.org"
BODY = (
    b"From: App <app@example.com>\r\nTo: <user@example.org>\r\nSubject: Ingress test\r\n"
    b"Message-ID: <ingress-test@example.com>\r\n\r\nHello\r\n"
)
SMUGGLED = (
    b"MAIL FROM:<smuggler@evil.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"From: <smuggler@evil.example>\r\nSubject: smuggled\r\n\r\nsmuggled"
)

_ENHANCED = re.compile(r"^(\d)\d\d[ -]([245])\.\d{1,3}\.\d{1,3} ")


def assert_reply(code: int, text: bytes | str, expected_code: int, enhanced: str) -> None:
    """``code``/``text`` as smtplib returns them: the expected code and enhanced code, exactly."""
    if isinstance(text, bytes):
        text = text.decode()
    assert (code, text.split(" ", 1)[0]) == (expected_code, enhanced), f"{code} {text}"


def assert_enhanced_lines(lines: list[str]) -> None:
    """Every line carries an enhanced code whose class matches its reply code."""
    for line in lines:
        match = _ENHANCED.match(line)
        assert match is not None and match.group(1) == match.group(2), line


def submit(
    client: smtplib.SMTP,
    sender: str,
    recipients: list[str],
    body: bytes,
    options: Sequence[str] = (),
) -> str:
    """MAIL, RCPT, DATA with every reply checked, code and enhanced code; the queue id."""
    assert_reply(*client.mail(sender, options), 250, "2.1.0")
    for recipient in recipients:
        assert_reply(*client.rcpt(recipient), 250, "2.1.5")
    code, text = client.data(body)
    assert_reply(code, text, 250, "2.0.0")
    return text.decode().rsplit(" ", 1)[1]


class RawClient:
    """SMTP over a bare socket, for byte sequences no client library would send.

    ``reply`` checks that every line carries an enhanced status code; only the greeting,
    the replies to HELO/EHLO (``greet``) and 334/354 continuations may go without.
    """

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)
        )
        self.reader = self.sock.makefile("rb")
        greeting = self._lines()
        assert greeting[0].startswith("220 "), greeting

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _lines(self) -> list[str]:
        lines: list[str] = []
        while True:
            line = self.reader.readline()
            assert line.endswith(b"\r\n"), f"connection closed mid-reply after {lines}"
            lines.append(line[:-2].decode())
            if line[3:4] != b"-":
                return lines

    def reply(self) -> list[str]:
        """One reply, all its lines, without line endings."""
        lines = self._lines()
        if lines[0][:3] not in ("334", "354"):
            assert_enhanced_lines(lines)
        return lines

    def command(self, data: bytes) -> str:
        """Send one command; return its single-line reply."""
        self.send(data)
        lines = self.reply()
        assert len(lines) == 1, lines
        return lines[0]

    def greet(self, line: bytes) -> list[str]:
        """Send a HELO or EHLO line, however malformed; return the reply."""
        self.send(line + b"\r\n")
        return self._lines()

    def ehlo(self, name: bytes = b"client.test") -> list[str]:
        return self.greet(b"EHLO " + name)

    def quit_and_drain(self) -> list[str]:
        """Send QUIT and return every line the server sends until it closes."""
        self.send(b"QUIT\r\n")
        lines = [line.decode().rstrip("\r\n") for line in self.reader.readlines()]
        assert_enhanced_lines(lines)
        return lines

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def gw(tmp_path, sink: Sink, gateway_factory) -> GatewayThread:
    config = make_config(
        tmp_path, INGRESS, port=sink.port, max_size=MAX_SIZE, max_recipients=MAX_RECIPIENTS
    )
    return gateway_factory(config)


@pytest.fixture
def raw(gw: GatewayThread) -> Iterator[RawClient]:
    client = RawClient(gw.port("plain"))
    yield client
    client.close()


def queued(gw: GatewayThread) -> int:
    return sum(gw.call(gw.gateway.store.counts()).values())


def assert_nothing_queued(gw: GatewayThread, sink: Sink) -> None:
    assert queued(gw) == 0
    assert sink.messages == []


def send_control_message(gw: GatewayThread, sink: Sink) -> None:
    """Submit one good message and wait for it at the sink: afterwards the sink holds
    everything the gateway was ever going to deliver before it."""
    with smtplib.SMTP("127.0.0.1", gw.port("plain"), timeout=10) as client:
        client.ehlo("client.test")
        submit(client, SENDER, [RECIPIENT], BODY)
    wait_until(lambda: len(sink.messages) >= 1, what="the control message at the sink")


def test_trusted_address_submits_without_auth(gw: GatewayThread, sink: Sink) -> None:
    """127.0.0.1 is in the tenant's smtp_networks: it needs no AUTH, gets enhanced codes
    throughout, and its message reaches the sink byte-intact under the tenant's name."""
    with smtplib.SMTP("127.0.0.1", gw.port("plain"), timeout=10) as client:
        client.ehlo("client.test")
        message_id = submit(client, SENDER, [RECIPIENT], BODY)
    wait_until(lambda: len(sink.messages) == 1, what="the message at the sink")
    received = sink.messages[0]
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [RECIPIENT])
    assert received.data.endswith(BODY)
    head = received.data[: -len(BODY)]
    assert head.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert b" with ESMTP id " in head
    stored = gw.call(gw.gateway.store.get_message(message_id))
    assert stored is not None and stored.tenant == "acme"


def test_untrusted_address_without_auth_is_refused(gw: GatewayThread, sink: Sink) -> None:
    """127.0.0.2 is in no tenant's networks: MAIL is 530 5.7.0 and no transaction starts."""
    with smtplib.SMTP(
        "127.0.0.1", gw.port("plain"), timeout=10, source_address=("127.0.0.2", 0)
    ) as client:
        client.ehlo("stranger.test")
        assert_reply(*client.mail(SENDER), 530, "5.7.0")
        assert_reply(*client.rcpt(RECIPIENT), 503, "5.5.1")
        assert_reply(*client.docmd("DATA"), 503, "5.5.1")
    assert_nothing_queued(gw, sink)


def test_ehlo_on_a_plain_listener(raw: RawClient, gw: GatewayThread) -> None:
    """EHLO lists the extensions the gateway implements; no STARTTLS without a TLS listener
    and no AUTH on a listener that is neither encrypted nor marked insecure_auth."""
    lines = raw.ehlo()
    assert lines[0] == "250-gw.test"
    assert all(line.startswith("250-") for line in lines[:-1]) and lines[-1].startswith("250 ")
    keywords = {line[4:] for line in lines[1:]}
    expected = ["PIPELINING", "ENHANCEDSTATUSCODES", f"SIZE {MAX_SIZE}", "8BITMIME", "SMTPUTF8"]
    assert set(expected) <= keywords, lines
    assert not any(k.startswith(("STARTTLS", "AUTH")) for k in keywords), lines


def test_every_reply_after_ehlo_carries_an_enhanced_code(raw: RawClient, gw: GatewayThread) -> None:
    """aiosmtpd's own replies (errors, NOOP, HELP, RSET, QUIT) are given enhanced codes too."""
    raw.ehlo()
    commands = [
        b"NOOP",
        b"HELP",
        b"VRFY someone",
        b"EXPN list",
        b"BOGUS",
        b"RCPT TO:<x@example.org>",
        b"DATA",
        b"MAIL FROM:<a@example.com> FOO=BAR",
        b"MAIL FROM:<a@example.com> SIZE=x",
        b"MAIL FROM:<a@example.com>",
        b"MAIL FROM:<b@example.com>",
        b"RCPT TO:<nobody>",
        b"RSET",
        b"STARTTLS",
        b"AUTH PLAIN",
    ]
    replies = [raw.command(c + b"\r\n") for c in commands]
    replies += raw.quit_and_drain()
    assert_enhanced_lines(replies)
    assert replies[-1].startswith("221 2.0.0")
    assert queued(gw) == 0


def test_pipelined_transaction(raw: RawClient, gw: GatewayThread, sink: Sink) -> None:
    """RFC 2920: MAIL, two RCPTs and DATA in one write get their replies in order."""
    lines = raw.ehlo()
    assert "250-PIPELINING" in lines
    raw.send(
        b"MAIL FROM:<app@example.com>\r\nRCPT TO:<user@example.org>\r\n"
        b"RCPT TO:<other@example.org>\r\nDATA\r\n"
    )
    replies = [raw.reply()[0] for _ in range(4)]
    assert [r[:9] for r in replies] == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354 End d"]
    raw.send(BODY + b".\r\n")
    assert raw.reply()[0].startswith("250 2.0.0 ")
    wait_until(lambda: len(sink.messages) == 2, what="both copies at the sink")
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == [
        "other@example.org",
        "user@example.org",
    ]
    assert all(m.data.endswith(BODY) for m in sink.messages)


def test_size_parameter_over_the_limit_is_refused_at_mail(gw: GatewayThread, sink: Sink) -> None:
    """SIZE equal to the limit is fine; one byte more is 552 5.3.4 before any data is sent."""
    with smtplib.SMTP("127.0.0.1", gw.port("plain"), timeout=10) as client:
        client.ehlo("client.test")
        assert_reply(*client.mail(SENDER, [f"SIZE={MAX_SIZE}"]), 250, "2.1.0")
        assert_reply(*client.rset(), 250, "2.0.0")
        assert_reply(*client.mail(SENDER, [f"SIZE={MAX_SIZE + 1}"]), 552, "5.3.4")
        assert_reply(*client.rcpt(RECIPIENT), 503, "5.5.1")
    assert_nothing_queued(gw, sink)


def _message_of_size(size: int) -> bytes:
    """BODY with a padding header and filler lines: exactly ``size`` bytes on the wire."""
    line = b"x" * 76 + b"\r\n"
    lines, pad = divmod(size - len(BODY) - len(b"X-Pad: \r\n"), len(line))
    message = b"X-Pad: " + b"p" * pad + b"\r\n" + BODY + line * lines
    assert len(message) == size
    return message


def test_oversized_data_is_refused(gw: GatewayThread, sink: Sink) -> None:
    """Without SIZE, DATA larger than max_message_size is read to the end and refused with
    552 5.3.4; a message of exactly the limit is accepted."""
    with smtplib.SMTP("127.0.0.1", gw.port("plain"), timeout=10) as client:
        client.ehlo("client.test")
        assert_reply(*client.mail(SENDER), 250, "2.1.0")
        assert_reply(*client.rcpt(RECIPIENT), 250, "2.1.5")
        assert_reply(*client.data(_message_of_size(MAX_SIZE + 1)), 552, "5.3.4")
        assert_reply(*client.noop(), 250, "2.0.0")
        assert_nothing_queued(gw, sink)
        submit(client, SENDER, [RECIPIENT], _message_of_size(MAX_SIZE))
    wait_until(lambda: len(sink.messages) == 1, what="the message of exactly the limit")
    assert sink.messages[0].data.endswith(_message_of_size(MAX_SIZE))


def test_recipients_beyond_the_limit_are_refused(gw: GatewayThread, sink: Sink) -> None:
    """The first max_recipients RCPTs are accepted, the next is 452 4.5.3; after RSET nothing
    was queued."""
    with smtplib.SMTP("127.0.0.1", gw.port("plain"), timeout=10) as client:
        client.ehlo("client.test")
        assert_reply(*client.mail(SENDER), 250, "2.1.0")
        for n in range(MAX_RECIPIENTS):
            assert_reply(*client.rcpt(f"user{n}@example.org"), 250, "2.1.5")
        assert_reply(*client.rcpt("one-too-many@example.org"), 452, "4.5.3")
        assert_reply(*client.rcpt("another@example.org"), 452, "4.5.3")
        assert_reply(*client.rset(), 250, "2.0.0")
    assert_nothing_queued(gw, sink)


def test_refused_recipient_is_not_queued(gw: GatewayThread, sink: Sink) -> None:
    """When the client goes on to DATA after a 452, only the accepted recipients are queued."""
    accepted = [f"user{n}@example.org" for n in range(MAX_RECIPIENTS)]
    with smtplib.SMTP("127.0.0.1", gw.port("plain"), timeout=10) as client:
        client.ehlo("client.test")
        assert_reply(*client.mail(SENDER), 250, "2.1.0")
        for recipient in accepted:
            assert_reply(*client.rcpt(recipient), 250, "2.1.5")
        assert_reply(*client.rcpt("one-too-many@example.org"), 452, "4.5.3")
        assert_reply(*client.data(BODY), 250, "2.0.0")
    deliveries = gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))
    assert sorted(d.recipient for d in deliveries) == accepted


@pytest.mark.parametrize(
    "separator",
    [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r"],
    ids=["LF.LF", "CRLF.LF", "LF.CRLF", "CR.CRLF", "CRLF.CR", "CR.CR"],
)
def test_smtp_smuggling_is_refused(
    raw: RawClient, gw: GatewayThread, sink: Sink, separator: bytes
) -> None:
    """A body that ends early for a lax parser and carries a second transaction is refused as
    one message (550 5.6.0): neither it nor the smuggled message is accepted, and the session
    stays in step — the next real transaction works and is all the sink ever sees."""
    raw.ehlo()
    assert raw.command(b"MAIL FROM:<app@example.com>\r\n").startswith("250 ")
    assert raw.command(b"RCPT TO:<user@example.org>\r\n").startswith("250 ")
    assert raw.command(b"DATA\r\n").startswith("354 ")
    raw.send(BODY + b"first" + separator + SMUGGLED + b"\r\n.\r\n")
    reply = raw.reply()
    assert len(reply) == 1 and reply[0].startswith("550 5.6.0 "), reply
    assert raw.command(b"NOOP\r\n").startswith("250 2.0.0")
    assert queued(gw) == 0
    send_control_message(gw, sink)
    assert [m.rcpt_tos for m in sink.messages] == [[RECIPIENT]]
    assert sink.messages[0].data.endswith(BODY)
    assert queued(gw) == 1


def _transaction(raw: RawClient, content: bytes) -> list[str]:
    raw.ehlo()
    assert raw.command(b"MAIL FROM:<app@example.com>\r\n").startswith("250 ")
    assert raw.command(b"RCPT TO:<user@example.org>\r\n").startswith("250 ")
    assert raw.command(b"DATA\r\n").startswith("354 ")
    raw.send(content + b".\r\n")
    return raw.reply()


HEAD = b"From: App <app@example.com>\r\nTo: <user@example.org>\r\n"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(HEAD + b"Subject: x\r\n\r\nbare\rCR inside\r\n", id="bare-CR-in-body"),
        pytest.param(HEAD + b"Subject: bare\rCR\r\n\r\nbody\r\n", id="bare-CR-in-header"),
        pytest.param(HEAD + b"Subject: x\r\n\r\nbare\nLF inside\r\n", id="bare-LF-in-body"),
        pytest.param(HEAD + b"Subject: x\r\n\r\nNUL \x00 inside\r\n", id="NUL-in-body"),
        pytest.param(HEAD + b"Subject\x00: x\r\n\r\nbody\r\n", id="NUL-in-header"),
        pytest.param(HEAD + b"Subject x\r\n\r\nbody\r\n", id="header-without-colon"),
        pytest.param(HEAD + b"Bad Name: x\r\n\r\nbody\r\n", id="space-in-header-name"),
        pytest.param(b" folded: first\r\n" + HEAD + b"\r\nbody\r\n", id="leading-continuation"),
        pytest.param(b"To: <user@example.org>\r\nSubject: x\r\n\r\nbody\r\n", id="no-From"),
        pytest.param(b"To: <user@example.org>\r\n\r\nFrom: late@example.com\r\n", id="late-From"),
    ],
)
def test_malformed_content_is_refused(
    raw: RawClient, gw: GatewayThread, sink: Sink, content: bytes
) -> None:
    """Content that is not a well-formed RFC 5322 message is 550 5.6.0 and nothing is queued."""
    reply = _transaction(raw, content)
    assert len(reply) == 1 and reply[0].startswith("550 5.6.0 "), reply
    raw.quit_and_drain()
    assert_nothing_queued(gw, sink)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(HEAD + b"Subject: x\r\n\r\n" + b"x" * 1201 + b"\r\n", id="long-body-line"),
        pytest.param(HEAD + b"X-Long: " + b"y" * 1000 + b"\r\n\r\nbody\r\n", id="long-header"),
    ],
)
def test_lines_over_998_octets_are_refused(
    raw: RawClient, gw: GatewayThread, sink: Sink, content: bytes
) -> None:
    """RFC 5321 4.5.3.1.6 / RFC 5322 2.1.1: refused, not re-encoded (the bytes may be signed).
    aiosmtpd refuses the line as it reads it; the content check (554 5.6.0) stands behind it."""
    reply = _transaction(raw, content)
    assert len(reply) == 1 and reply[0].startswith("500 5.5.2 Line too long"), reply
    raw.quit_and_drain()
    assert_nothing_queued(gw, sink)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(b'MAIL FROM:<"a\rb"@example.com>', id="CR-in-quoted-sender"),
        pytest.param(b"MAIL FROM:<a\rb@example.com>", id="CR-in-sender"),
        pytest.param(b"MAIL FROM:<a\x00b@example.com>", id="NUL-in-sender"),
        pytest.param(b'MAIL FROM:<"a\x00b"@example.com>', id="NUL-in-quoted-sender"),
        pytest.param(b"MAIL FROM:<\xff\xfe@example.com>", id="invalid-UTF-8-in-sender"),
        pytest.param(b"MAIL FROM:<a@example.com> SIZE=1\r0", id="CR-in-parameter"),
        pytest.param(b"MAIL FROM:<a@example.com> BODY=8BITMIME\x00", id="NUL-in-parameter"),
    ],
)
def test_control_characters_in_mail_are_refused(
    raw: RawClient, gw: GatewayThread, sink: Sink, command: bytes
) -> None:
    """A CR, a NUL or bytes that are not UTF-8 in the sender or its parameters are a 5xx with
    an enhanced code (not a 451 from a spool that cannot store them), and no transaction
    starts."""
    raw.ehlo()
    reply = raw.command(command + b"\r\n")
    assert_enhanced_lines([reply])
    assert reply.startswith("5"), reply
    assert raw.command(b"RCPT TO:<user@example.org>\r\n").startswith("503 5.5.1 ")
    raw.quit_and_drain()
    assert_nothing_queued(gw, sink)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(b'RCPT TO:<"x\ry"@example.org>', id="CR-in-quoted-recipient"),
        pytest.param(b"RCPT TO:<x\ry@example.org>", id="CR-in-recipient"),
        pytest.param(b"RCPT TO:<x\x00y@example.org>", id="NUL-in-recipient"),
        pytest.param(b'RCPT TO:<"x\x00y"@example.org>', id="NUL-in-quoted-recipient"),
        pytest.param(b"RCPT TO:<\xc3@example.org>", id="invalid-UTF-8-in-recipient"),
        pytest.param(b"RCPT TO:<user@example.org> NOTIFY=\x00", id="NUL-in-parameter"),
    ],
)
def test_control_characters_in_rcpt_are_refused(
    raw: RawClient, gw: GatewayThread, sink: Sink, command: bytes
) -> None:
    """A CR, a NUL or bytes that are not UTF-8 in a recipient are a 5xx with an enhanced code
    and add no recipient."""
    raw.ehlo()
    assert raw.command(b"MAIL FROM:<app@example.com>\r\n").startswith("250 ")
    reply = raw.command(command + b"\r\n")
    assert_enhanced_lines([reply])
    assert reply.startswith("5"), reply
    assert raw.command(b"DATA\r\n").startswith("503 5.5.1 ")
    raw.quit_and_drain()
    assert_nothing_queued(gw, sink)


@pytest.mark.parametrize(
    "greeting",
    [
        b"EHLO evil.example\rX-Injected: yes",
        b"HELO evil.example\rX-Injected: yes",
        b"EHLO evil.example\x00X-Injected: yes",
        b"EHLO evil.example\tX-Injected: yes",
        b"EHLO evil.example ([10.0.0.1]) by trusted.example; X-Injected: yes",
        b"EHLO \xc3\xa9vil.example\xff\xfe",
    ],
    ids=["CR-EHLO", "CR-HELO", "NUL", "TAB", "fake-trace", "non-UTF-8"],
)
def test_client_name_cannot_inject_header_lines(
    raw: RawClient, gw: GatewayThread, sink: Sink, greeting: bytes
) -> None:
    """Whatever the HELO/EHLO name holds, the prepended Received header is one well-formed
    ASCII header with its two continuation lines, and names only our own client address."""
    assert raw.greet(greeting)[-1].startswith("250 ")
    assert raw.command(b"MAIL FROM:<app@example.com>\r\n").startswith("250 ")
    assert raw.command(b"RCPT TO:<user@example.org>\r\n").startswith("250 ")
    assert raw.command(b"DATA\r\n").startswith("354 ")
    raw.send(BODY + b".\r\n")
    assert raw.reply()[0].startswith("250 2.0.0 ")
    wait_until(lambda: len(sink.messages) == 1, what="the message at the sink")
    data = sink.messages[0].data
    assert data.endswith(BODY)
    head = data[: -len(BODY)]
    assert head.isascii() and b"\x00" not in head
    lines = head.split(b"\r\n")
    assert lines[-1] == b"" and b"\r" not in head.replace(b"\r\n", b"")
    assert b"\n" not in head.replace(b"\r\n", b"")
    *received, date = lines[:-1]
    assert date.startswith(b"Date: ")  # BODY has none: RFC 5322 requires one
    first, *continuations = received
    assert re.fullmatch(rb"Received: from [A-Za-z0-9.\-:\[\]_]+ \(\[127\.0\.0\.1\]\)", first), first
    assert len(continuations) == 2 and all(c.startswith(b"\t") for c in continuations)
    protocol = b"SMTP" if greeting.startswith(b"HELO") else b"ESMTP"
    assert continuations[0].startswith(b"\tby gw.test with " + protocol + b" id ")
    assert re.findall(rb"\(\[([^\]]*)\]\)", head) == [b"127.0.0.1"]


def test_smtputf8_address_is_accepted_and_relayed(gw: GatewayThread, sink: Sink) -> None:
    """RFC 6531: with the SMTPUTF8 parameter a non-ASCII local part is accepted, stored as
    SMTPUTF8 and relayed to the sink with its addresses and content unchanged."""
    sender, recipient = "jöran@example.com", "zoë.ñ@example.org"
    body = (
        "From: Jöran <jöran@example.com>\r\nTo: <zoë.ñ@example.org>\r\nSubject: Grüße\r\n"
        "Message-ID: <utf8@example.com>\r\n\r\nHej då\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", gw.port("plain"), timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("smtputf8")
        message_id = submit(client, sender, [recipient], body, ["SMTPUTF8", "BODY=8BITMIME"])
    wait_until(lambda: len(sink.messages) == 1, what="the message at the sink")
    received = sink.messages[0]
    assert (received.mail_from, received.rcpt_tos) == (sender, [recipient])
    assert received.data.endswith(body)
    stored = gw.call(gw.gateway.store.get_message(message_id))
    assert stored is not None and stored.smtp_utf8 and stored.mail_from == sender


def test_a_message_without_date_or_message_id_gets_both_and_times_are_utc(
    gw: GatewayThread, sink: Sink
) -> None:
    """RFC 5322 requires Date and asks for Message-ID: added when missing (as Postfix's cleanup
    does), kept when present; every time the gateway writes is ``+0000``, never ``-0000``."""
    bare = b"From: <app@example.com>\r\nTo: <user@example.org>\r\nSubject: bare\r\n\r\nHi\r\n"
    with smtplib.SMTP("127.0.0.1", gw.port("plain"), timeout=10) as client:
        client.ehlo("client.test")
        submit(client, SENDER, [RECIPIENT], bare)
        submit(client, SENDER, [RECIPIENT], b"Date: Thu, 1 Jan 2026 00:00:00 +0100\r\n" + BODY)
    wait_until(lambda: len(sink.messages) == 2, what="both messages at the sink")
    added = email.message_from_bytes(sink.messages[0].data)
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", added["Message-ID"]), added["Message-ID"]
    assert added["Date"].endswith(" +0000"), added["Date"]
    assert email.utils.parsedate_to_datetime(added["Date"]).utcoffset() == dt.timedelta(0)
    assert added["Received"].endswith(" +0000"), added["Received"]
    kept = email.message_from_bytes(sink.messages[1].data)
    assert kept.get_all("Date") == ["Thu, 1 Jan 2026 00:00:00 +0100"]
    assert kept.get_all("Message-ID") == ["<ingress-test@example.com>"]
