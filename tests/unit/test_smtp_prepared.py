"""``PreparedSMTP`` leaves a protocol in exactly the state aiosmtpd's own constructor leaves.

If an aiosmtpd upgrade changes ``SMTP.__init__``, the first test fails: re-mirror it in
``gateway/smtp_prepared.py`` (keeping the per-connection work cheap) and update the hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import ssl
import types
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Session

import gateway.smtp_prepared
from gateway.smtp import GatewaySMTP, SubmissionHandler
from gateway.smtp_prepared import MIRRORED_INIT_SHA256

PER_INSTANCE = {"_stream_reader_wr", "_strong_reader", "_closed", "_source_traceback"}
"""Objects made fresh for every connection: compared by type only."""


def test_mirrors_the_installed_aiosmtpd() -> None:
    source = inspect.getsource(SMTP.__init__)
    assert hashlib.sha256(source.encode()).hexdigest() == MIRRORED_INIT_SHA256, (
        "aiosmtpd's SMTP.__init__ changed: re-mirror it in gateway/smtp_prepared.py"
    )


class HandlerWithAuth:
    """A handler with its own AUTH mechanism and every hook style aiosmtpd looks for."""

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Any) -> str:
        return "250 OK"

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def normalized(protocol: SMTP) -> dict[str, Any]:
    def norm(value: Any) -> Any:
        if isinstance(value, types.MethodType) and value.__self__ is protocol:
            return ("own method", value.__func__)
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}, list(value)  # order matters too
        if isinstance(value, tuple):
            return type(value), tuple(norm(v) for v in value)
        return value

    return {
        key: type(value) if key in PER_INSTANCE else norm(value)
        for key, value in vars(protocol).items()
    }


def stock(loop: asyncio.AbstractEventLoop, handler: Any, **kwargs: Any) -> GatewaySMTP:
    protocol = GatewaySMTP.__new__(GatewaySMTP)
    SMTP.__init__(protocol, handler, loop=loop, **kwargs)
    return protocol


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": "gw.test", "ident": "ESP gateway", "auth_require_tls": False},
        {"hostname": "gw.test", "data_size_limit": 1000, "enable_SMTPUTF8": True, "timeout": 5},
        {"hostname": "gw.test", "auth_exclude_mechanism": ["LOGIN"], "command_call_limit": 7},
        {"hostname": "gw.test", "command_call_limit": {"*": 3, "RCPT": 9}},
        {"hostname": "gw.test", "authenticator": lambda *a: AuthResult(success=False)},
        {"hostname": "gw.test", "proxy_protocol_timeout": 10, "require_starttls": True},
        {"hostname": "gw.test", "tls_context": ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)},
    ],
)
@pytest.mark.parametrize("handler_type", [HandlerWithAuth, "submission"])
def test_same_state_as_aiosmtpd(
    loop: asyncio.AbstractEventLoop, kwargs: dict[str, Any], handler_type: Any
) -> None:
    handler = (
        object.__new__(SubmissionHandler) if handler_type == "submission" else HandlerWithAuth()
    )
    expected = normalized(stock(loop, handler, **kwargs))
    for _ in range(2):  # the first builds the tables, the second uses them
        assert normalized(GatewaySMTP(handler, loop=loop, **kwargs)) == expected


def test_refuses_what_aiosmtpd_refuses(loop: asyncio.AbstractEventLoop) -> None:
    handler = HandlerWithAuth()
    for bad, error in (
        ({"proxy_protocol_timeout": 0}, ValueError),
        ({"command_call_limit": {"*": "3"}}, TypeError),
        ({"command_call_limit": 2.5}, TypeError),
    ):
        with pytest.raises(error):
            stock(loop, handler, hostname="x", **bad)
        with pytest.raises(error):
            GatewaySMTP(handler, hostname="x", loop=loop, **bad)


def test_command_lines_are_sanitized_only_when_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import aiosmtpd.smtp

    assert aiosmtpd.smtp.sanitized_log is gateway.smtp_prepared._sanitized_log
    masked: list[bytes] = []
    real = aiosmtpd.smtp.sanitize
    monkeypatch.setattr(aiosmtpd.smtp, "sanitize", lambda text: masked.append(text) or real(text))
    log = logging.getLogger("mail.log")
    line = b"AUTH PLAIN c2VjcmV0\r\n"
    with caplog.at_level(logging.INFO, logger="mail.log"):
        aiosmtpd.smtp.sanitized_log(log.debug, "readline: %r", line)
        assert masked == [], "DEBUG is off: nothing to mask, nothing logged"
        aiosmtpd.smtp.sanitized_log(log.info, ">> %r", line)
    assert masked == [line]
    assert "c2VjcmV0" not in caplog.text and "********" in caplog.text
