"""``mx``: direct delivery to each recipient domain's mail exchangers.

For each delivery: look up the domain's MX hosts (implicit MX to the domain's own A/AAAA when
it has none; a null MX or a domain that does not exist bounces), apply the domain's MTA-STS
policy (``gateway/mta_sts.py``), then try the hosts in preference order and each host's
addresses in turn. A host that cannot be reached, refuses the session or answers ``4xx``
before the message data passes the delivery on to the next one; a ``5xx`` is final, and so
is a lost reply after the data (it may have been accepted).

TLS: ``opportunistic`` STARTTLS when offered, certificate unchecked (RFC 7435), falling back
to plain text when the handshake fails. An MTA-STS policy in ``enforce`` mode (or
``starttls = "required"``) allows only hosts the policy names, and only over TLS with a
certificate valid for the host name; otherwise the delivery waits (temporary failure).

Sessions are pooled per MX address and TLS mode (``idle_connections``) and reused with the
``smtp`` relay's pipelined transaction; ``connections_per_domain`` bounds sessions per
recipient domain. Temporary failures here concern the destination, so they never open the
provider's circuit breaker.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import cast

import aiosmtplib

from gateway.clock import Clock, SystemClock
from gateway.config import MxProviderSection, SmtpProviderSection
from gateway.message import SendResult
from gateway.mta_sts import MtaSts, Policy
from gateway.mx_lookup import DnsResolver, LookupFailed, MxHost
from gateway.providers.base import (
    OutboundMessage,
    Provider,
    ProviderCheckFailed,
    address_problem,
    classify_smtp_reply,
)
from gateway.providers.smtp_relay import SmtpRelayProvider, _quit_quietly, greet

_Key = tuple[str, str, bool]
"""(address, host name, verified TLS) of a pooled session."""


class _NextHost(Exception):
    """This host did not take the message; the next one may."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.detail)
        self.result = result


class MxProvider(Provider):
    destination_failures = True

    def __init__(
        self,
        name: str,
        settings: MxProviderSection,
        local_hostname: str,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name)
        self.settings = settings
        self.local_hostname = local_hostname
        self.resolver = DnsResolver(settings.nameservers, settings.dns_port, settings.timeout)
        self.mta_sts: MtaSts | None = None
        if settings.mta_sts:
            self.mta_sts = MtaSts(
                self.resolver,
                clock or SystemClock(),
                port=settings.mta_sts_port,
                ca_file=settings.ca_file,
                timeout=settings.timeout,
            )
        # The relay's transaction code (pipelining, dot-stuffing, reply classification).
        self._session = SmtpRelayProvider(
            name, SmtpProviderSection(host="-", tls="none", timeout=settings.timeout), ""
        )
        self._idle: dict[_Key, list[aiosmtplib.SMTP]] = collections.defaultdict(list)
        self._domains: dict[str, asyncio.Semaphore] = {}
        self._verified = ssl.create_default_context(cafile=settings.ca_file or None)
        self._opportunistic = ssl.create_default_context()
        self._opportunistic.check_hostname = False
        self._opportunistic.verify_mode = ssl.CERT_NONE

    async def close(self) -> None:
        idle, self._idle = self._idle, collections.defaultdict(list)
        for clients in idle.values():
            for client in clients:
                await _close_session(client)
        if self.mta_sts is not None:
            await self.mta_sts.close()

    async def check(self) -> str:
        try:
            await self.resolver.mx("example.com")
        except LookupFailed as e:
            raise ProviderCheckFailed(f"DNS does not answer: {e}") from None
        return "DNS resolver answers MX queries"

    async def send(self, message: OutboundMessage) -> SendResult:
        for address in (message.mail_from, message.recipient):
            problem = address_problem(address)
            if problem:
                return SendResult.hard_fail(problem)
        domain = _ascii_domain(message.recipient.rpartition("@")[2])
        if domain is None:
            return SendResult.hard_fail(f"not a valid domain: {message.recipient!r}")
        slots = self._domains.get(domain)
        if slots is None:
            slots = self._domains[domain] = asyncio.Semaphore(self.settings.connections_per_domain)
        async with slots:
            return await self._send_to_domain(domain, message)

    async def _send_to_domain(self, domain: str, message: OutboundMessage) -> SendResult:
        try:
            hosts = await self.resolver.mx(domain)
        except LookupFailed as e:
            if e.permanent:
                return SendResult.hard_fail(str(e), enhanced=e.enhanced)
            return SendResult.soft_fail(str(e))
        policy = await self.mta_sts.policy(domain) if self.mta_sts is not None else None
        verified = self.settings.starttls == "required"
        if policy is not None and policy.mode == "enforce":
            verified = True
            hosts = [h for h in hosts if policy.allows(h.host)]
            if not hosts:
                return SendResult.soft_fail(
                    f"MTA-STS: no MX host of {domain} matches its policy ({', '.join(policy.mx)})"
                )
        return await self._try_hosts(domain, hosts, message, verified, policy)

    async def _try_hosts(
        self,
        domain: str,
        hosts: list[MxHost],
        message: OutboundMessage,
        verified: bool,
        policy: Policy | None,
    ) -> SendResult:
        tried: list[str] = []
        for mx in hosts:
            try:
                addresses = await self.resolver.addresses(mx.host)
            except LookupFailed as e:
                tried.append(str(e))
                continue
            if not addresses:
                tried.append(f"{mx.host}: no address")
            for address in addresses:
                try:
                    return await self._deliver(mx.host, address, message, verified)
                except _NextHost as e:
                    tried.append(f"{mx.host}[{address}]: {e.result.detail}")
        summary = "; ".join(tried) or "no MX host"
        return SendResult.soft_fail(f"{domain}: no MX host took the message: {summary}")

    async def _deliver(
        self, host: str, address: str, message: OutboundMessage, verified: bool
    ) -> SendResult:
        key: _Key = (address, host, verified)
        idle = self._idle[key]
        reused = bool(idle)
        client = idle.pop() if reused else await self._open(host, address, verified)
        result, healthy = await self._session.transact(client, message)
        if not healthy and reused and not result.maybe_sent and result.kind == "soft_fail":
            # The server may have closed the idle session: one fresh try.
            await _close_session(client)
            client = await self._open(host, address, verified)
            result, healthy = await self._session.transact(client, message)
        if healthy and len(idle) < self.settings.idle_connections:
            idle.append(client)
        else:
            await _close_session(client)
        if result.kind == "soft_fail" and not result.maybe_sent:
            raise _NextHost(result)
        return result

    async def _open(self, host: str, address: str, verified: bool) -> aiosmtplib.SMTP:
        """A greeted session, over STARTTLS when possible (required when ``verified``)."""
        mode = self.settings.starttls
        try:
            client = await self._connect(address)
            if mode == "off" and not verified:
                return client
            if not client.supports_extension("starttls"):
                if verified:
                    await _close_session(client)
                    raise _NextHost(SendResult.soft_fail("STARTTLS required but not offered"))
                return client
            context = self._verified if verified else self._opportunistic
            try:
                await client.starttls(server_hostname=host, tls_context=context)
                await greet(client)
            except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as e:
                client.close()
                if verified:
                    raise _NextHost(SendResult.soft_fail(f"TLS failed: {e}")) from None
                return await self._connect(address)  # opportunistic: plain text instead
            return client
        except aiosmtplib.SMTPResponseException as e:
            raise _NextHost(classify_smtp_reply(e.code, e.message)) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise _NextHost(SendResult.soft_fail(f"cannot connect: {e}")) from None

    async def _connect(self, address: str) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=address,
            port=s.port,
            local_hostname=self.local_hostname,
            source_address=(s.source_address, 0) if s.source_address else None,
            timeout=s.timeout,
            start_tls=False,
        )
        await client.connect()
        await greet(client)
        return client


async def _close_session(client: aiosmtplib.SMTP) -> None:
    """QUIT, then make sure the socket is gone: after STARTTLS, uvloop's orderly close of the
    TLS transport can leave the TCP transport under it open (a leaked socket, and a loop that
    refuses to close), so the transport is aborted as well."""
    protocol = client.protocol
    transport = cast(asyncio.Transport | None, protocol.transport if protocol else None)
    await _quit_quietly(client)
    if transport is not None:
        transport.abort()


def _ascii_domain(domain: str) -> str | None:
    """The domain as DNS knows it (IDNA for internationalized names), lower-cased."""
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("[") or not domain:
        return None  # address literals are not delivered by MX
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
