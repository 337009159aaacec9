"""Connection set-up costs no per-connection introspection (issue 25).

aiosmtpd 1.4.6 runs ``inspect.getmembers`` and ``dir()`` over the protocol and the handler in
``SMTP.__init__``, for every connection: ~120 µs of a 1.1 ms message when clients connect once
per message. ``gateway/smtp_prepared.py`` does that once per class and handler. These tests
count the introspection calls made while real clients connect to a real gateway, and fail if
an aiosmtpd upgrade (or a change of ours) brings them back to the per-connection path.
"""

from __future__ import annotations

import inspect
import smtplib
from collections.abc import Callable
from typing import Any

import aiosmtpd.smtp
import pytest

import gateway.smtp_prepared
from tests.conftest import GatewayThread, Sink, make_config, wait_until

LISTENER = """
[smtp]
listeners = [{{ name = "plain", port = 0, tls = "none" }}]

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

MESSAGE = b"From: <app@example.com>\r\nTo: <user@example.org>\r\nSubject: s\r\n\r\nHello\r\n"


class IntrospectionCounter:
    """Counts calls of ``inspect.getmembers``, ``inspect.signature`` and ``dir`` on the
    gateway's protocol and handler objects (the sink, stock aiosmtpd, is not counted);
    ``dir`` is patched in aiosmtpd's module and ours, where it is looked up first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, int] = {"getmembers": 0, "signature": 0, "dir": 0}
        monkeypatch.setattr(inspect, "getmembers", self._counting("getmembers", inspect.getmembers))
        monkeypatch.setattr(inspect, "signature", self._counting("signature", inspect.signature))
        counting_dir = self._counting("dir", dir)
        for module in (aiosmtpd.smtp, gateway.smtp_prepared):
            monkeypatch.setattr(module, "dir", counting_dir, raising=False)

    def _counting(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(target: Any = None, *args: Any, **kwargs: Any) -> Any:
            owner = getattr(target, "__self__", target)
            if type(owner).__module__.startswith("gateway") or (
                isinstance(owner, type) and owner.__module__.startswith("gateway")
            ):
                self.calls[name] += 1
            return function(target, *args, **kwargs) if target is not None else function()

        return counted


def send_one(port: int, index: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.sendmail("app@example.com", ["user@example.org"], MESSAGE + b"%d\r\n" % index)


def test_new_connections_do_no_introspection(
    tmp_path: Any,
    sink: Sink,
    gateway_factory: Callable[..., GatewayThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = gateway_factory(make_config(tmp_path, LISTENER, port=sink.port))
    port = gw.port("plain")
    send_one(port, 0)  # the first connection of a listener may prepare its tables
    wait_until(lambda: len(sink.messages) == 1, what="the first message at the sink")
    counter = IntrospectionCounter(monkeypatch)
    for index in range(1, 6):
        send_one(port, index)
    wait_until(lambda: len(sink.messages) == 6, what="six messages at the sink")
    assert counter.calls == {"getmembers": 0, "signature": 0, "dir": 0}
