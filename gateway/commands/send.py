"""``gateway send``: build a test message from flags and submit it over SMTP.

For trying the gateway with nothing but Python installed (no swaks): it prints the queue id
from the gateway's ``250`` reply, which ``gateway queue show`` takes.
"""

from __future__ import annotations

import argparse
import email.policy
import mimetypes
import os
import smtplib
import ssl
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from gateway.commands.context import config_path
from gateway.config import Config, load_config


def add_commands(commands: Any) -> None:
    """Register ``send`` on the CLI's subparsers."""
    send = commands.add_parser(
        "send", help="submit a test message over SMTP and print its queue id"
    )
    send.add_argument("--from", dest="sender", required=True, help="sender address")
    send.add_argument(
        "--to", action="append", required=True, help="recipient address; repeat for several"
    )
    send.add_argument("--subject", default="Test from gateway send", help="the Subject")
    send.add_argument("--body", default="This is a test.\n", help="the text body")
    send.add_argument(
        "--attach", action="append", default=[], metavar="FILE", help="attach a file; repeatable"
    )
    send.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra header"
    )
    send.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="where to submit (default: the config's first SMTP listener, 127.0.0.1:2525)",
    )
    send.add_argument(
        "--tls",
        choices=["none", "starttls", "implicit"],
        help="default: as the config's first listener (none for the built-in one)",
    )
    send.add_argument(
        "--user", help="AUTH as this SMTP user; the password comes from $GATEWAY_SMTP_PASSWORD"
    )
    send.set_defaults(func=cmd_send)


def build_message(args: argparse.Namespace) -> EmailMessage:
    """The message the flags describe (the gateway adds Date, Message-ID and Received)."""
    message = EmailMessage()
    message["From"] = args.sender
    message["To"] = ", ".join(args.to)
    message["Subject"] = args.subject
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"--header {header!r}: expected 'Name: value'")
        message[name.strip()] = value.strip()
    message.set_content(args.body)
    for name in args.attach:
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SystemExit(f"--attach {name}: {e.strerror}") from None
        kind, _ = mimetypes.guess_type(path.name)
        maintype, _, subtype = (kind or "application/octet-stream").partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
    return message


def _target(args: argparse.Namespace, config: Config) -> tuple[str, int, str]:
    listener = config.smtp.listeners[0] if config.smtp.listeners else None
    host, port = (listener.address, listener.port) if listener else ("127.0.0.1", 2525)
    if args.server:
        host, _, given = args.server.rpartition(":")
        if not host or not given.isdigit():
            raise SystemExit(f"--server {args.server!r}: expected HOST:PORT")
        port = int(given)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    tls = args.tls or (listener.tls if listener and not args.server else "none")
    return host.strip("[]"), port, tls


def cmd_send(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config))
    message = build_message(args)
    host, port, tls = _target(args, config)
    context = ssl.create_default_context()
    try:
        smtp = (
            smtplib.SMTP_SSL(host, port, timeout=30, context=context)
            if tls == "implicit"
            else smtplib.SMTP(host, port, timeout=30)
        )
        with smtp:
            smtp.ehlo()
            if tls == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if args.user:
                smtp.login(args.user, os.environ.get("GATEWAY_SMTP_PASSWORD", ""))
            code, reply = smtp.mail(args.sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, args.sender)
            for recipient in args.to:
                code, reply = smtp.rcpt(recipient)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
            code, reply = smtp.data(message.as_bytes(policy=email.policy.SMTP))
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
    except (OSError, smtplib.SMTPException) as e:
        print(f"gateway send: {host}:{port}: {_describe(e)}", file=sys.stderr)
        return 1
    print(reply.decode(errors="replace"))
    return 0


def _describe(error: BaseException) -> str:
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return "; ".join(
            f"<{r}> refused: {code} {text.decode(errors='replace')}"
            for r, (code, text) in error.recipients.items()
        )
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error
        said = text.decode(errors="replace") if isinstance(text, bytes) else text
        return f"{error.smtp_code} {said}"
    return str(error) or type(error).__name__
