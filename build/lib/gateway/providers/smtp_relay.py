"""``smtp``: relay to a smarthost with aiosmtplib, reusing a small pool of connections."""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

from gateway.config import SmtpProviderSection
from gateway.message import SendResult
from gateway.providers.base import (
    OutboundMessage,
    Provider,
    ProviderCheckFailed,
    address_problem,
    classify_smtp_reply,
)

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPConnectTimeoutError,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPReadTimeoutError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class SmtpRelayProvider(Provider):
    """Relays through one smarthost: up to ``pool_size`` sessions, kept open between sends."""

    def __init__(self, name: str, settings: SmtpProviderSection, local_hostname: str) -> None:
        super().__init__(name)
        self.settings = settings
        self.local_hostname = local_hostname
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._tls_context: ssl.SSLContext | None = None

    async def start(self) -> None:
        if self.settings.tls != "none":
            context = ssl.create_default_context(cafile=self.settings.ca_file or None)
            if not self.settings.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls_context = context

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await _quit_quietly(client)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            local_hostname=self.local_hostname,
            timeout=s.timeout,
            use_tls=s.tls == "implicit",
            start_tls=True if s.tls == "starttls" else False,
            tls_context=self._tls_context,
            validate_certs=s.verify_tls,
        )
        await client.connect()
        await greet(client)
        if s.username:
            await client.login(s.username, s.password)
        return client

    async def check(self) -> str:
        """Connect, greet, log in when configured, and quit: no mail is sent."""
        s = self.settings
        try:
            client = await self._connect()
        except aiosmtplib.SMTPAuthenticationError as e:
            raise ProviderCheckFailed(f"login refused: {e.code} {e.message}") from None
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException) as e:
            raise ProviderCheckFailed(f"cannot connect to {s.host}:{s.port}: {e}") from None
        tls = "plain" if s.tls == "none" else "TLS"
        await _quit_quietly(client)
        login = f", logged in as {s.username}" if s.username else ""
        return f"connected to {s.host}:{s.port} ({tls}){login}"

    async def send(self, message: OutboundMessage) -> SendResult:
        for address in (message.mail_from, message.recipient):
            problem = address_problem(address)
            if problem:
                return SendResult.hard_fail(problem)
        async with self._slots:
            reused = bool(self._idle)
            try:
                client = self._idle.pop() if reused else await self._connect()
            except aiosmtplib.SMTPAuthenticationError as e:
                return SendResult.soft_fail(f"{self.name}: login refused: {e.code} {e.message}")
            except aiosmtplib.SMTPResponseException as e:
                return classify_smtp_reply(e.code, e.message)
            except _CONNECTION_ERRORS as e:
                return SendResult.soft_fail(f"{self.name}: cannot connect: {e}")
            result, healthy = await self.transact(client, message)
            if not healthy and reused:
                # A pooled session may have been closed by the server while idle: one fresh try.
                await _quit_quietly(client)
                try:
                    client = await self._connect()
                except _CONNECTION_ERRORS as e:
                    return SendResult.soft_fail(f"{self.name}: cannot connect: {e}")
                except aiosmtplib.SMTPException as e:
                    return SendResult.soft_fail(f"{self.name}: cannot connect: {e}")
                result, healthy = await self.transact(client, message)
            if healthy:
                self._idle.append(client)
            else:
                await _quit_quietly(client)
            return result

    async def transact(
        self, client: aiosmtplib.SMTP, message: OutboundMessage
    ) -> tuple[SendResult, bool]:
        """One MAIL/RCPT/DATA; the flag says whether the session can be reused."""
        options = ["SMTPUTF8"] if message.smtp_utf8 else []
        if client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if client.supports_extension("pipelining"):
            return await self._pipelined(client, message, options)
        if message.smtp_utf8 and not client.supports_extension("smtputf8"):
            return SendResult.hard_fail(f"{self.name}: next hop does not support SMTPUTF8"), True
        if client.supports_extension("size"):
            options = [f"SIZE={len(message.raw)}", *options]
        encoding = "utf-8" if message.smtp_utf8 else "ascii"
        handed_over = False
        try:
            await client.mail(message.mail_from, options=options, encoding=encoding)
            await client.rcpt(message.recipient, encoding=encoding)
            handed_over = True  # from DATA on, a lost reply leaves the outcome unknown
            reply = (await client.data(message.raw)).message
        except aiosmtplib.SMTPResponseException as e:
            healthy = e.code != 421 and client.is_connected and await _reset(client)
            return classify_smtp_reply(e.code, e.message), healthy
        except UnicodeEncodeError:
            return SendResult.hard_fail(f"{self.name}: non-ASCII address needs SMTPUTF8"), True
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException) as e:
            return self._lost(e, handed_over), False
        return SendResult.sent(f"250 {reply}", provider_message_id=_queue_id(reply)), True

    def _lost(self, error: BaseException, handed_over: bool) -> SendResult:
        """The session broke. After the message content went out, the next hop may have
        accepted it (RFC 1047): the outcome is unknown, so it must not be sent elsewhere now."""
        if handed_over:
            return SendResult.unknown(f"{self.name}: no reply after the message data: {error}")
        return SendResult.soft_fail(f"{self.name}: connection lost: {error}")

    async def _pipelined(
        self, client: aiosmtplib.SMTP, message: OutboundMessage, options: list[str]
    ) -> tuple[SendResult, bool]:
        """MAIL, RCPT and DATA in one write (RFC 2920): two round trips instead of four.

        aiosmtplib has no pipelining, and its protocol drops replies that arrive while none is
        awaited, so for the transaction the transport is lent to ``_ReplyReader`` and handed
        back afterwards; aiosmtplib keeps connecting, TLS, AUTH, RSET and QUIT.
        """
        if message.smtp_utf8 and not client.supports_extension("smtputf8"):
            return SendResult.hard_fail(f"{self.name}: next hop does not support SMTPUTF8"), True
        encoding = "utf-8" if message.smtp_utf8 else "ascii"
        try:
            sender = message.mail_from.encode(encoding)
            recipient = message.recipient.encode(encoding)
        except UnicodeEncodeError:
            return SendResult.hard_fail(f"{self.name}: non-ASCII address needs SMTPUTF8"), True
        if client.supports_extension("size"):
            options = [f"SIZE={len(message.raw)}", *options]
        params = (" " + " ".join(options)).encode() if options else b""
        protocol = client.protocol
        transport = cast(asyncio.Transport | None, protocol.transport if protocol else None)
        if protocol is None or transport is None or transport.is_closing():
            return SendResult.soft_fail(f"{self.name}: connection lost"), False
        reader = _ReplyReader(self.settings.timeout)
        handed_over = False
        transport.set_protocol(reader)
        try:
            transport.write(
                b"MAIL FROM:<%s>%s\r\nRCPT TO:<%s>\r\nDATA\r\n" % (sender, params, recipient)
            )
            mail, rcpt, data = await reader.next(), await reader.next(), await reader.next()
            final = data
            if data[0] == 354:
                accepted = mail[0] == 250 and rcpt[0] in (250, 251)
                # With the envelope refused, end the data phase empty (RFC 2920 section 3.1).
                transport.write(_dot_stuffed(message.raw) if accepted else b".\r\n")
                handed_over = accepted
                final = await reader.next()
        except (OSError, TimeoutError, ValueError) as e:
            transport.close()
            return self._lost(e, handed_over), False
        finally:
            if reader.lost is None:
                transport.set_protocol(protocol)
        for (code, text), ok in ((mail, (250,)), (rcpt, (250, 251)), (final, (250,))):
            if code not in ok:
                return classify_smtp_reply(code, text), await _reset(client)
        return SendResult.sent(f"250 {final[1]}", provider_message_id=_queue_id(final[1])), True


class _ReplyReader(asyncio.Protocol):
    """Collects every SMTP reply that arrives, complete multi-line ones as ``(code, text)``."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.lost: BaseException | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._replies: collections.deque[tuple[int, str]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            self._lines.append(line)
            if line[3:4] != b"-":
                lines, self._lines = self._lines, []
                if not line[:3].isdigit():
                    self._fail(ValueError(f"malformed SMTP reply {line!r}"))
                    return
                text = "\n".join(x[4:].strip().decode("utf-8", "replace") for x in lines)
                self._replies.append((int(line[:3]), text))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the next hop closed the connection"))

    def eof_received(self) -> bool:
        self._fail(ConnectionError("the next hop closed the connection"))
        return False

    def _fail(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> tuple[int, str]:
        while not self._replies:
            if self.lost is not None:
                raise ConnectionError(str(self.lost))
            self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._waiter, self.timeout)
        return self._replies.popleft()


def _dot_stuffed(raw: bytes) -> bytes:
    """``raw`` as DATA content: CRLF lines, leading dots doubled, ``.`` line at the end."""
    if raw.count(b"\n") != raw.count(b"\r\n") or raw.count(b"\r") != raw.count(b"\r\n"):
        raw = normalize_message_line_endings(raw)  # a plugin's transform left a bare CR/LF
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    if raw.startswith(b"."):
        raw = b"." + raw
    return raw.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def greet(client: aiosmtplib.SMTP) -> None:
    """EHLO (HELO if refused) unless connecting already did, so the transaction can see the
    extensions (PIPELINING, SIZE, SMTPUTF8) from the first message on."""
    if client.last_ehlo_response is not None or client.last_helo_response is not None:
        return
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        await client.helo()


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """RSET after a refused transaction; whether the session is still usable."""
    try:
        await client.rset()
    except Exception:
        return False
    return client.is_connected


def _queue_id(reply: str) -> str:
    """The next hop's queue id when its reply names one ("... queued as ABC123")."""
    words = reply.split()
    for i, word in enumerate(words[:-1]):
        if word.lower() == "as" and i > 0 and words[i - 1].lower() == "queued":
            return words[i + 1].strip("<>.")
    return ""


async def _quit_quietly(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await asyncio.wait_for(client.quit(), timeout=5)
    except Exception:  # best effort: the session is being thrown away anyway
        client.close()
