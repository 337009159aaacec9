"""An independent client: swaks (a Perl SMTP tool, not Python) submits to the gateway.

swaks is a system package (Debian ``swaks``, with ``libnet-ssleay-perl`` for TLS) that
``scripts/test.sh`` installs; without it these tests fail rather than skip, so a missing tool
cannot pass silently.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.passwords import hash_password
from tests.conftest import Certificates, GatewayThread, Sink, wait_until
from tests.integration.test_smtp_tls_auth import PASSWORD, USERNAME, submission_config

BODY = (
    b"From: App <app@example.com>\r\nTo: <user@example.org>\r\nSubject: Sent by swaks\r\n"
    b"Message-ID: <swaks-test@example.com>\r\n\r\nHello from swaks\r\n.leading dot\r\n"
)


@functools.cache
def swaks() -> str:
    path = shutil.which("swaks")
    if path is None:
        pytest.fail("swaks is not on PATH: run scripts/test.sh, which installs it")
    support = subprocess.run([path, "--support"], capture_output=True, text=True, timeout=30)
    if "=== TLS supported" not in support.stdout:
        pytest.fail(
            "swaks has no TLS support (Debian package libnet-ssleay-perl): run scripts/test.sh"
        )
    return path


@pytest.fixture
def gw(tmp_path, certificates, sink, gateway_factory) -> GatewayThread:
    return gateway_factory(
        submission_config(tmp_path, certificates, sink, hash_password(PASSWORD, log2_n=10))
    )


def run_swaks(
    tmp_path: Path, certificates: Certificates, port: int, *options: str
) -> subprocess.CompletedProcess[str]:
    message = tmp_path / "message.eml"
    # swaks ends the data with CRLF "." CRLF itself, so the file stops short of the last CRLF.
    message.write_bytes(BODY.removesuffix(b"\r\n"))
    return subprocess.run(
        [
            swaks(),
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            "--ehlo",
            "swaks.test",
            "--tls-verify",
            "--tls-ca-path",
            str(certificates.ca_file),
            "--auth-user",
            USERNAME,
            "--auth-password",
            PASSWORD,
            "--from",
            "app@example.com",
            "--to",
            "user@example.org",
            "--data",
            f"@{message}",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_submits_with_auth_over_starttls(
    tmp_path: Path, certificates: Certificates, sink: Sink, gw: GatewayThread, mechanism: str
) -> None:
    """swaks verifies our certificate, upgrades with STARTTLS, authenticates and submits;
    the message reaches the sink intact and swaks sees an enhanced 250 for it."""
    result = run_swaks(tmp_path, certificates, gw.port("sub"), "--tls", "--auth", mechanism)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    assert "~> AUTH " + mechanism in result.stdout
    assert "<~  235 2.7.0 " in result.stdout
    assert "<~  250 2.0.0 OK queued as " in result.stdout
    wait_until(lambda: len(sink.messages) == 1, what="the message at the sink")
    received = sink.messages[0]
    assert (received.mail_from, received.rcpt_tos) == ("app@example.com", ["user@example.org"])
    assert received.data.endswith(BODY)
    assert b"\tby gw.test with ESMTPSA id " in received.data


def test_swaks_pipelines_over_implicit_tls(
    tmp_path: Path, certificates: Certificates, sink: Sink, gw: GatewayThread
) -> None:
    """swaks on the implicit-TLS listener, pipelining MAIL/RCPT/DATA (RFC 2920)."""
    result = run_swaks(
        tmp_path,
        certificates,
        gw.port("smtps"),
        "--tls-on-connect",
        "--auth",
        "PLAIN",
        "--pipeline",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.0.0 OK queued as " in result.stdout
    wait_until(lambda: len(sink.messages) == 1, what="the message at the sink")
    assert sink.messages[0].data.endswith(BODY)


def test_swaks_is_refused_without_tls(
    tmp_path: Path, certificates: Certificates, sink: Sink, gw: GatewayThread
) -> None:
    """Without STARTTLS the gateway offers no AUTH, so swaks cannot authenticate and nothing
    is queued."""
    result = run_swaks(tmp_path, certificates, gw.port("sub"), "--auth", "PLAIN")
    assert result.returncode != 0
    assert "Host did not advertise authentication" in result.stdout + result.stderr
    assert "<-  250-STARTTLS" in result.stdout and "AUTH" not in result.stdout
    assert sum(gw.call(gw.gateway.store.counts()).values()) == 0
    assert sink.messages == []
