"""``gateway-sendmail``: a ``/usr/sbin/sendmail`` for legacy callers (PHP ``mail()``, cron,
monitoring scripts) that hands the message to the gateway's local SMTP listener.

It takes the flags those callers use (``-t``, ``-i``/``-oi``, ``-f``, ``-F``, ``-oem``, ``--``,
recipients as arguments), reads the message on stdin, adds a ``From:`` when there is none (the
gateway adds ``Date:`` and ``Message-ID:``) and submits it in one SMTP transaction: every
recipient is accepted or nothing is sent, so a failure never leaves the message half-queued.
It keeps no queue of its own; when it cannot hand the message over it says why on stderr and
exits with a sysexits(3) code, as sendmail does.
"""

from __future__ import annotations

import email.utils
import getpass
import os
import re
import smtplib
import socket
import ssl
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import msgspec

from gateway.config import ListenerSection, is_loopback

EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_NOPERM = 77
EX_CONFIG = 78
# Never EX_TEMPFAIL (75): to a sendmail it means "queued, will retry", and PHP's mail() counts it
# as success. Having no queue, a message the gateway did not take is EX_UNAVAILABLE.

SYSTEM_CONFIG = Path("/etc/gateway/gateway.toml")
SERVER_VARIABLE = "GATEWAY_SENDMAIL_SERVER"
DEFAULT_SERVER = ("127.0.0.1", 2525, "none")
TIMEOUT = 60.0

# Flags that take a value, and their value may be glued on (``-fuser@x``) or the next argument.
_WITH_VALUE = frozenset("fFrCNRVBLhXOp")
# Flags sendmail and Postfix accept that change nothing for a hand-over to the gateway.
_IGNORED = frozenset("vUGnmsx")
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class Failure(Exception):
    """The message was not handed over: ``status`` is the sysexits code, the text says why."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass
class Invocation:
    """What the command line asks for."""

    recipients: list[str] = field(default_factory=list)
    sender: str | None = None
    full_name: str | None = None
    from_headers: bool = False
    ignore_dots: bool = False
    config: str | None = None


def parse_arguments(argv: Sequence[str]) -> Invocation:
    """Parse sendmail's command line (``-oi``, ``-fuser``, ``-f user``, ``--``, recipients)."""
    call = Invocation()
    arguments = list(argv)
    while arguments:
        argument = arguments.pop(0)
        if argument == "--":
            call.recipients.extend(arguments)
            break
        if not argument.startswith("-") or argument == "-":
            call.recipients.append(argument)
            continue
        flag, rest = argument[1], argument[2:]
        if flag in _WITH_VALUE:
            if not rest:
                if not arguments:
                    raise Failure(EX_USAGE, f"option -{flag} needs a value")
                rest = arguments.pop(0)
            _apply_valued(call, flag, rest)
        elif flag == "t" and not rest:
            call.from_headers = True
        elif flag == "i" and not rest:
            call.ignore_dots = True
        elif flag == "o":
            # -oi is -i; -oem, -oee, -odb, -oQ... only matter to a sendmail with its own queue.
            if rest == "i":
                call.ignore_dots = True
        elif flag == "b":
            if rest not in ("m", ""):
                raise Failure(
                    EX_USAGE, f"-b{rest} is not supported: gateway-sendmail only submits mail"
                )
        elif flag == "e" or (flag in _IGNORED and not rest):
            pass
        else:
            raise Failure(EX_USAGE, f"unknown option {argument}")
    return call


def _apply_valued(call: Invocation, flag: str, value: str) -> None:
    if flag in "fr":
        call.sender = "" if value in ("<>", "") else value.strip("<>")
    elif flag == "F":
        call.full_name = value
    elif flag == "C":
        call.config = value
    # -N dsn, -R return, -V envid, -B body, -L tag, -h hops, -X log, -O, -p: ignored.


def read_message(stream: bytes, ignore_dots: bool) -> bytes:
    """The message on stdin; without ``-i`` a line holding only ``.`` ends it."""
    if ignore_dots:
        return stream
    lines = stream.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.rstrip(b"\r\n") == b".":
            return b"".join(lines[:index])
    return stream


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """Header block (each line with its line break) and body. The header ends at the blank
    line, or at the first line that is not a header field (``echo hi | sendmail root``)."""
    lines = raw.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line in (b"\n", b"\r\n"):
            return b"".join(lines[:index]), b"".join(lines[index + 1 :])
        if index and line[:1] in (b" ", b"\t"):
            continue
        if _FIELD.match(line) is None:
            return b"".join(lines[:index]), b"".join(lines[index:])
    head = raw if not raw or raw.endswith((b"\n", b"\r")) else raw + b"\n"
    return head, b""


def _drop_bcc(head: bytes) -> bytes:
    """The header block without ``Bcc:`` fields (and their continuation lines)."""
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(b"bcc:")
        if not dropping:
            kept.append(line)
    return b"".join(kept)


@dataclass
class Prepared:
    """The envelope and the bytes that go into DATA."""

    sender: str
    recipients: list[str]
    data: bytes


def prepare(call: Invocation, raw: bytes, hostname: str) -> Prepared:
    """Envelope and final message: recipients from the arguments (and the headers with
    ``-t``), ``Bcc:`` removed, a ``From:`` added when the message has none."""
    head, body = split_message(raw)
    headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n")
    recipients = list(call.recipients)
    if call.from_headers:
        fields = [str(v) for name in ("to", "cc", "bcc") for v in headers.get_all(name, [])]
        found = [address for _, address in email.utils.getaddresses(fields) if address]
        if not found and not recipients:
            raise Failure(EX_USAGE, "no recipient addresses found in the message header (-t)")
        recipients.extend(found)
    addresses = [_qualify(a, hostname) for _, a in email.utils.getaddresses(recipients) if a]
    if not addresses:
        raise Failure(EX_USAGE, "no recipients: name them as arguments, or use -t")
    header_from = email.utils.parseaddr(str(headers.get("from", "")))[1]
    sender = call.sender
    if sender is None:
        sender = header_from or _login_name()
    sender = _qualify(sender, hostname) if sender else ""
    if headers.get("from") is None:
        author = sender or f"MAILER-DAEMON@{hostname}"
        line = email.utils.formataddr((call.full_name or "", author), charset="utf-8")
        head = f"From: {line}\n".encode() + head
    return Prepared(sender, list(dict.fromkeys(addresses)), _drop_bcc(head) + b"\n" + body)


def _qualify(address: str, hostname: str) -> str:
    """``root`` → ``root@<hostname>``, as sendmail qualifies local names (``$j``)."""
    return address if "@" in address else f"{address}@{hostname}"


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


# --- where the gateway is -----------------------------------------------------------------------


def find_server(config: str | None) -> tuple[str, int, str, str]:
    """``(host, port, tls, hostname)``: ``$GATEWAY_SENDMAIL_SERVER``, else the config's
    plain-text listener reachable on loopback (or its first listener), else 127.0.0.1:2525.

    Only ``[smtp] listeners`` and ``[gateway] hostname`` are read, so that a config whose
    secrets live in environment variables the caller does not have still serves."""
    given = os.environ.get(SERVER_VARIABLE)
    path = Path(config) if config else None
    if path is None and os.environ.get("GATEWAY_CONFIG"):
        path = Path(os.environ["GATEWAY_CONFIG"])
    if path is None and SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    hostname = socket.gethostname() or "localhost"
    host, port, tls = DEFAULT_SERVER
    if path is not None and not given:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            smtp = data.get("smtp", {})
            listeners = [
                msgspec.convert(each, ListenerSection) for each in smtp.get("listeners", [])
            ]
        except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError, AttributeError) as e:
            raise Failure(
                EX_CONFIG,
                f"cannot read the gateway's listeners from {path}: {e} "
                f"(name the server with ${SERVER_VARIABLE}=HOST:PORT, or another config with -C)",
            ) from None
        hostname = str(data.get("gateway", {}).get("hostname") or hostname)
        usable = [
            each
            for each in listeners
            if each.address in ("0.0.0.0", "::", "") or is_loopback(each.address)
        ]
        plain = [each for each in usable if each.tls == "none"]
        chosen = next(iter(plain or usable or listeners), None)
        if chosen is not None:
            host, port, tls = chosen.address, chosen.port, chosen.tls
    if given:
        name, _, number = given.rpartition(":")
        if not name or not number.isdigit():
            raise Failure(EX_CONFIG, f"${SERVER_VARIABLE}={given!r}: expected HOST:PORT")
        host, port, tls = name, int(number), "none"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host.strip("[]"), port, tls, hostname


# --- the hand-over ------------------------------------------------------------------------------


def submit(prepared: Prepared, host: str, port: int, tls: str) -> str:
    """One SMTP transaction; returns the gateway's ``250`` text (with the queue id)."""
    # The listener is on this host (loopback), which is what we trust; its certificate is
    # made for the names the world uses, so it is not checked against "127.0.0.1".
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    where = f"the gateway at {host}:{port}"
    try:
        client = (
            smtplib.SMTP_SSL(host, port, timeout=TIMEOUT, context=context)
            if tls == "implicit"
            else smtplib.SMTP(host, port, timeout=TIMEOUT)
        )
    except OSError as e:
        raise Failure(EX_UNAVAILABLE, f"cannot reach {where}: {e.strerror or e}") from None
    with client:
        try:
            return _transaction(client, prepared, tls, context, where)
        except smtplib.SMTPServerDisconnected as e:
            raise Failure(EX_UNAVAILABLE, f"{where} closed the connection: {e}") from None
        except OSError as e:
            raise Failure(EX_UNAVAILABLE, f"talking to {where}: {e.strerror or e}") from None


def _transaction(
    client: smtplib.SMTP, prepared: Prepared, tls: str, context: ssl.SSLContext, where: str
) -> str:
    client.ehlo()
    if tls == "starttls":
        client.starttls(context=context)
        client.ehlo()
    limit = int(client.esmtp_features.get("size", "0") or 0)
    data = _LINE_END.sub(b"\r\n", prepared.data)
    if limit and len(data) > limit:
        raise Failure(
            EX_DATAERR,
            f"message is {len(data)} bytes; {where} accepts at most {limit} "
            "(smtp.max_message_size)",
        )
    options = [f"SIZE={len(data)}"] if limit else []
    if client.has_extn("8bitmime") and any(byte > 127 for byte in data):
        options.append("BODY=8BITMIME")
    envelope = prepared.sender + "".join(prepared.recipients)
    if client.has_extn("smtputf8") and not envelope.isascii():
        options.append("SMTPUTF8")
    code, reply = client.mail(prepared.sender, options)
    if code != 250:
        raise _refusal(code, reply, f"sender <{prepared.sender}>", where)
    for recipient in prepared.recipients:
        code, reply = client.rcpt(recipient)
        if code not in (250, 251):
            client.rset()  # all or nothing: no recipient gets a copy the others do not
            raise _refusal(code, reply, f"recipient <{recipient}>", where)
    code, reply = client.data(data)
    if code != 250:
        raise _refusal(code, reply, "message", where)
    return reply.decode(errors="replace")


def _refusal(code: int, reply: bytes, what: str, where: str) -> Failure:
    text = f"{where} refused the {what}: {code} {reply.decode(errors='replace')}"
    enhanced = reply[:5].decode(errors="replace")
    if 400 <= code < 500:
        return Failure(EX_UNAVAILABLE, f"{text} (temporary: send again later)")
    if code == 552 or enhanced.startswith(("5.3.4", "5.6.")):
        return Failure(EX_DATAERR, text)
    if code == 530 or enhanced.startswith("5.7."):
        return Failure(EX_NOPERM, text)
    if what.startswith("recipient"):
        return Failure(EX_NOUSER, text)
    return Failure(EX_UNAVAILABLE, text)


def run(argv: Sequence[str], stdin: bytes) -> str:
    """Parse, prepare and submit; the gateway's reply, or ``Failure``."""
    call = parse_arguments(argv)
    host, port, tls, hostname = find_server(call.config)
    prepared = prepare(call, read_message(stdin, call.ignore_dots), hostname)
    return submit(prepared, host, port, tls)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        run(arguments, sys.stdin.buffer.read())
    except Failure as e:
        print(f"gateway-sendmail: {e}", file=sys.stderr)
        return e.status
    except smtplib.SMTPException as e:
        print(f"gateway-sendmail: unexpected SMTP reply: {e}", file=sys.stderr)
        return EX_SOFTWARE
    return 0


if __name__ == "__main__":
    sys.exit(main())
