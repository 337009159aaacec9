"""``gateway-sendmail``, the installed script, run as PHP ``mail()`` and cron run
``/usr/sbin/sendmail``, against a real ``gateway serve`` process with the capture provider."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.providers.capture import CapturedEnvelope, read_outbox
from gateway.sendmail import (
    EX_DATAERR,
    EX_NOUSER,
    EX_UNAVAILABLE,
    EX_USAGE,
    parse_arguments,
    prepare,
    read_message,
)
from gateway.store.sqlite import SqliteStore
from tests.conftest import wait_until
from tests.ops.conftest import ServeProcess
from tests.redisserver import free_port

SENDMAIL = Path(sys.executable).parent / "gateway-sendmail"
MAX_SIZE = 4096


@dataclass
class Running:
    config_file: Path
    data: Path
    port: int

    def outbox(self) -> list[CapturedEnvelope]:
        return read_outbox(self.data / "outbox")

    def stored_messages(self) -> int:
        async def count() -> int:
            store = SqliteStore(self.data / "spool", all_shards=True)
            await store.open()
            try:
                return sum((await store.counts()).values())
            finally:
                await store.close()

        return asyncio.run(count())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("sendmail")
    port = free_port()
    config_file = root / "gateway.toml"
    config_file.write_text(
        f"""[gateway]
hostname = "gw.test"
data_dir = "data"

[smtp]
max_message_size = {MAX_SIZE}

[[smtp.listeners]]
name = "local"
address = "127.0.0.1"
port = {port}
tls = "none"
"""
    )
    serve = ServeProcess(config_file, root)
    try:
        wait_until(lambda: " ready (smtp" in serve.text(), 30, "the gateway to listen")
        yield Running(config_file, root / "data", port)
    finally:
        serve.stop()


def sendmail(
    *args: str, stdin: bytes, config: Path | None = None, server: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if config is not None:
        env["GATEWAY_CONFIG"] = str(config)
    if server is not None:
        env["GATEWAY_SENDMAIL_SERVER"] = server
    return subprocess.run(
        [str(SENDMAIL), *args], input=stdin, env=env, capture_output=True, timeout=60
    )


def captured(gateway: Running, recipient: str) -> list[email.message.Message]:
    wait_until(
        lambda: any(e.recipient == recipient for e in gateway.outbox()), 30, f"mail to {recipient}"
    )
    return [
        email.message_from_bytes(Path(e.file).read_bytes(), policy=email.policy.default)
        for e in gateway.outbox()
        if e.recipient == recipient
    ]


# PHP's mail("php@example.net", "Order 42", $body, "From: shop@example.com") pipes this to
# `sendmail -t -i` (php.ini's default sendmail_path), with bare LF line ends.
PHP_MESSAGE = (
    b"To: php@example.net\n"
    b"Subject: Order 42\n"
    b"X-PHP-Originating-Script: 33:checkout.php\n"
    b"From: shop@example.com\n"
    b"\n"
    b"Thank you for your order.\n"
    b".\n"
    b"A line that is only a dot, above, is text under -i.\n"
)


def test_php_mail_with_t_i_ends_in_the_outbox(gateway: Running) -> None:
    result = sendmail("-t", "-i", stdin=PHP_MESSAGE, config=gateway.config_file)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    [message] = captured(gateway, "php@example.net")
    assert message["Subject"] == "Order 42"
    assert message["From"] == "shop@example.com"
    assert message["Date"] and message["Message-ID"], "the gateway adds what RFC 5322 requires"
    body = message.get_content().replace("\r\n", "\n")
    assert "\n.\nA line that is only a dot" in body
    [envelope] = [e for e in gateway.outbox() if e.recipient == "php@example.net"]
    assert envelope.mail_from == "shop@example.com"


# cronie runs `sendmail -FCronDaemon -i -odi -oem -oi -t -f root`; Debian's cron
# `sendmail -i -FCronDaemon -B8BITMIME -oem <MAILTO>`. Both write a From of their own.
CRON_MESSAGE = (
    b"From: root (Cron Daemon)\n"
    b"To: ops@example.net\n"
    b"Subject: Cron <root@box> /usr/local/bin/backup\n"
    b"Content-Type: text/plain; charset=UTF-8\n"
    b"X-Cron-Env: <SHELL=/bin/sh>\n"
    b"\n"
    b"backup: 3 files copied\n"
)


def test_cron_invocations_end_in_the_outbox(gateway: Running) -> None:
    cronie = sendmail(
        *("-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"),
        stdin=CRON_MESSAGE,
        config=gateway.config_file,
    )
    assert cronie.returncode == 0, cronie.stderr
    [message] = captured(gateway, "ops@example.net")
    assert message["Subject"] == "Cron <root@box> /usr/local/bin/backup"
    [envelope] = [e for e in gateway.outbox() if e.recipient == "ops@example.net"]
    assert envelope.mail_from == "root@gw.test", "an unqualified sender gets the gateway's name"

    debian = sendmail(
        *("-i", "-FCronDaemon", "-B8BITMIME", "-oem", "cron@example.net"),
        stdin=CRON_MESSAGE.replace(b"To: ops@", b"To: cron@"),
        config=gateway.config_file,
    )
    assert debian.returncode == 0, debian.stderr
    [message] = captured(gateway, "cron@example.net")
    assert message["Date"] and message["Message-ID"]


def test_a_bare_message_gets_a_from_and_ends_at_a_lone_dot(gateway: Running) -> None:
    # `echo ... | sendmail -f monitor -F "Disk Monitor" admin@example.net`: no header at all.
    result = sendmail(
        *("-f", "monitor@example.com", "-F", "Disk Monitor", "--", "admin@example.net"),
        stdin=b"disk /var is 91% full\n.\nnot part of the message\n",
        config=gateway.config_file,
    )
    assert result.returncode == 0, result.stderr
    [message] = captured(gateway, "admin@example.net")
    assert message["From"] == "Disk Monitor <monitor@example.com>"
    assert message.get_content().replace("\r\n", "\n") == "disk /var is 91% full\n"


def test_no_recipient_is_a_usage_error_and_queues_nothing(gateway: Running) -> None:
    before = gateway.stored_messages()
    bare = sendmail("-i", stdin=b"Subject: nobody\n\nhello\n", config=gateway.config_file)
    assert bare.returncode == EX_USAGE
    assert b"gateway-sendmail: no recipients" in bare.stderr
    headers = sendmail("-t", "-i", stdin=b"Subject: nobody\n\nhi\n", config=gateway.config_file)
    assert headers.returncode == EX_USAGE
    assert b"no recipient addresses found in the message header" in headers.stderr
    assert gateway.stored_messages() == before


def test_an_unreachable_gateway_is_unavailable_never_tempfail(tmp_path: Path) -> None:
    # EX_TEMPFAIL (75) would tell PHP's mail() the message was queued: it returns true on it.
    port = free_port()  # nothing listens there
    result = sendmail(
        "-t", "-i", stdin=PHP_MESSAGE, config=tmp_path / "absent.toml", server=f"127.0.0.1:{port}"
    )
    assert result.returncode == EX_UNAVAILABLE
    assert f"cannot reach the gateway at 127.0.0.1:{port}".encode() in result.stderr


def test_a_message_over_the_size_limit_is_refused_whole(gateway: Running) -> None:
    before = gateway.stored_messages()
    big = b"To: big@example.net\nSubject: big\n\n" + b"x" * 70 + b"\n"
    result = sendmail("-t", "-i", stdin=big * 100, config=gateway.config_file)
    assert result.returncode == EX_DATAERR
    assert f"accepts at most {MAX_SIZE}".encode() in result.stderr
    assert gateway.stored_messages() == before
    assert not [e for e in gateway.outbox() if e.recipient == "big@example.net"]


def test_one_refused_recipient_sends_nothing(gateway: Running) -> None:
    before = gateway.stored_messages()
    result = sendmail(
        "-i",
        "good@example.net",
        "bad\x7frecipient@example.net",
        stdin=b"Subject: half\n\nall or nothing\n",
        config=gateway.config_file,
    )
    assert result.returncode == EX_NOUSER, result.stderr
    assert b"refused the recipient <bad\x7frecipient@example.net>: 501" in result.stderr
    assert gateway.stored_messages() == before
    assert not [e for e in gateway.outbox() if e.recipient == "good@example.net"]


def test_unsupported_modes_are_usage_errors(tmp_path: Path) -> None:
    for args in (["-bs"], ["-q"], ["-f"]):
        result = sendmail(*args, stdin=b"", config=tmp_path / "absent.toml")
        assert result.returncode == EX_USAGE, args
        assert result.stderr.startswith(b"gateway-sendmail: ")


# --- the pure parts ---------------------------------------------------------------------------


def test_flags_as_callers_write_them() -> None:
    call = parse_arguments(["-oi", "-fsender@x.test", "-FThe Name", "-oem", "-t", "--", "-a@x"])
    assert call.ignore_dots and call.from_headers
    assert (call.sender, call.full_name, call.recipients) == ("sender@x.test", "The Name", ["-a@x"])
    assert parse_arguments(["-f", "<>", "a@x"]).sender == ""


def test_bcc_is_a_recipient_but_not_a_header() -> None:
    call = parse_arguments(["-t", "-i"])
    raw = b"To: a@x.test\nBcc: hidden@x.test,\n  other@x.test\nSubject: s\n\nbody\n"
    prepared = prepare(call, read_message(raw, call.ignore_dots), "host.test")
    assert prepared.recipients == ["a@x.test", "hidden@x.test", "other@x.test"]
    assert b"Bcc" not in prepared.data and b"other@" not in prepared.data
    assert prepared.data.endswith(b"Subject: s\n\nbody\n")
