"""``gateway health``: is the gateway running with this config? Exit 0 if it answers, 1 if not.

Made for a container ``HEALTHCHECK`` and service monitors: it asks the running gateway's
``/healthz`` when ``[http]`` is on, and otherwise opens an SMTP session to a listener over
loopback and sends ``NOOP``. It never touches the store, so it cannot make a spool.
"""

from __future__ import annotations

import argparse
import smtplib
import ssl
import sys
from typing import Any

from gateway.commands.context import load
from gateway.config import Config, ConfigError, ListenerSection


def add_commands(commands: Any) -> None:
    """Register ``health`` on the CLI's subparsers."""
    health = commands.add_parser(
        "health",
        help="exit 0 if the running gateway answers (/healthz, or SMTP NOOP when HTTP is off)",
    )
    health.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)"
    )
    health.set_defaults(func=cmd_health)


def local_host(address: str) -> str:
    """Where a listener bound to ``address`` is reached from this host."""
    if address in ("", "0.0.0.0"):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address.strip("[]")


def check_http(config: Config, timeout: float) -> tuple[bool, str]:
    """``GET /healthz`` on the configured HTTP address."""
    import httpx

    host = local_host(config.http.address)
    url = f"http://{f'[{host}]' if ':' in host else host}:{config.http.port}/healthz"
    try:
        answer = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as e:
        return False, f"{url}: {e or type(e).__name__}"
    if answer.status_code != 200:
        return False, f"{url}: HTTP {answer.status_code}"
    return True, f"{url}: {answer.text.strip()}"


def check_smtp(listener: ListenerSection, timeout: float) -> tuple[bool, str]:
    """An SMTP session to ``listener`` on loopback: greeting, ``NOOP``, ``QUIT``."""
    host = local_host(listener.address)
    where = f"smtp listener {listener.name} at {host}:{listener.port}"
    # Only liveness is asked: the certificate names the public host, not the loopback address.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        client = (
            smtplib.SMTP_SSL(host, listener.port, timeout=timeout, context=context)
            if listener.tls == "implicit"
            else smtplib.SMTP(host, listener.port, timeout=timeout)
        )
        with client:
            code, reply = client.noop()
    except (OSError, smtplib.SMTPException) as e:
        return False, f"{where}: {e or type(e).__name__}"
    if code != 250:
        return False, f"{where}: NOOP answered {code} {reply.decode(errors='replace')}"
    return True, f"{where}: {code} {reply.decode(errors='replace')}"


def cmd_health(args: argparse.Namespace) -> int:
    try:
        config = load(args)
    except ConfigError as e:
        # Docker reserves exit status 2; an unreadable config is plainly "not healthy".
        print(f"DOWN: configuration error: {e}", file=sys.stderr)
        return 1
    if config.http.enabled:
        ok, detail = check_http(config, args.timeout)
    elif config.smtp.listeners:
        ok, detail = check_smtp(config.smtp.listeners[0], args.timeout)
    else:
        ok, detail = False, "nothing to ask: [http] is off and there is no SMTP listener"
    print(f"{'ok' if ok else 'DOWN'}: {detail}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
