"""``smtp``: relay to a smarthost with aiosmtplib, reusing a small pool of connections."""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiosmtplib

from gateway.config import SmtpProviderSection
from gateway.message import SendResult
from gateway.providers.base import OutboundMessage, Provider, address_problem, classify_smtp_reply

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
        if s.username:
            await client.login(s.username, s.password)
        return client

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
            result, healthy = await self._transact(client, message)
            if not healthy and reused:
                # A pooled session may have been closed by the server while idle: one fresh try.
                await _quit_quietly(client)
                try:
                    client = await self._connect()
                except _CONNECTION_ERRORS as e:
                    return SendResult.soft_fail(f"{self.name}: cannot connect: {e}")
                except aiosmtplib.SMTPException as e:
                    return SendResult.soft_fail(f"{self.name}: cannot connect: {e}")
                result, healthy = await self._transact(client, message)
            if healthy:
                self._idle.append(client)
            else:
                await _quit_quietly(client)
            return result

    async def _transact(
        self, client: aiosmtplib.SMTP, message: OutboundMessage
    ) -> tuple[SendResult, bool]:
        """One MAIL/RCPT/DATA; the flag says whether the session can be reused."""
        options = ["SMTPUTF8"] if message.smtp_utf8 else []
        if client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        try:
            _, reply = await client.sendmail(
                message.mail_from, [message.recipient], message.raw, mail_options=options
            )
        except aiosmtplib.SMTPRecipientsRefused as e:
            refused = e.recipients[0]
            return classify_smtp_reply(refused.code, refused.message), True
        except aiosmtplib.SMTPNotSupported as e:
            return SendResult.hard_fail(f"{self.name}: {e}"), True
        except aiosmtplib.SMTPResponseException as e:
            healthy = e.code not in (421,) and client.is_connected
            return classify_smtp_reply(e.code, e.message), healthy
        except _CONNECTION_ERRORS as e:
            return SendResult.soft_fail(f"{self.name}: connection lost: {e}"), False
        except aiosmtplib.SMTPException as e:
            return SendResult.soft_fail(f"{self.name}: {e}"), False
        return SendResult.sent(f"250 {reply}", provider_message_id=_queue_id(reply)), True


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
