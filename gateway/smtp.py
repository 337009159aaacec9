"""SMTP submission (aiosmtpd): who may send, what is accepted, and the replies they get.

Policy, in the order a session meets it:

* EHLO advertises SIZE, 8BITMIME, SMTPUTF8, PIPELINING, ENHANCEDSTATUSCODES, STARTTLS on a
  STARTTLS listener, and AUTH PLAIN/LOGIN only once the session is encrypted (or on a loopback
  listener marked ``insecure_auth``).
* MAIL FROM needs either a successful AUTH or a client address in a tenant's
  ``smtp_networks``; anything else is ``530 5.7.0`` — the gateway is never an open relay.
  On a listener that ``requires_tls()``, nothing but EHLO/NOOP/QUIT/STARTTLS works before
  STARTTLS, trusted networks included.
* Envelope paths are parsed per RFC 5321 (``gateway.submission.addresses``): what does not
  parse is ``553 5.1.3`` at its command. The envelope sender must be the tenant's
  (``gateway.submission.sender_policy``): ``553 5.7.1`` otherwise.
* AUTH is throttled per client and per username, and capped per session
  (``gateway.submission.auth_throttle``); session bounds — silence, lifetime, DATA time, TLS
  handshake, junk commands — are in ``gateway.submission.session_limits`` and end a session with
  a ``421``, never silently.
* An address holding a control character, whitespace or bytes that are not UTF-8 is refused
  (``501 5.1.7`` / ``501 5.1.3``) before it can reach a header, the spool or the next hop.
* RCPT TO is capped at ``max_recipients`` (``452 4.5.3``, the client sends the rest later).
* DATA is size-capped (``552 5.3.4``) and refused on bare CR/LF or NUL (``550 5.6.0``),
  which closes SMTP smuggling; ``250`` comes only after the spool write is durable, and a local
  fault answers ``451 4.3.0`` so the client keeps the message.

Every reply carries an RFC 3463 enhanced status code, except where RFC 2034 says none belongs
(the greeting and replies to HELO/EHLO) and the 334/354 continuations: ``GatewaySMTP.push``
adds the conventional one to aiosmtpd's own replies that lack it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import ssl
from collections.abc import Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from gateway.config import ListenerSection, SmtpSection, TenantSection
from gateway.ingress import Ingress, Rejected, Submission, content_problem
from gateway.message import Reject
from gateway.passwords import CredentialCache
from gateway.smtp_prepared import PreparedSMTP
from gateway.submission.addresses import parse_path
from gateway.submission.auth_throttle import (
    BUSY,
    TOO_MANY_ATTEMPTS,
    AuthThrottle,
    Busy,
    PasswordChecker,
)
from gateway.submission.connection_limits import client_key, close_with
from gateway.submission.session_limits import SessionRules, SessionTimer

log = logging.getLogger("gateway.smtp")


def smtp_reply(verdict: Reject) -> str:
    """The one place a ``Reject`` becomes an SMTP reply line."""
    return f"{verdict.code} {verdict.enhanced} {verdict.text}"


AUTH_REQUIRED = Reject(530, "5.7.0", "Authentication required")
BAD_CREDENTIALS = Reject(535, "5.7.8", "Authentication credentials invalid")
TOO_MANY_RECIPIENTS = Reject(452, "4.5.3", "Too many recipients")
LOCAL_FAULT = Reject(451, "4.3.0", "Temporary local problem, please try again later")

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(\s|$)")
_DEFAULT_ENHANCED = {
    214: "2.0.0",
    220: "2.0.0",
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.0.0",
    421: "4.3.2",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    534: "5.7.9",
    535: "5.7.8",
    538: "5.7.11",
    550: "5.0.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.7.0",
    555: "5.5.4",
}
_NO_ENHANCED = {334, 354}
# Controls, whitespace, and lone surrogates (aiosmtpd's stand-ins for bytes that are not UTF-8).
_UNSAFE_IN_ADDRESS = re.compile(r"[\x00-\x1f\x7f\s\ud800-\udfff]")


class GatewayEnvelope(Envelope):
    """aiosmtpd's envelope plus the tenant that MAIL FROM was accepted for."""

    def __init__(self) -> None:
        super().__init__()
        self.tenant: str | None = None


class GatewaySession(Session):
    """aiosmtpd's session without the deprecation warning it logs on every successful AUTH
    (aiosmtpd itself sets the deprecated ``login_data``)."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _NoTimer:
    """aiosmtpd cancels ``_timeout_handle`` on close; the session's ``SessionTimer`` replaces
    aiosmtpd's per-command timer."""

    def cancel(self) -> None:
        pass


_NO_TIMER = _NoTimer()


class GatewaySMTP(PreparedSMTP):
    """aiosmtpd's protocol with enhanced status codes everywhere, non-blocking and throttled
    AUTH, and the session bounds of ``SessionTimer``."""

    _in_greeting_reply = False
    _greeted = False
    refused: Callable[[str], None] | None = None
    """Called with every 4xx/5xx reply (set by ``SessionTracker``, for metrics)."""

    rules: SessionRules
    throttle: AuthThrottle
    ipv6_prefix = 64
    _timer: SessionTimer | None = None

    # --- session bounds (gateway.submission.session_limits) ----------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._timer is None:
            peer = transport.get_extra_info("peername")
            self._timer = SessionTimer(
                self.rules, self.loop, str(peer[0]) if peer else "", self._end_session
            )
        else:  # the STARTTLS handshake is done
            self._timer.handshake_since = None
            self._timer.last_heard = self.loop.time()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._timer.last_heard = self.loop.time()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        self._timeout_handle = _NO_TIMER  # type: ignore[assignment]
        if self._timer is not None:
            self._timer.arm()

    def _end_session(self, reply: str | None) -> None:
        if reply is None and self._original_transport is not None:
            self._original_transport.abort()  # type: ignore[attr-defined]  # mid-handshake: nothing can be said
        elif self.transport is not None:
            close_with(self.transport, reply)

    async def _junk(self) -> bool:
        """Count a command that does nothing; ``True`` (and ``421``, closed) when over."""
        assert self._timer is not None
        if not self._timer.junk_command():
            return False
        await self.push("421 4.7.0 Too many commands that do nothing, closing connection")
        self._hang_up()
        return True

    def _hang_up(self) -> None:
        """Close after a final reply already pushed."""
        if self.transport is not None:
            close_with(self.transport, None)

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_VRFY(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_HELP(arg)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._timer is not None and not arg and self.tls_context:
            self._timer.handshake_since = self.loop.time()
        await super().smtp_STARTTLS(arg)

    # --- replies -------------------------------------------------------------------------------

    def _create_session(self) -> GatewaySession:
        return GatewaySession(self.loop)

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    async def push(self, status: AnyStr) -> None:
        # RFC 2034: the 220 greeting and replies to EHLO/HELO carry no enhanced status code.
        if isinstance(status, str) and self._greeted and not self._in_greeting_reply:
            status = _with_enhanced_code(status)
            if self.refused is not None and status[:1] in ("4", "5"):
                self.refused(status)
            await super().push(status)
            return
        self._greeted = True
        await super().push(status)

    # aiosmtpd reads DATA one line at a time (~66 awaits for 5 KB) and parses every address with
    # email's header parser, declaring a Protocol class per call; together that was ~40 % of a
    # message's CPU. The overrides below keep its semantics and replies.

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        cached = _ADDRESS_CACHE.get(arg)
        if cached is None:
            cached = parse_path(arg)
            if len(_ADDRESS_CACHE) >= _ADDRESS_CACHE_SIZE:
                _ADDRESS_CACHE.clear()
            _ADDRESS_CACHE[arg] = cached
        return cached

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        timer = self._timer
        if timer is not None:
            timer.data_since = self.loop.time()
        body, problem = await self._read_body()
        if timer is not None:
            timer.data_since = None
        if problem is not None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(problem)
            return
        self.envelope.content = self.envelope.original_content = body
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        if timer is not None and isinstance(status, str) and status.startswith("250"):
            timer.junk = 0
        await self.push("250 OK" if status is MISSING else status)

    async def _read_body(self) -> tuple[bytes, str | None]:
        """The message up to ``<CRLF>.<CRLF>``, dot-unstuffed (RFC 5321 4.5.2), in one read;
        or a reply when it is too large or has a line over 1,000 octets (read to its end).

        The CRLF that ended the DATA command line is put back in front of the stream, so the
        terminator is always the exact five bytes ``<CRLF>.<CRLF>``, even for an empty body;
        a bare LF never ends the data (no smuggling), exactly as in aiosmtpd's line reader.
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        saved_limit = reader._limit  # type: ignore[attr-defined]
        reader._buffer[0:0] = b"\r\n"  # type: ignore[attr-defined]
        reader._limit = (limit or _UNLIMITED) + 1024  # type: ignore[attr-defined]
        try:
            data = await _read_through(reader, b"\r\n.\r\n")
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]
        if data is None:
            return b"", "552 Error: Too much mail data"
        raw = data[2:-3]  # drop the CRLF we put back and the final ".\r\n"
        if limit and len(raw) > limit:
            return b"", "552 Error: Too much mail data"
        if len(raw) > _MAX_LINE and max(map(len, raw.split(b"\n"))) > _MAX_LINE:
            return b"", "500 Line too long (see RFC5321 4.5.3.1.6)"
        if raw.startswith(b".."):
            raw = raw[1:]
        return raw.replace(b"\r\n..", b"\r\n."), None

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_greeting_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_greeting_reply = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_greeting_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_greeting_reply = False

    # aiosmtpd calls its authenticator synchronously; scrypt must not run on the event loop,
    # so the built-in mechanisms only collect the credentials and we verify them here.
    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, auth_data=auth_data)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self._timer is not None and self._timer.auth_exhausted():
            await self.push(smtp_reply(TOO_MANY_ATTEMPTS))
            self._hang_up()
            return
        await super().smtp_AUTH(arg)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, collected: AuthResult) -> AuthResult:
        if not isinstance(collected.auth_data, LoginPassword):
            # No credentials: the client aborted with "*" or sent bad base64, and aiosmtpd has
            # already answered 501. Unless told it was handled, it would add a 535 as well.
            # It still counts against the session's AUTH attempts.
            if self._timer is not None:
                self._timer.auth_failures += 1
            return AuthResult(success=False, handled=True)
        login, password = collected.auth_data
        address = _peer_address(self.session)
        client = client_key(address, self.ipv6_prefix)
        username = login.decode("utf-8", "replace")
        if self._timer is not None:
            self._timer.auth_failures += 1  # undone on success
        refusal = self.throttle.refusal(client, username)
        if refusal is not None:
            self.rules.on_limit(self.rules.listener, "auth_cooling_off", address)
            # Tarpit: answering at once would let a guesser spin on 454s.
            await asyncio.sleep(self.throttle.settings.max_failure_delay)
            return AuthResult(success=False, handled=False, message=smtp_reply(refusal))
        try:
            tenant = await self.event_handler.authenticate(login, password, client)
        except Busy:
            self.rules.on_limit(self.rules.listener, "password_queue", address)
            await asyncio.sleep(self.throttle.settings.failure_delay)
            return AuthResult(success=False, handled=False, message=smtp_reply(BUSY))
        if tenant is None:
            # The line fail2ban's filter matches (docs/hardening.md): keep its shape.
            log.warning("smtp auth failed client=%s user=%r", address, username)
            await asyncio.sleep(self.throttle.failed(client, username))
            return AuthResult(success=False, handled=False, message=smtp_reply(BAD_CREDENTIALS))
        self.throttle.succeeded(client, username)
        if self._timer is not None:
            self._timer.auth_failures -= 1
        self.login = login
        """Who authenticated on this connection (their default message stream)."""
        return AuthResult(success=True, auth_data=tenant)


_ADDRESS_CACHE: dict[str, tuple[str | None, str | None]] = {}
_ADDRESS_CACHE_SIZE = 4096
_UNLIMITED = 1 << 30
_MAX_LINE = 1000
"""Octets in a line, its CR included (RFC 5321 4.5.3.1.6: 1,000 with the CRLF)."""


async def _read_through(reader: asyncio.StreamReader, terminator: bytes) -> bytes | None:
    """Read up to and including ``terminator``; ``None`` if it came only after more than the
    reader's limit (the excess is read and thrown away, keeping the session in step)."""
    try:
        return await reader.readuntil(terminator)
    except asyncio.LimitOverrunError as e:
        await reader.read(e.consumed)
    while True:
        try:
            await reader.readuntil(terminator)
        except asyncio.LimitOverrunError as e:
            # ``consumed`` stops short of a possible partial terminator, so none is lost.
            await reader.read(e.consumed)
            continue
        return None


@functools.lru_cache(maxsize=256)
def _with_enhanced_code(status: str) -> str:
    if len(status) < 4 or not status[:3].isdigit() or _HAS_ENHANCED.match(status):
        return status
    code = int(status[:3])
    if code in _NO_ENHANCED:
        return status
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None:
        enhanced = f"{status[0]}.0.0"
    if code == 421 and "timeout" in status.lower():
        enhanced = "4.4.2"
    return f"{status[:4]}{enhanced} {status[4:]}"


class TenantDirectory:
    """Who is who: SMTP users and trusted networks of every tenant."""

    def __init__(self, tenants: dict[str, TenantSection], checker: PasswordChecker) -> None:
        self.checker = checker
        self._users = {
            user.username.encode(): (name, user.password_hash)
            for name, tenant in tenants.items()
            for user in tenant.smtp_users
        }
        self._networks = [
            (ipaddress.ip_network(network, strict=False), name)
            for name, tenant in tenants.items()
            for network in tenant.smtp_networks
        ]
        self._streams = {
            user.username.encode(): user.stream
            for tenant in tenants.values()
            for user in tenant.smtp_users
            if user.stream
        }
        self._cache = CredentialCache()
        self._tenant_of_address: dict[str, str | None] = {}

    def stream_of(self, username: bytes | None) -> str:
        """The SMTP user's default message stream ("" when it has none)."""
        return self._streams.get(username, "") if username else ""

    def tenant_for_address(self, address: str) -> str | None:
        # Asked at connect and at every MAIL: parsing the address is most of the cost.
        try:
            return self._tenant_of_address[address]
        except KeyError:
            pass
        tenant = self._find_tenant(address)
        if len(self._tenant_of_address) >= _ADDRESS_CACHE_SIZE:
            self._tenant_of_address.clear()
        self._tenant_of_address[address] = tenant
        return tenant

    def _find_tenant(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        for network, tenant in self._networks:
            if ip in network:
                return tenant
        return None

    async def authenticate(self, username: bytes, password: bytes, client: str) -> str | None:
        """The user's tenant, or ``None``; raises ``Busy`` when the password pool is full."""
        cached = self._cache.get(username, password)
        if cached is not None:
            return cached
        entry = self._users.get(username)
        if entry is None:
            # Same cost as a real check, so a probe cannot tell missing users from wrong passwords.
            await self.checker.verify(client, password, _DUMMY_HASH)
            return None
        tenant, encoded = entry
        if not await self.checker.verify(client, password, encoded):
            return None
        self._cache.put(username, password, tenant)
        return tenant


_DUMMY_HASH = "scrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


class SubmissionHandler:
    """aiosmtpd handler for one listener (served by ``GatewaySMTP``). State per transaction
    lives on the ``GatewayEnvelope``."""

    def __init__(
        self,
        *,
        ingress: Ingress,
        directory: TenantDirectory,
        listener: ListenerSection,
        limits: SmtpSection,
    ) -> None:
        self.ingress = ingress
        self.directory = directory
        self.listener = listener
        self.limits = limits

    async def authenticate(self, username: bytes, password: bytes, client: str) -> str | None:
        return await self.directory.authenticate(username, password, client)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: GatewayEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: GatewayEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if _UNSAFE_IN_ADDRESS.search(address):
            return smtp_reply(Reject(501, "5.1.7", "Bad sender address syntax"))
        peer = _peer_address(session)
        tenant: str | None = session.auth_data if session.authenticated else None
        if tenant is None:
            tenant = self.directory.tenant_for_address(peer)
        if tenant is None:
            log.info("refused unauthenticated MAIL peer=%s", peer)
            return smtp_reply(AUTH_REQUIRED)
        refused = self.ingress.senders.envelope_sender(tenant, address)
        if refused is not None:
            log.info("refused MAIL FROM:<%s> tenant=%s peer=%s", address, tenant, peer)
            return smtp_reply(refused)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.tenant = tenant
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: GatewayEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if _UNSAFE_IN_ADDRESS.search(address) or "@" not in address:
            return smtp_reply(Reject(501, "5.1.3", "Bad recipient address syntax"))
        if len(envelope.rcpt_tos) >= self.limits.max_recipients:
            return smtp_reply(TOO_MANY_RECIPIENTS)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: GatewayEnvelope) -> str:
        # aiosmtpd only calls DATA after an accepted MAIL and RCPT, with the content read.
        raw, mail_from, tenant = envelope.original_content, envelope.mail_from, envelope.tenant
        assert raw is not None and mail_from is not None and tenant is not None
        peer = _peer_address(session)
        problem = content_problem(raw)
        if problem is not None:
            log.info("refused DATA peer=%s: %s", peer, problem.text)
            return smtp_reply(problem)
        submission = Submission(
            tenant=tenant,
            # aiosmtpd reports the null reverse-path as "<>"; the gateway's spelling is "".
            mail_from="" if mail_from == "<>" else mail_from,
            recipients=list(envelope.rcpt_tos),
            raw=raw,
            source="smtp",
            smtp_utf8=envelope.smtp_utf8 or not _is_ascii(mail_from, envelope.rcpt_tos),
            client_address=peer,
            client_name=session.host_name or "",
            protocol=_protocol(server, session),
            default_stream=(
                self.directory.stream_of(getattr(server, "login", None)) or self.listener.stream
            ),
        )
        try:
            message = await self.ingress.accept(submission)
        except Rejected as refused:
            log.info("policy refused DATA peer=%s: %s", peer, refused.verdict.text)
            return smtp_reply(refused.verdict)
        except Exception:
            log.exception("could not spool a message from %s", peer)
            return smtp_reply(LOCAL_FAULT)
        log.info(
            "accepted message=%s tenant=%s from=%s rcpts=%d size=%d",
            message.id,
            message.tenant,
            message.mail_from,
            len(submission.recipients),
            len(raw),
        )
        return f"250 2.0.0 OK queued as {message.id}"


def _is_ascii(mail_from: str, recipients: list[str]) -> bool:
    return mail_from.isascii() and all(r.isascii() for r in recipients)


def _peer_address(session: Session | None) -> str:
    # aiosmtpd annotates ``peer`` as a str; it holds the transport's peername tuple.
    peer: Any = session.peer if session is not None else None
    return str(peer[0]) if peer else ""


def _protocol(server: SMTP, session: Session) -> str:
    """RFC 3848 ``with`` keyword: SMTP for HELO, else ESMTP with S (TLS) and A (AUTH)."""
    if not session.extended_smtp:
        return "SMTP"
    # ``session.ssl`` is only set by STARTTLS; an implicit-TLS transport says so itself.
    transport = server.transport
    encrypted = session.ssl is not None or (
        transport is not None and transport.get_extra_info("ssl_object") is not None
    )
    tls = "S" if encrypted else ""
    auth = "A" if session.authenticated else ""
    return f"ESMTP{tls}{auth}"


def make_protocol_factory(
    handler: SubmissionHandler,
    *,
    hostname: str,
    listener: ListenerSection,
    limits: SmtpSection,
    tls_context: ssl.SSLContext | None,
    rules: SessionRules,
    throttle: AuthThrottle,
) -> Any:
    """A ``loop.create_server`` factory for one listener."""
    implicit = listener.tls == "implicit"
    starttls = listener.tls == "starttls"

    def factory() -> GatewaySMTP:
        protocol = GatewaySMTP(
            handler,
            hostname=hostname,
            ident="ESP gateway",
            data_size_limit=limits.max_message_size,
            enable_SMTPUTF8=limits.smtputf8,
            decode_data=False,
            tls_context=tls_context if starttls else None,
            require_starttls=starttls and listener.requires_tls(),
            # An implicit-TLS session is encrypted from the first byte; aiosmtpd only knows
            # about STARTTLS, so it is told not to ask for it.
            auth_require_tls=not (implicit or listener.insecure_auth),
            timeout=limits.timeout,
            loop=asyncio.get_running_loop(),
        )
        protocol.rules = rules
        protocol.throttle = throttle
        protocol.ipv6_prefix = listener.ipv6_prefix
        return protocol

    return factory


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context
